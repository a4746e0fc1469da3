// Package tasker is a small Go binding for libtasker, written with cgo and
// the standard library only.  It links against an installed libtasker found
// through pkg-config (set PKG_CONFIG_PATH to <prefix>/lib/pkgconfig, and
// LD_LIBRARY_PATH to <prefix>/lib when the prefix is not a system one).
//
// The rules it follows are in docs/languages.md:
//
//   - Every call whose failure needs tasker_error_last() runs with the
//     goroutine locked to its OS thread, because the last error is per OS
//     thread and the Go scheduler may otherwise move the goroutine between
//     the call and the error read.
//   - Go handlers are registered through a C trampoline (trampoline.c) with a
//     cgo.Handle as userdata; the coordinator releases the handle when it is
//     freed.
//   - A handler may complete its step before returning or hand the *Step to
//     a goroutine that completes it later (deferred completion).
package tasker

/*
#cgo pkg-config: tasker
#include <stdlib.h>
#include <tasker.h>
*/
import "C"

import (
	"fmt"
	"runtime"
)

// Status codes (negative TASKER_E* values from tasker.h).
const (
	OK        = int(C.TASKER_OK)
	EINVAL    = int(C.TASKER_EINVAL)
	ENOMEM    = int(C.TASKER_ENOMEM)
	ENOTFOUND = int(C.TASKER_ENOTFOUND)
	EEXIST    = int(C.TASKER_EEXIST)
	ESTATE    = int(C.TASKER_ESTATE)
	ETEMPLATE = int(C.TASKER_ETEMPLATE)
	ETIMEOUT  = int(C.TASKER_ETIMEOUT)
	ECLOSED   = int(C.TASKER_ECLOSED)
	ESTALE    = int(C.TASKER_ESTALE)
	EVERSION  = int(C.TASKER_EVERSION)
	EHANDLER  = int(C.TASKER_EHANDLER)
	ECONFIG   = int(C.TASKER_ECONFIG)
)

// BindingABI is the ABI number of the tasker.h this package was compiled
// against.  Open checks it against the loaded library.
const BindingABI = int(C.TASKER_ABI_VERSION)

// Error is a failed tasker call: the status code and the calling thread's
// structured last error, copied out of the library.
type Error struct {
	Code     int    // a negative TASKER_E* code
	Name     string // tasker_strerror(Code)
	Category string // "argument", "template", ...
	Message  string
	Context  string // JSON object with details
}

func (e *Error) Error() string {
	if e.Context != "" && e.Context != "{}" {
		return fmt.Sprintf("%s: %s %s", e.Name, e.Message, e.Context)
	}
	return fmt.Sprintf("%s: %s", e.Name, e.Message)
}

// IsCode reports whether err is a tasker *Error with the given code.
func IsCode(err error, code int) bool {
	e, ok := err.(*Error)
	return ok && e.Code == code
}

// lastError copies the calling OS thread's last error.  The caller must hold
// the OS thread (runtime.LockOSThread) since the failing call.
func lastError(rc C.int) *Error {
	e := C.tasker_error_last()
	out := &Error{Code: int(rc), Name: C.GoString(C.tasker_strerror(rc))}
	// The last error describes the failing call only if its code matches; a
	// library that forgot to set it must not make us report a stale one.
	if e != nil && e.code == rc {
		out.Category = C.GoString(C.tasker_error_category_name(e.category))
		out.Message = C.GoString(e.message)
		out.Context = C.GoString(e.context_json)
	} else {
		out.Message = out.Name
		out.Context = "{}"
	}
	return out
}

// call runs one tasker call and turns a failure into *Error, with the
// goroutine pinned to its OS thread from the call to the error read.
func call(fn func() C.int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if rc := fn(); rc != C.TASKER_OK {
		return lastError(rc)
	}
	return nil
}

// Version is the loaded library's version string ("0.1.0").
func Version() string { return C.GoString(C.tasker_version()) }

// ABIVersion is the loaded library's ABI number.
func ABIVersion() int { return int(C.tasker_abi_version()) }

// CheckABI asks the library whether a binding built against ABI number
// bindingABI can use it.  Open calls it with BindingABI; tests call it with
// other numbers to see the refusal.
func CheckABI(bindingABI int) error {
	return call(func() C.int { return C.tasker_abi_check(C.int(bindingABI)) })
}
