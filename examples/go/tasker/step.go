package tasker

/*
#include <stdlib.h>
#include <tasker.h>
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"
)

// Handler does one step's work.  It runs on a tasker worker thread (a C
// thread that cgo lends to Go for the call) and must either
//
//   - complete the step before returning (step.Succeed / step.Fail) and
//     return nil, or
//   - hand step to a goroutine that completes it later, and return nil
//     (deferred completion: the worker thread is free at once), or
//   - return an error without completing the step: the attempt then fails.
//     A *Failure says how (class, retryable, retry delay); any other error
//     becomes a retryable failure of class "GoError".
//
// A panic is recovered and fails the attempt permanently (class "GoPanic"),
// because unwinding through the C worker thread is not allowed.
type Handler func(step *Step) error

// Failure describes a failed attempt; it is also an error a Handler may return.
type Failure struct {
	Class       string // e.g. "TimeoutError"; "" = "Error"
	Message     string
	Retryable   bool          // false: no retry, the step goes to error
	RetryAfter  time.Duration // >= 0 overrides the backoff; use NoRetryAfter for none
	ContextJSON string        // JSON object with details, "" = none
}

// NoRetryAfter in Failure.RetryAfter keeps the step's own backoff.
const NoRetryAfter time.Duration = -1

func (f *Failure) Error() string {
	return fmt.Sprintf("%s: %s", f.Class, f.Message)
}

// Step is one attempt of one step, as given to a Handler.  Its methods may be
// called from any goroutine.  It stays valid until its task is forgotten or
// the coordinator closed (a deferred step stays valid across Close).
type Step struct {
	s         *C.tasker_step
	completed atomic.Bool
}

func (st *Step) Name() string        { return C.GoString(C.tasker_step_name(st.s)) }
func (st *Step) HandlerName() string { return C.GoString(C.tasker_step_handler_name(st.s)) }
func (st *Step) UUID() string        { return C.GoString(C.tasker_step_uuid(st.s)) }
func (st *Step) TaskUUID() string    { return C.GoString(C.tasker_step_task_uuid(st.s)) }
func (st *Step) Attempt() int        { return int(C.tasker_step_attempt(st.s)) }
func (st *Step) MaxAttempts() int    { return int(C.tasker_step_max_attempts(st.s)) }

// Context returns the task's context JSON.
func (st *Step) Context() []byte {
	var n C.size_t
	p := C.tasker_step_context(st.s, &n)
	if p == nil {
		return nil
	}
	return C.GoBytes(unsafe.Pointer(p), C.int(n))
}

// DependencyResult returns the JSON result of the dependency named dep.
func (st *Step) DependencyResult(dep string) ([]byte, error) {
	cdep := C.CString(dep)
	defer C.free(unsafe.Pointer(cdep))
	var p *C.char
	var n C.size_t
	if err := call(func() C.int { return C.tasker_step_dependency_result(&p, &n, st.s, cdep) }); err != nil {
		return nil, err
	}
	return C.GoBytes(unsafe.Pointer(p), C.int(n)), nil
}

// Succeed completes the attempt with a JSON result (nil: no result).
func (st *Step) Succeed(resultJSON []byte) error {
	var p *C.char
	if len(resultJSON) > 0 {
		p = (*C.char)(C.CBytes(resultJSON))
		defer C.free(unsafe.Pointer(p))
	}
	err := call(func() C.int { return C.tasker_step_succeed(st.s, p, C.size_t(len(resultJSON))) })
	st.completed.Store(true)
	return err
}

// SucceedValue completes the attempt with v encoded as JSON.
func (st *Step) SucceedValue(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return st.Succeed(b)
}

// Fail completes the attempt as failed.
func (st *Step) Fail(f *Failure) error {
	var fc C.tasker_failure
	if rc := C.tasker_failure_init(&fc, C.TASKER_FAILURE_VERSION); rc != C.TASKER_OK {
		return &Error{Code: int(rc), Name: C.GoString(C.tasker_strerror(rc)), Message: "tasker_failure_init"}
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
	fc.error_class = cstr(f.Class)
	fc.message = cstr(f.Message)
	fc.context_json = cstr(f.ContextJSON)
	fc.retryable = 0
	if f.Retryable {
		fc.retryable = 1
	}
	fc.retry_after_ms = -1
	if f.RetryAfter >= 0 {
		fc.retry_after_ms = C.int64_t(f.RetryAfter.Milliseconds())
	}
	err := call(func() C.int { return C.tasker_step_fail(st.s, &fc) })
	st.completed.Store(true)
	return err
}
