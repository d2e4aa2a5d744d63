//! `testfleet ci`: jobs of one pipeline share a run by its key. A job killed mid-test and then
//! retried loses nothing and counts nothing twice; every job exits with the run's status.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use testfleet_model::{EventKind, Outcome, RunEvent, RunId, exit_code};

use crate::fixture;
use crate::support::*;

/// Tests of the fixture this pipeline runs: quick ones, and one that hangs until its timeout.
const FILTERS: [&str; 4] = ["tests::adds", "tests::slow", "tests::noisy", "tests::hangs"];

fn ci_command(dir: &Path, url: &str, node: u32) -> std::process::Command {
    let mut cmd = testfleet();
    // A key of this test process: the agents are named after it, and an agent that starts sweeps
    // the leftover test processes of its name machine-wide (another test process's included).
    cmd.args([
        "ci",
        "--run-key",
        &unique("pipeline"),
        "--nodes",
        "3",
        "--node",
    ])
    .arg(node.to_string())
    .args([
        "--coordinator",
        url,
        "--slots",
        "1",
        "--no-docker",
        "--json",
    ])
    .args(["--timeout", "3", "--kill-grace", "1", "--retries", "0"])
    .arg("--work-dir")
    .arg(dir.join(format!("node-{node}")))
    .arg("--markdown-summary")
    .arg(dir.join(format!("summary-{node}.md")))
    .arg("--manifest-path")
    .arg(fixture::manifest())
    .args(FILTERS);
    cmd
}

#[test]
fn ci_jobs_share_one_run_and_a_killed_then_retried_job_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coord, addr) = coordinator_with(
        dir.path(),
        "127.0.0.1:0",
        "coordinator.log",
        &["--lease-timeout", "3"],
    );
    let url = format!("http://{addr}");

    // Node 2 gets there first: it builds, creates the run, and works alone until it is killed
    // in the middle of the test that hangs.
    let mut first = ci_command(dir.path(), &url, 2);
    first.stdout(Stdio::piped());
    let mut first = Proc::spawn(first, dir.path().join("node-2-first.log"));
    let stdout = BufReader::new(first.child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            let e: RunEvent = serde_json::from_str(&line).unwrap();
            if let EventKind::TestStarted { test, .. } = &e.kind
                && &*test.name == "tests::hangs"
            {
                let _ = tx.send(e.run_id);
            }
        }
    });
    let run_id: RunId = rx
        .recv_timeout(GUARD)
        .unwrap_or_else(|_| panic!("node 2 never started the hanging test:\n{}", first.log()));
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(first.log().contains("created run"), "{}", first.log());

    // Node 2's retry and the two other nodes: all join the run, none builds.
    let nodes: Vec<Watched> = [2, 0, 1]
        .into_iter()
        .map(|n| {
            Watched::spawn(
                ci_command(dir.path(), &url, n),
                dir.path().join(format!("node-{n}.log")),
            )
        })
        .collect();
    let outs: Vec<_> = nodes.into_iter().map(Watched::finish).collect();
    let expected: BTreeMap<Key, Outcome> = fixture::expected(false)
        .into_iter()
        .filter(|((_, name), _)| FILTERS.iter().any(|f| name.contains(f)))
        .collect();
    for (out, node) in outs.iter().zip([2, 0, 1]) {
        let log = stderr(out);
        assert_eq!(
            out.status.code(),
            Some(exit_code::TESTS_FAILED),
            "node {node} exits with the run's status (a test timed out):\n{log}"
        );
        assert!(
            log.contains(&format!("node {node} of 3: joined run {run_id}")),
            "{log}"
        );
        assert!(
            !log.contains("bundle"),
            "a joining node builds nothing:\n{log}"
        );
        let events = events(out);
        assert_eq!(final_outcomes(&events), expected, "node {node}:\n{log}");
        let md = std::fs::read_to_string(dir.path().join(format!("summary-{node}.md"))).unwrap();
        assert!(
            md.contains(&format!("### testfleet: run {run_id} of")) && md.contains("tests::hangs"),
            "{md}"
        );
    }
    // The hanging test's killed attempt was an infrastructure error, never the test's fault; it
    // ran again elsewhere and timed out there.
    let events = events(&outs[0]);
    let hangs = attempts(&events, "tests::hangs");
    let statuses: Vec<_> = hangs.iter().map(|(_, _, r)| r.status).collect();
    assert_eq!(
        statuses,
        [
            testfleet_model::AttemptStatus::InfraError,
            testfleet_model::AttemptStatus::TimedOut
        ],
        "{hangs:?}"
    );
    assert!(coord.stop().success(), "{}", coord.log());
    assert_history_matches(&dir.path().join("coordinator"), run_id, &expected);
}

