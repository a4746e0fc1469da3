//! The example workflows, shared by the binary and the tests.
//!
//! diamond: start -> (left, right) -> join with start = context.n,
//! left = 2 * start, right = 3 * start, join = left + right (25 for n = 5).
//! left and right complete from std threads after their handler returned.
//!
//! flaky: one step that fails retryably on attempt 1 and succeeds on attempt 2.

use crate::json::{self, Json};
use crate::{Backoff, Coordinator, Failure, Result, Step, StepOptions, TaskRequest, Template};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

const DIAMOND_TEMPLATE: &str = r#"{"namespace": "examples", "name": "diamond", "version": "1", "steps": [
  {"name": "start"},
  {"name": "left",  "handler": "double", "depends_on": ["start"]},
  {"name": "right", "handler": "triple", "depends_on": ["start"]},
  {"name": "join",  "depends_on": ["left", "right"]}]}"#;

/// What a run produced.
pub struct Outcome {
    pub diamond_json: String,
    pub flaky_json: String,
    /// Completions made by a std thread after its handler had returned.
    pub deferred_after_return: usize,
    /// Errors tasker returned to the deferred threads (should be none).
    pub deferred_errors: Vec<String>,
}

fn int_result(step: &Step, dep: &str) -> std::result::Result<i64, String> {
    let text = step.dependency_result(dep).map_err(|e| e.to_string())?;
    json::parse(text)?
        .as_i64()
        .ok_or_else(|| format!("{dep} result {text} is not an integer"))
}

/// Sends on drop: tells a deferred thread that its handler has returned.
struct ReturnSignal(mpsc::Sender<()>);
impl Drop for ReturnSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

