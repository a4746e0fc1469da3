package tasker

/*
#include <stdlib.h>
#include <tasker.h>

int tasker_go_handler_register(tasker_coordinator *coord, const char *name, uintptr_t handle);
*/
import "C"

import (
	"errors"
	"runtime/cgo"
	"sync"
	"time"
	"unsafe"
)

// TaskState is a task's state (tasker_task_state).
type TaskState int

const (
	TaskPending          TaskState = TaskState(C.TASKER_TASK_PENDING)
	TaskRunning          TaskState = TaskState(C.TASKER_TASK_RUNNING)
	TaskComplete         TaskState = TaskState(C.TASKER_TASK_COMPLETE)
	TaskError            TaskState = TaskState(C.TASKER_TASK_ERROR)
	TaskCancelled        TaskState = TaskState(C.TASKER_TASK_CANCELLED)
	TaskResolvedManually TaskState = TaskState(C.TASKER_TASK_RESOLVED_MANUALLY)
)

func (s TaskState) String() string {
	name := C.tasker_task_state_name(C.tasker_task_state(s))
	if name == nil {
		return "unknown"
	}
	return C.GoString(name)
}

// ErrClosed is returned by methods of a closed Coordinator.
var ErrClosed = errors.New("tasker: coordinator is closed")

// Coordinator owns a tasker coordinator.  Its methods are safe for concurrent
// use; Close must not run concurrently with the others (or from a handler).
type Coordinator struct {
	mu sync.RWMutex // guards c against Close; tasker itself is thread-safe
	c  *C.tasker_coordinator
}

// Open checks the library's ABI and opens a coordinator.  config holds
// tasker configuration keys ("store", "database.url", ...); nil means the
// defaults (memory store).
func Open(config map[string]string) (*Coordinator, error) {
	if err := CheckABI(BindingABI); err != nil {
		return nil, err
	}
	var cfg *C.tasker_config
	if err := call(func() C.int { return C.tasker_config_new(&cfg) }); err != nil {
		return nil, err
	}
	defer C.tasker_config_free(cfg)
	for key, value := range config {
		ck, cv := C.CString(key), C.CString(value)
		err := call(func() C.int { return C.tasker_config_set(cfg, ck, cv) })
		C.free(unsafe.Pointer(ck))
		C.free(unsafe.Pointer(cv))
		if err != nil {
			return nil, err
		}
	}
	co := &Coordinator{}
	if err := call(func() C.int { return C.tasker_coordinator_open(&co.c, cfg) }); err != nil {
		return nil, err
	}
	return co, nil
}

// with runs fn on the C coordinator under the read lock, or returns ErrClosed.
func (co *Coordinator) with(fn func(c *C.tasker_coordinator) error) error {
	co.mu.RLock()
	defer co.mu.RUnlock()
	if co.c == nil {
		return ErrClosed
	}
	return fn(co.c)
}

// Close stops the workers and frees the coordinator and every handler
// registered on it.  Steps still deferred stay valid: completing one later
// returns an ECLOSED *Error.  Closing twice is a no-op.
func (co *Coordinator) Close() error {
	co.mu.Lock()
	defer co.mu.Unlock()
	if co.c == nil {
		return nil
	}
	c := co.c
	co.c = nil
	return call(func() C.int { return C.tasker_coordinator_close(c) })
}

// Handle registers fn under name.  fn runs on a tasker worker thread; see
// Handler for how it completes its step.
func (co *Coordinator) Handle(name string, fn Handler) error {
	if fn == nil {
		return errors.New("tasker: nil handler")
	}
	return co.with(func(c *C.tasker_coordinator) error {
		cname := C.CString(name)
		defer C.free(unsafe.Pointer(cname))
		// The coordinator owns the handle from here on and deletes it through
		// tasker_go_release, even when registration fails.
		h := cgo.NewHandle(fn)
		return call(func() C.int { return C.tasker_go_handler_register(c, cname, C.uintptr_t(h)) })
	})
}

