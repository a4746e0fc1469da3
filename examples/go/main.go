// Command tasker-go runs the diamond workflow and a retrying step through
// libtasker from Go, prints both tasks as JSON and exits non-zero if the
// outcome is wrong.
//
//	PKG_CONFIG_PATH=<prefix>/lib/pkgconfig LD_LIBRARY_PATH=<prefix>/lib go run .
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"example.com/tasker-go/tasker"
)

func pretty(s string) string {
	var b bytes.Buffer
	if json.Indent(&b, []byte(s), "", "  ") != nil {
		return s
	}
	return b.String()
}

func main() {
	fmt.Printf("libtasker %s (ABI %d), binding built against ABI %d\n",
		tasker.Version(), tasker.ABIVersion(), tasker.BindingABI)

	// A binding built against an older ABI must be refused with a clear message.
	if err := tasker.CheckABI(0); !tasker.IsCode(err, tasker.EVERSION) {
		fmt.Fprintln(os.Stderr, "WRONG: tasker_abi_check(0) =", err, "- want TASKER_EVERSION")
		os.Exit(1)
	} else {
		fmt.Println("ABI 0 refused as expected:", err)
	}

	out, err := RunWorkflows()
	if err != nil {
		fmt.Fprintln(os.Stderr, "go example:", err)
		os.Exit(1)
	}
	fmt.Println("diamond task:")
	fmt.Println(pretty(out.DiamondJSON))
	fmt.Println("flaky task:")
	fmt.Println(pretty(out.FlakyJSON))

	if problems := out.Check(); len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, "WRONG:", p)
		}
		os.Exit(1)
	}
	fmt.Println("go example: OK (diamond join = 25, deferred completions = 2, flaky succeeded on attempt 2)")
}
