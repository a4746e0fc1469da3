package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"example.com/tasker-go/tasker"
)

// The diamond: start -> (left, right) -> join.  start = context.n,
// left = 2*start, right = 3*start, join = left + right.
const diamondTemplate = `{"namespace": "examples", "name": "diamond", "version": "1", "steps": [
  {"name": "start"},
  {"name": "left",  "handler": "double", "depends_on": ["start"]},
  {"name": "right", "handler": "triple", "depends_on": ["start"]},
  {"name": "join",  "depends_on": ["left", "right"]}]}`

// One step that fails retryably on its first attempt and succeeds on its
// second.  No backoff, so the test does not sleep.
const flakyTemplate = `{"namespace": "examples", "name": "flaky", "version": "1", "steps": [
  {"name": "flaky", "retry": {"max_attempts": 3, "backoff": "none"}}]}`

// Outcome is what a run produced: the two tasks' JSON and what the handlers saw.
type Outcome struct {
	DiamondJSON string
	FlakyJSON   string
	// Completions made by goroutines after their handler had returned.
	DeferredAfterReturn int64
	// Errors the deferred goroutines got from tasker (should be none).
	DeferredErrors []error
}

type taskView struct {
	State string     `json:"state"`
	Steps []stepView `json:"steps"`
}

type stepView struct {
	Name     string          `json:"name"`
	State    string          `json:"state"`
	Attempts int             `json:"attempts"`
	Result   json.RawMessage `json:"result"`
	Errors   []struct {
		Class     string `json:"class"`
		Retryable bool   `json:"retryable"`
		Attempt   int    `json:"attempt"`
	} `json:"errors"`
}

func intResult(dep []byte, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(dep)))
}

// RunWorkflows runs the diamond and the retrying step on a fresh coordinator
// with two worker threads.
func RunWorkflows() (*Outcome, error) {
	co, err := tasker.Open(nil)
	if err != nil {
		return nil, err
	}
	defer co.Close()

	out := &Outcome{}
	var deferredMu sync.Mutex
	var deferred sync.WaitGroup

	// start completes before returning.
	err = co.Handle("start", func(step *tasker.Step) error {
		var ctx struct {
			N *int `json:"n"`
		}
		if err := json.Unmarshal(step.Context(), &ctx); err != nil || ctx.N == nil {
			return &tasker.Failure{Class: "BadInput", Message: "context needs an integer n", RetryAfter: tasker.NoRetryAfter}
		}
		return step.SucceedValue(*ctx.N)
	})
	if err != nil {
		return nil, err
	}

	// double and triple return at once and complete from a goroutine that
	// waits until the handler has returned: deferred completion.
	scale := func(factor int) tasker.Handler {
		return func(step *tasker.Step) error {
			returned := make(chan struct{})
			defer close(returned)
			deferred.Add(1)
			go func() {
				defer deferred.Done()
				<-returned
				start, err := intResult(step.DependencyResult("start"))
				if err == nil {
					err = step.SucceedValue(start * factor)
				} else {
					err = step.Fail(&tasker.Failure{Class: "BadInput", Message: err.Error(), RetryAfter: tasker.NoRetryAfter})
				}
				if err == nil {
					atomic.AddInt64(&out.DeferredAfterReturn, 1)
				} else {
					deferredMu.Lock()
					out.DeferredErrors = append(out.DeferredErrors, err)
					deferredMu.Unlock()
				}
			}()
			return nil
		}
	}
	if err = co.Handle("double", scale(2)); err != nil {
		return nil, err
	}
	if err = co.Handle("triple", scale(3)); err != nil {
		return nil, err
	}

	err = co.Handle("join", func(step *tasker.Step) error {
		left, err := intResult(step.DependencyResult("left"))
		if err != nil {
			return err
		}
		right, err := intResult(step.DependencyResult("right"))
		if err != nil {
			return err
		}
		return step.SucceedValue(left + right)
	})
	if err != nil {
		return nil, err
	}

	// flaky returns a *Failure on its first attempt; the binding turns it
	// into tasker_step_fail.
	err = co.Handle("flaky", func(step *tasker.Step) error {
		if step.Attempt() == 1 {
			return &tasker.Failure{Class: "TransientError", Message: "the first attempt fails on purpose",
				Retryable: true, RetryAfter: tasker.NoRetryAfter}
		}
		return step.SucceedValue(step.Attempt())
	})
	if err != nil {
		return nil, err
	}

	if err = co.RegisterTemplateJSON(diamondTemplate); err != nil {
		return nil, err
	}
	if err = co.RegisterTemplateJSON(flakyTemplate); err != nil {
		return nil, err
	}
	if err = co.Start(2); err != nil {
		return nil, err
	}

	run := func(name, context string) (string, error) {
		id, err := co.CreateTask(tasker.TaskRequest{Namespace: "examples", Name: name, ContextJSON: context})
		if err != nil {
			return "", err
		}
		if _, err := co.Wait(id, 10*time.Second); err != nil {
			return "", fmt.Errorf("waiting for %s: %w", name, err)
		}
		return co.TaskJSON(id)
	}
	if out.DiamondJSON, err = run("diamond", `{"n": 5}`); err != nil {
		return nil, err
	}
	if out.FlakyJSON, err = run("flaky", ""); err != nil {
		return nil, err
	}
	if err = co.Stop(5 * time.Second); err != nil {
		return nil, err
	}
	deferred.Wait()
	return out, co.Close()
}