#[test]
fn ci_refuses_what_cannot_be_a_pipeline_job_and_says_why() {
    for (args, needle) in [
        (
            vec![
                "--run-key",
                "k",
                "--node",
                "3",
                "--nodes",
                "3",
                "--coordinator",
                "http://127.0.0.1:1",
            ],
            "--node 3 is not below --nodes 3",
        ),
        (
            vec![
                "--run-key",
                " ",
                "--node",
                "0",
                "--nodes",
                "1",
                "--coordinator",
                "http://127.0.0.1:1",
            ],
            "--run-key is empty",
        ),
        (
            vec!["--run-key", "k", "--node", "0", "--nodes", "1"],
            "testfleet ci needs --coordinator URL",
        ),
        (
            vec![
                "--run-key",
                "k",
                "--node",
                "0",
                "--nodes",
                "1",
                "--local",
                "2",
            ],
            "--local, --detach, --data-dir and --failed do not apply",
        ),
    ] {
        let out = run_output(testfleet().arg("ci").args(&args));
        assert_eq!(
            out.status.code(),
            Some(exit_code::USAGE),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

/// Two jobs of a pipeline on a pytest suite, started together in the suite's directory: one
/// creates the run, the other joins it; every test runs once, and each job's JUnit names the
/// cases as pytest does (the joining job learns how from the suite's testfleet.toml).
#[test]
fn two_ci_jobs_share_a_pytest_suite_and_run_every_test_once() {
    let name = "two_ci_jobs_share_a_pytest_suite_and_run_every_test_once";
    if !pytest_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let suite = crate::pytest_outcomes::write_suite(dir.path());
    let (_coordinator, url) = coordinator(dir.path());
    let key = unique("py-pipeline");
    let job = |node: u32| {
        let mut cmd = testfleet();
        cmd.current_dir(&suite)
            .args(["ci", "--run-key", &key, "--nodes", "2", "--node"])
            .arg(node.to_string())
            .args([
                "--coordinator",
                &url,
                "--slots",
                "1",
                "--no-docker",
                "--json",
            ])
            .args(["--timeout", "5", "--kill-grace", "1", "--retries", "0"])
            .arg("--work-dir")
            .arg(dir.path().join(format!("node-{node}")))
            .arg("--junit")
            .arg(dir.path().join(format!("junit-{node}.xml")));
        Watched::spawn(cmd, dir.path().join(format!("node-{node}.log")))
    };
    let jobs = [job(0), job(1)];
    let outs: Vec<_> = jobs.into_iter().map(Watched::finish).collect();
    for (node, out) in outs.iter().enumerate() {
        assert_eq!(
            out.status.code(),
            Some(exit_code::TESTS_FAILED),
            "node {node}: {}",
            stderr(out)
        );
        let events = events(out);
        let outcomes = final_outcomes(&events);
        assert_eq!(outcomes.len(), 11 + 3, "node {node}: {outcomes:?}");
        for (_, test) in outcomes.keys() {
            assert_eq!(
                attempts(&events, test).len(),
                1,
                "node {node}: {test} ran once"
            );
        }
        let xml = std::fs::read_to_string(dir.path().join(format!("junit-{node}.xml"))).unwrap();
        assert!(
            xml.contains(r#"classname="tests.test_outcomes.TestGroup""#)
                && xml.contains(r#"name="test_param[2]""#),
            "node {node}: {xml}"
        );
    }
}
