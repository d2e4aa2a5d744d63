//! Suites run by other tools: a real pytest suite, whose client tests talk to the kvstore server in
//! a container, run distributed over a coordinator and two agent processes; and the `command`
//! runner, with a shell script standing in for any tool that writes JUnit.

use std::collections::BTreeMap;

use testfleet_model::{AttemptStatus, EventKind, Outcome, exit_code};

use crate::support::*;

/// The events of a run that ended with failed tests, as both suites here do.
fn tests_failed(out: &std::process::Output) -> Vec<testfleet_model::RunEvent> {
    assert_eq!(
        out.status.code(),
        Some(exit_code::TESTS_FAILED),
        "{}",
        stderr(out)
    );
    events(out)
}

/// Tests whose outcomes are every kind a pytest suite can have, beside the example's passing ones.
const OUTCOMES: &str = r#"
import os
import pytest

def test_fails():
    print("about to fail")
    assert 1 + 1 == 3

def test_flaky():
    assert os.environ["TESTFLEET_ATTEMPT"] != "1", "fails on its first attempt only"

@pytest.mark.skip(reason="not today")
def test_skipped():
    pass

@pytest.mark.xfail(reason="known bug")
def test_expected_to_fail():
    assert False
"#;

/// A file whose batch dies and hangs: its tests are narrowed to a process each.
const MISBEHAVING: &str = r#"
import os
import time

def test_exits():
    os._exit(3)

def test_hangs():
    time.sleep(600)

def test_beside_them():
    pass
"#;

#[test]
fn a_pytest_suite_with_a_service_container_runs_distributed() {
    let name = "a_pytest_suite_with_a_service_container_runs_distributed";
    if !docker_or_skip(name) || !pytest_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite");
    copy_example("kvstore-pytest", &suite);
    std::fs::write(suite.join("tests/test_outcomes.py"), OUTCOMES).unwrap();
    std::fs::write(suite.join("tests/test_misbehaving.py"), MISBEHAVING).unwrap();

    let (_coordinator, url) = coordinator(dir.path());
    let (a, b) = (unique("py-a"), unique("py-b"));
    let _agents = [
        agent(dir.path(), &url, &a, 2),
        agent(dir.path(), &url, &b, 2),
    ];
    wait_for_agents(&url, 2);
    let out = RunLine::on(&url)
        .in_dir(&suite)
        .env(
            "KVSTORE_MANIFEST",
            repo().join("examples/kvstore/Cargo.toml"),
        )
        .json()
        .retries(1)
        .timeout(5, 1)
        .output();
    let events = tests_failed(&out);

    let collected = std::process::Command::new("python3")
        .args([
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .args(["--rootdir", ".", "tests"])
        .current_dir(&suite)
        .output()
        .unwrap();
    let mut expected = BTreeMap::new();
    for id in String::from_utf8_lossy(&collected.stdout)
        .lines()
        .filter(|l| l.contains("::"))
    {
        let file = id.split("::").next().unwrap().to_owned();
        let outcome = match id.rsplit("::").next().unwrap() {
            "test_fails" | "test_exits" => Outcome::Failed,
            "test_flaky" => Outcome::Flaky,
            "test_hangs" => Outcome::TimedOut,
            "test_skipped" | "test_expected_to_fail" => Outcome::Skipped,
            _ => Outcome::Passed,
        };
        expected.insert((file, id.to_owned()), outcome);
    }
    assert_eq!(expected.len(), 19 + 4 + 3, "{collected:?}");
    assert_eq!(final_outcomes(&events), expected, "{}", stderr(&out));

    // The client tests had their server: each agent that ran one started the container.
    let started: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ServiceStarted {
                service, agent_id, ..
            } if service == "kvstore" => Some(agent_id.as_str()),
            _ => None,
        })
        .collect();
    assert!(!started.is_empty(), "no kvstore container started");

    // A failure carries pytest's account; its retry ran on the other agent.
    let fails = attempts(&events, "tests/test_outcomes.py::test_fails");
    assert_eq!(fails.len(), 2);
    assert_ne!(fails[0].1, fails[1].1, "a retry goes to another agent");
    let output = String::from_utf8_lossy(&fails[0].2.output);
    assert!(
        output.contains("assert 1 + 1 == 3") && output.contains("about to fail"),
        "{output}"
    );
    let skipped = attempts(&events, "tests/test_outcomes.py::test_skipped");
    assert_eq!(
        (skipped[0].2.status, skipped[0].2.message.as_str()),
        (AttemptStatus::Skipped, "not today")
    );
    // The process that died and the one that hung blame only the test that did it.
    let exits = attempts(&events, "tests/test_misbehaving.py::test_exits");
    assert!(
        exits
            .iter()
            .all(|(_, _, r)| r.status == AttemptStatus::Failed
                && r.message.contains("exited with code 3")),
        "{exits:?}"
    );
    let hangs = attempts(&events, "tests/test_misbehaving.py::test_hangs");
    assert!(
        hangs
            .iter()
            .all(|(_, _, r)| r.status == AttemptStatus::TimedOut),
        "{hangs:?}"
    );
    let beside = attempts(&events, "tests/test_misbehaving.py::test_beside_them");
    assert_eq!(beside.len(), 1, "{beside:?}");

    // History knows the flaky test by its node id.
    let flaky = run_output(testfleet().args(["flaky", "--coordinator", &url, "--json"]));
    let text = String::from_utf8_lossy(&flaky.stdout);
    assert!(
        text.contains("tests/test_outcomes.py::test_flaky"),
        "{text}{}",
        stderr(&flaky)
    );
}

