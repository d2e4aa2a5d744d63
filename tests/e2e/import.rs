//! `testfleet import junit`: other tools' JUnit files join history (locally and on a coordinator)
//! and show in the flaky ranking; testfleet's own JUnit output imports back to the same outcomes.

use testfleet_model::{RunId, exit_code};

use crate::fixture;
use crate::support::*;

const PYTEST_RUN_1: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3">
  <testcase classname="tests.test_api" name="test_get" time="0.120"/>
  <testcase classname="tests.test_api" name="test_retry" time="0.300"><failure message="timeout talking to db">E   TimeoutError</failure></testcase>
  <testcase classname="tests.test_api" name="test_todo"><skipped/></testcase>
</testsuite></testsuites>"#;

/// The same revision again: `test_retry` passes this time, which makes it flaky.
const PYTEST_RUN_2: &str = r#"<testsuite name="pytest">
  <testcase classname="tests.test_api" name="test_get" time="0.110"/>
  <testcase classname="tests.test_api" name="test_retry" time="0.280"/>
</testsuite>"#;

fn import(args: &[&str]) -> std::process::Output {
    let out = run_output(testfleet().args(["import", "junit"]).args(args));
    assert_eq!(
        out.status.code(),
        Some(exit_code::SUCCESS),
        "{}",
        stderr(&out)
    );
    out
}

fn flaky_names(target: &[&str]) -> Vec<String> {
    let out = run_output(testfleet().args(["flaky", "--json"]).args(target));
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn junit_from_other_tools_joins_local_and_coordinator_history() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("run1.xml"), dir.path().join("run2.xml"));
    std::fs::write(&a, PYTEST_RUN_1).unwrap();
    std::fs::write(&b, PYTEST_RUN_2).unwrap();
    let data = dir.path().join("data");
    let local = ["--data-dir", data.to_str().unwrap()];

    let first = import(
        &[
            &[a.to_str().unwrap(), "--suite", "py", "--revision", "r1"][..],
            &local,
        ]
        .concat(),
    );
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(
        text.contains("imported run 1 of suite `py`: 3 tests, 2 attempts (1 passed, 1 failed, 0 flaky, 0 timed out, 1 skipped)"),
        "{text}"
    );
    assert!(flaky_names(&local).is_empty());
    import(
        &[
            &[b.to_str().unwrap(), "--suite", "py", "--revision", "r1"][..],
            &local,
        ]
        .concat(),
    );
    assert_eq!(flaky_names(&local), ["test_retry"]);

    // The same files on a coordinator.
    let (mut coord, url) = coordinator(dir.path());
    let remote = ["--coordinator", url.as_str()];
    for f in [&a, &b] {
        import(
            &[
                &[f.to_str().unwrap(), "--suite", "py", "--revision", "r1"][..],
                &remote,
            ]
            .concat(),
        );
    }
    assert_eq!(flaky_names(&remote), ["test_retry"]);
    assert!(coord.stop().success(), "{}", coord.log());

    // Files that are not JUnit are refused with their name.
    let bad = dir.path().join("report.html");
    std::fs::write(&bad, "<html></html>").unwrap();
    let out = run_output(testfleet().args(["import", "junit"]).arg(&bad).args(local));
    assert_eq!(
        out.status.code(),
        Some(exit_code::USAGE),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("report.html: not JUnit XML"),
        "{}",
        stderr(&out)
    );
}

/// testfleet's own JUnit output (flaky tests as flakyFailure, retried failures as rerunFailure,
/// timeouts typed as such) imports back to the outcomes the run had.
#[test]
fn testfleet_s_own_junit_imports_back_to_the_run_s_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, url) = coordinator(dir.path());
    let mut a1 = agent(dir.path(), &url, "agent-a", 2);
    wait_for_agents(&url, 1);
    let junit = dir.path().join("junit.xml");
    fixture_run_on(testfleet(), &url, &["--junit", junit.to_str().unwrap()]);
    assert!(a1.stop().success());
    assert!(coord.stop().success());

    let data = dir.path().join("imported");
    import(&[
        junit.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_history_matches(&data, RunId(1), &fixture::expected(true));
}
