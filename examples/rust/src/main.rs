//! Runs the diamond workflow and a retrying step through libtasker, prints
//! both tasks as JSON and exits non-zero if the outcome is wrong.
//!
//!     TASKER_LIB_DIR=<prefix>/lib cargo run
use std::process::ExitCode;

fn main() -> ExitCode {
    println!(
        "libtasker {} (ABI {}), crate built against ABI {}",
        tasker::version(),
        tasker::abi_version(),
        tasker::BINDING_ABI
    );
    // A binding built against an older ABI must be refused with a clear message.
    match tasker::abi_check(0) {
        Err(e) if e.code == tasker::code::EVERSION => println!("ABI 0 refused as expected: {e}"),
        other => {
            eprintln!("WRONG: tasker_abi_check(0) = {other:?}, want TASKER_EVERSION");
            return ExitCode::FAILURE;
        }
    }
    let outcome = match tasker::demo::run_workflows() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rust example: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("diamond task:\n{}", outcome.diamond_json);
    println!("flaky task:\n{}", outcome.flaky_json);
    let problems = outcome.check();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("WRONG: {p}");
        }
        return ExitCode::FAILURE;
    }
    println!("rust example: OK (diamond join = 25, deferred completions = 2, flaky succeeded on attempt 2)");
    ExitCode::SUCCESS
}