// Check returns every way the outcome differs from what the workflows must
// produce.
func (o *Outcome) Check() []error {
	var problems []error
	bad := func(format string, args ...any) { problems = append(problems, fmt.Errorf(format, args...)) }

	var diamond, flaky taskView
	if err := json.Unmarshal([]byte(o.DiamondJSON), &diamond); err != nil {
		return []error{fmt.Errorf("diamond task JSON: %w", err)}
	}
	if err := json.Unmarshal([]byte(o.FlakyJSON), &flaky); err != nil {
		return []error{fmt.Errorf("flaky task JSON: %w", err)}
	}

	if diamond.State != "complete" {
		bad("diamond: state %q, want complete", diamond.State)
	}
	want := map[string]string{"start": "5", "left": "10", "right": "15", "join": "25"}
	seen := 0
	for _, s := range diamond.Steps {
		w, ok := want[s.Name]
		if !ok {
			bad("diamond: unexpected step %q", s.Name)
			continue
		}
		seen++
		if s.State != "complete" || s.Attempts != 1 {
			bad("diamond: step %s is %s after %d attempts, want complete after 1", s.Name, s.State, s.Attempts)
		}
		if got := strings.TrimSpace(string(s.Result)); got != w {
			bad("diamond: step %s result %s, want %s", s.Name, got, w)
		}
	}
	if seen != len(want) {
		bad("diamond: %d steps, want %d", seen, len(want))
	}
	if o.DeferredAfterReturn != 2 {
		bad("deferred completion: %d goroutine completions after return, want 2", o.DeferredAfterReturn)
	}
	if len(o.DeferredErrors) > 0 {
		bad("deferred completion errors: %v", errors.Join(o.DeferredErrors...))
	}

	if flaky.State != "complete" {
		bad("flaky: state %q, want complete", flaky.State)
	}
	if len(flaky.Steps) != 1 {
		bad("flaky: %d steps, want 1", len(flaky.Steps))
	} else {
		s := flaky.Steps[0]
		if s.State != "complete" || s.Attempts != 2 {
			bad("flaky: step is %s after %d attempts, want complete after 2", s.State, s.Attempts)
		}
		if got := strings.TrimSpace(string(s.Result)); got != "2" {
			bad("flaky: result %s, want 2", got)
		}
		if len(s.Errors) != 1 || s.Errors[0].Class != "TransientError" || !s.Errors[0].Retryable {
			bad("flaky: errors %+v, want one retryable TransientError", s.Errors)
		}
	}
	return problems
}