// RegisterTemplateJSON registers a template given as JSON (see tasker.h).
func (co *Coordinator) RegisterTemplateJSON(json string) error {
	return co.with(func(c *C.tasker_coordinator) error {
		cj := C.CString(json)
		defer C.free(unsafe.Pointer(cj))
		return call(func() C.int { return C.tasker_template_register_json(c, cj, C.size_t(len(json))) })
	})
}

// Start starts n worker threads that run the registered Go handlers.
func (co *Coordinator) Start(n int) error {
	return co.with(func(c *C.tasker_coordinator) error {
		return call(func() C.int { return C.tasker_coordinator_start(c, C.uint(n)) })
	})
}

// Stop stops the workers and waits up to drain for deferred steps
// (negative: forever).
func (co *Coordinator) Stop(drain time.Duration) error {
	return co.with(func(c *C.tasker_coordinator) error {
		return call(func() C.int { return C.tasker_coordinator_stop(c, C.int(millis(drain))) })
	})
}

// TaskRequest says which template to run and with what input.
type TaskRequest struct {
	Namespace      string
	Name           string
	Version        string // "" = highest registered
	ContextJSON    string // "" = {}
	IdempotencyKey string // "" = none
	Priority       int32
}

// CreateTask creates a task and returns its UUID.
func (co *Coordinator) CreateTask(r TaskRequest) (string, error) {
	var uuid [C.TASKER_UUID_BUFSIZE]C.char
	err := co.with(func(c *C.tasker_coordinator) error {
		var req C.tasker_task_request
		if rc := C.tasker_task_request_init(&req, C.TASKER_TASK_REQUEST_VERSION); rc != C.TASKER_OK {
			return &Error{Code: int(rc), Name: C.GoString(C.tasker_strerror(rc)), Message: "tasker_task_request_init"}
		}
		var strs []*C.char
		cstr := func(s string) *C.char {
			if s == "" {
				return nil
			}
			p := C.CString(s)
			strs = append(strs, p)
			return p
		}
		defer func() {
			for _, p := range strs {
				C.free(unsafe.Pointer(p))
			}
		}()
		req.ns = cstr(r.Namespace)
		req.name = cstr(r.Name)
		req.template_version = cstr(r.Version)
		req.context_json = cstr(r.ContextJSON)
		req.context_len = C.size_t(len(r.ContextJSON))
		req.idempotency_key = cstr(r.IdempotencyKey)
		req.priority = C.int32_t(r.Priority)
		return call(func() C.int { return C.tasker_task_create(&uuid[0], c, &req) })
	})
	if err != nil {
		return "", err
	}
	return C.GoString(&uuid[0]), nil
}

// Wait waits up to timeout (negative: forever) for the task to reach a final
// state.  It returns the state reached and, if it is not final, an ETIMEOUT
// *Error.
func (co *Coordinator) Wait(taskUUID string, timeout time.Duration) (TaskState, error) {
	var state C.tasker_task_state
	err := co.with(func(c *C.tasker_coordinator) error {
		cu := C.CString(taskUUID)
		defer C.free(unsafe.Pointer(cu))
		return call(func() C.int { return C.tasker_task_wait(&state, c, cu, C.int(millis(timeout))) })
	})
	return TaskState(state), err
}

// TaskJSON returns the task as JSON: state, steps with results, errors and
// attempts, and the transition history.
func (co *Coordinator) TaskJSON(taskUUID string) (string, error) {
	var out *C.char
	err := co.with(func(c *C.tasker_coordinator) error {
		cu := C.CString(taskUUID)
		defer C.free(unsafe.Pointer(cu))
		return call(func() C.int { return C.tasker_task_get(&out, c, cu) })
	})
	if err != nil {
		return "", err
	}
	// The library allocated the string; only tasker_free may release it.
	defer C.tasker_free(unsafe.Pointer(out))
	return C.GoString(out), nil
}

func millis(d time.Duration) int64 {
	if d < 0 {
		return -1
	}
	ms := d.Milliseconds()
	if ms > 1<<31-1 {
		ms = 1<<31 - 1
	}
	return ms
}
