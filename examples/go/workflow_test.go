package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"example.com/tasker-go/tasker"
)

func TestDiamondRetryAndDeferredCompletion(t *testing.T) {
	out, err := RunWorkflows()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range out.Check() {
		t.Error(p)
	}
	if t.Failed() {
		t.Logf("diamond: %s", out.DiamondJSON)
		t.Logf("flaky: %s", out.FlakyJSON)
	}
}

// A binding built against an older ABI must be refused with EVERSION and a
// message that names both numbers.
func TestABICheckRefusesOlderBinding(t *testing.T) {
	if err := tasker.CheckABI(tasker.BindingABI); err != nil {
		t.Fatalf("own ABI refused: %v", err)
	}
	err := tasker.CheckABI(0)
	if !tasker.IsCode(err, tasker.EVERSION) {
		t.Fatalf("CheckABI(0) = %v, want an EVERSION *tasker.Error", err)
	}
	msg := err.(*tasker.Error).Message
	lib := strconv.Itoa(tasker.ABIVersion())
	if !strings.Contains(msg, lib) || !strings.Contains(msg, "0") {
		t.Fatalf("message %q does not name ABI 0 and library ABI %s", msg, lib)
	}
	t.Logf("CheckABI(0): %v", err)
}

// Errors carry the structured last error of the thread that failed, read
// on that same thread.
func TestStructuredErrors(t *testing.T) {
	co, err := tasker.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()

	err = co.RegisterTemplateJSON(`{"namespace": "t", "name": "cyclic", "steps": [
		{"name": "a", "depends_on": ["b"]}, {"name": "b", "depends_on": ["a"]}]}`)
	if !tasker.IsCode(err, tasker.ETEMPLATE) {
		t.Fatalf("cyclic template: %v, want ETEMPLATE", err)
	}
	var ctx struct {
		Reason string `json:"reason"`
	}
	if jerr := json.Unmarshal([]byte(err.(*tasker.Error).Context), &ctx); jerr != nil || ctx.Reason != "cycle" {
		t.Fatalf("cyclic template context %q, want reason cycle", err.(*tasker.Error).Context)
	}

	noop := func(s *tasker.Step) error { return s.Succeed(nil) }
	if err := co.Handle("h", noop); err != nil {
		t.Fatal(err)
	}
	if err := co.Handle("h", noop); !tasker.IsCode(err, tasker.EEXIST) {
		t.Fatalf("second registration: %v, want EEXIST", err)
	}
	if _, err := tasker.Open(map[string]string{"no.such.key": "1"}); !tasker.IsCode(err, tasker.ECONFIG) {
		t.Fatalf("bad config key: %v, want ECONFIG", err)
	}
}
