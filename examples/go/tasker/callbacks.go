package tasker

// This file holds the Go functions exported to trampoline.c.  A Go file with
// //export may only declare C things in its preamble, hence the split.

/*
#include <stdint.h>
#include <tasker.h>
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
)

//export taskerGoRunHandler
func taskerGoRunHandler(s *C.tasker_step, handle C.uintptr_t) C.int {
	fn := cgo.Handle(handle).Value().(Handler)
	st := &Step{s: s}
	err := runRecovered(fn, st)
	if err == nil || st.completed.Load() {
		// Completed, deferred, or completed and then returned an error: in
		// each case the step has (or will get) exactly one completion.
		return C.TASKER_OK
	}
	f, ok := err.(*Failure)
	if !ok {
		f = &Failure{Class: "GoError", Message: err.Error(), Retryable: true, RetryAfter: NoRetryAfter}
	}
	if ferr := st.Fail(f); ferr != nil {
		// The step could not be failed (cancelled meanwhile, lease lost):
		// pass the refusal on; tasker knows the step's real state.
		if e, ok := ferr.(*Error); ok {
			return C.int(e.Code)
		}
		return C.TASKER_EINTERNAL
	}
	return C.TASKER_OK
}

// runRecovered runs the handler and turns a panic into a permanent failure,
// since a Go panic must not unwind into the C worker thread.
func runRecovered(fn Handler, st *Step) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &Failure{Class: "GoPanic", Message: fmt.Sprint(r), Retryable: false, RetryAfter: NoRetryAfter}
		}
	}()
	return fn(st)
}

//export taskerGoReleaseHandler
func taskerGoReleaseHandler(handle C.uintptr_t) {
	cgo.Handle(handle).Delete()
}
