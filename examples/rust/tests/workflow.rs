//! End-to-end tests against the real libtasker (TASKER_LIB_DIR or pkg-config).
use tasker::{code, Coordinator, Failure, Template};

#[test]
fn diamond_retry_and_deferred_completion() {
    let outcome = tasker::demo::run_workflows().expect("workflows ran");
    let problems = outcome.check();
    assert!(
        problems.is_empty(),
        "{problems:#?}\ndiamond: {}\nflaky: {}",
        outcome.diamond_json,
        outcome.flaky_json
    );
}

#[test]
fn abi_check_refuses_an_older_binding() {
    tasker::abi_check(tasker::BINDING_ABI).expect("own ABI accepted");
    let err = tasker::abi_check(0).expect_err("ABI 0 must be refused");
    assert_eq!(err.code, code::EVERSION, "{err}");
    let lib = tasker::abi_version().to_string();
    assert!(
        err.message.contains(&lib) && err.message.contains('0'),
        "message {:?} should name ABI 0 and library ABI {lib}",
        err.message
    );
}

#[test]
fn errors_are_structured() {
    let coord = Coordinator::open(&[]).unwrap();
    let err = coord
        .register_template_json(
            r#"{"namespace": "t", "name": "cyclic", "steps": [
                {"name": "a", "depends_on": ["b"]}, {"name": "b", "depends_on": ["a"]}]}"#,
        )
        .expect_err("a cycle is rejected");
    assert_eq!(err.code, code::ETEMPLATE);
    let ctx = tasker::json::parse(&err.context).expect("context is JSON");
    assert_eq!(
        ctx.get("reason").and_then(|r| r.as_str()),
        Some("cycle"),
        "{err}"
    );

    // A duplicate step is refused by the builder.
    let mut t = Template::new("t", "dup", "1").unwrap();
    t.add_step("a", None, &[], None).unwrap();
    assert_eq!(
        t.add_step("a", None, &[], None).unwrap_err().code,
        code::ETEMPLATE
    );

    coord
        .handle("h", |step| drop(step.fail(&Failure::permanent("X", "y"))))
        .unwrap();
    assert_eq!(
        coord.handle("h", |_step| {}).unwrap_err().code,
        code::EEXIST
    );
    assert_eq!(
        Coordinator::open(&[("no.such.key", "1")])
            .err()
            .map(|e| e.code),
        Some(code::ECONFIG)
    );
}