/// Stands in for any tool: `--list` prints ids; otherwise `$1` is the report path and the rest
/// are the ids to run, each `group.name`. Every call is logged with the ids it got.
const TOOL: &str = r#"#!/bin/sh
if [ "$1" = "--list" ]; then
    printf 'math.adds\nmath.subtracts\nstrings.concat\nstrings.broken\n'
    exit 0
fi
junit=$1
shift
echo "$*" >> "$CALLS"
{
    echo '<testsuite name="shell">'
    for t in "$@"; do
        group=${t%%.*}
        name=${t#*.}
        if [ "$name" = broken ]; then
            echo "<testcase classname=\"$group\" name=\"$name\" time=\"0.25\"><failure message=\"expected ab\">got ba</failure></testcase>"
        else
            echo "<testcase classname=\"$group\" name=\"$name\" time=\"0.01\"/>"
        fi
    done
    echo '</testsuite>'
} > "$junit"
"#;

#[test]
fn the_command_runner_runs_any_tool_that_writes_junit() {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls.log");
    std::fs::write(dir.path().join("run-tests.sh"), TOOL).unwrap();
    std::fs::write(
        dir.path().join("testfleet.toml"),
        format!(
            "[runner]\nkind = \"command\"\nbinary = \"shell\"\n\
             list = [\"sh\", \"run-tests.sh\", \"--list\"]\n\
             run = [\"sh\", \"run-tests.sh\", \"{{junit}}\", \"{{tests}}\"]\n\
             env = {{ CALLS = {:?} }}\n",
            calls.display().to_string()
        ),
    )
    .unwrap();
    let report = dir.path().join("report.xml");
    let out = RunLine::local(1)
        .in_dir(dir.path())
        .arg("--slots")
        .arg("1")
        .json()
        .junit(&report)
        .output();
    let events = tests_failed(&out);
    let key = |n: &str| ("shell".to_owned(), n.to_owned());
    assert_eq!(
        final_outcomes(&events),
        BTreeMap::from([
            (key("math.adds"), Outcome::Passed),
            (key("math.subtracts"), Outcome::Passed),
            (key("strings.concat"), Outcome::Passed),
            (key("strings.broken"), Outcome::Failed),
        ])
    );
    let broken = &attempts(&events, "strings.broken")[0].2;
    assert_eq!(broken.message, "expected ab");
    assert_eq!(String::from_utf8_lossy(&broken.output), "got ba");
    assert_eq!(broken.duration, std::time::Duration::from_millis(250));

    // Every test was run exactly once, and tests shared processes.
    let log = std::fs::read_to_string(&calls).unwrap();
    let mut ran: Vec<&str> = log.split_whitespace().collect();
    ran.sort_unstable();
    assert_eq!(
        ran,
        [
            "math.adds",
            "math.subtracts",
            "strings.broken",
            "strings.concat"
        ]
    );
    assert!(log.lines().count() < 4, "one process per test: {log}");
    // testfleet's own report names each case as the tool's report did, with the same verdicts.
    let xml = std::fs::read_to_string(&report).unwrap();
    let cases: BTreeMap<(String, String), AttemptStatus> =
        testfleet_model::junit::read::parse(&xml, 1 << 20)
            .unwrap()
            .into_iter()
            .map(|c| ((c.classname, c.name), c.attempts.last().unwrap().status))
            .collect();
    let case = |c: &str, n: &str| (c.to_owned(), n.to_owned());
    assert_eq!(
        cases,
        BTreeMap::from([
            (case("math", "adds"), AttemptStatus::Passed),
            (case("math", "subtracts"), AttemptStatus::Passed),
            (case("strings", "concat"), AttemptStatus::Passed),
            (case("strings", "broken"), AttemptStatus::Failed),
        ]),
        "{xml}"
    );
    assert!(xml.contains("expected ab"), "{xml}");
}