pub fn run_workflows() -> Result<Outcome> {
    let coord = Coordinator::open(&[])?;
    let completed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let threads = Arc::new(Mutex::new(Vec::<JoinHandle<()>>::new()));

    coord.handle("start", |step| {
        let n = json::parse(step.context())
            .ok()
            .and_then(|c| c.get("n").and_then(Json::as_i64));
        let _ = match n {
            Some(n) => step.succeed(&n.to_string()),
            None => step.fail(&Failure::permanent(
                "BadInput",
                "context needs an integer n",
            )),
        };
    })?;

    for (name, factor) in [("double", 2i64), ("triple", 3i64)] {
        let (completed, errors, threads) = (completed.clone(), errors.clone(), threads.clone());
        coord.handle(name, move |step| {
            let (tx, rx) = mpsc::channel();
            let _signal = ReturnSignal(tx);
            let (completed, errors) = (completed.clone(), errors.clone());
            let worker = thread::spawn(move || {
                let _ = rx.recv(); // until the handler has returned
                let result = match int_result(&step, "start") {
                    Ok(start) => step.succeed(&(start * factor).to_string()),
                    Err(why) => step.fail(&Failure::permanent("BadInput", &why)),
                };
                match result {
                    Ok(()) => {
                        completed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => errors.lock().unwrap().push(e.to_string()),
                }
            });
            threads.lock().unwrap().push(worker);
        })?;
    }

    coord.handle("join", |step| {
        let sum = int_result(&step, "left").and_then(|l| int_result(&step, "right").map(|r| l + r));
        let _ = match sum {
            Ok(sum) => step.succeed(&sum.to_string()),
            Err(why) => step.fail(&Failure::permanent("BadInput", &why)),
        };
    })?;

    coord.handle("flaky", |step| {
        let attempt = step.attempt();
        let _ = if attempt == 1 {
            step.fail(&Failure::retryable(
                "TransientError",
                "the first attempt fails on purpose",
            ))
        } else {
            step.succeed(&attempt.to_string())
        };
    })?;

    coord.register_template_json(DIAMOND_TEMPLATE)?;
    // The retrying template through the builder, without backoff so the run is quick.
    let mut flaky = Template::new("examples", "flaky", "1")?;
    let opts = StepOptions {
        max_attempts: 3,
        backoff: Backoff::None,
        ..StepOptions::default()
    };
    flaky.add_step("flaky", None, &[], Some(&opts))?;
    coord.register_template(&flaky)?;
    drop(flaky);

    coord.start(2)?;
    let run = |name: &str, context: Option<&str>| -> Result<String> {
        let req = TaskRequest {
            namespace: "examples",
            name,
            context_json: context,
            ..Default::default()
        };
        let uuid = coord.create_task(&req)?;
        coord.wait(&uuid, Some(Duration::from_secs(10)))?;
        coord.task_json(&uuid)
    };
    let diamond_json = run("diamond", Some(r#"{"n": 5}"#))?;
    let flaky_json = run("flaky", None)?;
    coord.stop(Some(Duration::from_secs(5)))?;
    for t in threads.lock().unwrap().drain(..) {
        let _ = t.join();
    }
    coord.close()?;

    let deferred_errors = errors.lock().unwrap().clone();
    Ok(Outcome {
        diamond_json,
        flaky_json,
        deferred_after_return: completed.load(Ordering::SeqCst),
        deferred_errors,
    })
}

fn steps(task: &Json) -> Vec<&Json> {
    task.get("steps")
        .and_then(Json::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn field_str<'a>(v: &'a Json, key: &str) -> &'a str {
    v.get(key).and_then(Json::as_str).unwrap_or("?")
}

impl Outcome {
    /// Every way the outcome differs from what the workflows must produce.
    pub fn check(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let (diamond, flaky) = match (
            json::parse(&self.diamond_json),
            json::parse(&self.flaky_json),
        ) {
            (Ok(d), Ok(f)) => (d, f),
            (d, f) => {
                return vec![format!(
                    "task JSON does not parse: {:?} {:?}",
                    d.err(),
                    f.err()
                )]
            }
        };

        if field_str(&diamond, "state") != "complete" {
            bad.push(format!(
                "diamond: state {}, want complete",
                field_str(&diamond, "state")
            ));
        }
        let want = [("start", 5), ("left", 10), ("right", 15), ("join", 25)];
        let dsteps = steps(&diamond);
        if dsteps.len() != want.len() {
            bad.push(format!(
                "diamond: {} steps, want {}",
                dsteps.len(),
                want.len()
            ));
        }
        for (name, value) in want {
            match dsteps.iter().find(|s| field_str(s, "name") == name) {
                None => bad.push(format!("diamond: no step {name}")),
                Some(s) => {
                    let attempts = s.get("attempts").and_then(Json::as_i64);
                    if field_str(s, "state") != "complete" || attempts != Some(1) {
                        bad.push(format!(
                            "diamond: step {name} is {} after {attempts:?} attempts",
                            field_str(s, "state")
                        ));
                    }
                    let result = s.get("result").and_then(Json::as_i64);
                    if result != Some(value) {
                        bad.push(format!(
                            "diamond: step {name} result {result:?}, want {value}"
                        ));
                    }
                }
            }
        }
        if self.deferred_after_return != 2 {
            bad.push(format!(
                "deferred completion: {} thread completions, want 2",
                self.deferred_after_return
            ));
        }
        for e in &self.deferred_errors {
            bad.push(format!("deferred completion error: {e}"));
        }

        if field_str(&flaky, "state") != "complete" {
            bad.push(format!(
                "flaky: state {}, want complete",
                field_str(&flaky, "state")
            ));
        }
        let fsteps = steps(&flaky);
        match fsteps.as_slice() {
            [s] => {
                let attempts = s.get("attempts").and_then(Json::as_i64);
                if field_str(s, "state") != "complete" || attempts != Some(2) {
                    bad.push(format!(
                        "flaky: step is {} after {attempts:?} attempts, want complete after 2",
                        field_str(s, "state")
                    ));
                }
                if s.get("result").and_then(Json::as_i64) != Some(2) {
                    bad.push(format!("flaky: result {:?}, want 2", s.get("result")));
                }
                let errs = s.get("errors").and_then(Json::as_array).unwrap_or(&[]);
                let ok = errs.len() == 1
                    && field_str(&errs[0], "class") == "TransientError"
                    && errs[0].get("retryable").and_then(Json::as_bool) == Some(true);
                if !ok {
                    bad.push(format!(
                        "flaky: errors {errs:?}, want one retryable TransientError"
                    ));
                }
            }
            _ => bad.push(format!("flaky: {} steps, want 1", fsteps.len())),
        }
        bad
    }
}
