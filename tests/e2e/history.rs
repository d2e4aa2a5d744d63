//! History through the real binary: a test failing on a known pattern of attempts across runs is
//! listed as flaky with the right counts and evidence, timings match the recorded durations, and a
//! quarantined failing test no longer fails the run.

use std::collections::BTreeMap;
use std::path::Path;

use testfleet_coordinator::history::stats::percentile;
use testfleet_model::report::{FlakyTest, QuarantineInfo, RunOverview, TestHistory, Timings};
use testfleet_model::{AttemptStatus, EventKind, RunEvent, TestFinished, exit_code};

use crate::fixture;
use crate::support::*;

/// Runs the fixture's `adds`, `fails`, `slow` and `pattern_flaky` tests once with one retry.
fn run(data: &Path, junit: Option<&Path>) -> (Option<i32>, Vec<RunEvent>) {
    let mut line = RunLine::local(1)
        .env("FIXTURE_FAIL_RUNS", "1,3")
        .retries(1)
        .arg("--revision")
        .arg("rev-1")
        .json()
        .filters(&["adds", "fails", "slow", "pattern_flaky"])
        .data_dir(data)
        .manifest(&fixture::manifest());
    if let Some(j) = junit {
        line = line.junit(j);
    }
    let out = line.output();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    (out.status.code(), events(&out))
}

fn query<T: serde::de::DeserializeOwned>(data: &Path, args: &[&str]) -> T {
    let out = run_output(
        testfleet()
            .args(args)
            .arg("--json")
            .arg("--data-dir")
            .arg(data),
    );
    assert_eq!(
        out.status.code(),
        Some(exit_code::SUCCESS),
        "{args:?}: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn passing_durations(events: &[RunEvent], name: &str) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TestFinished(TestFinished { test, result, .. })
                if &*test.name == name && result.status == AttemptStatus::Passed =>
            {
                Some(result.duration.as_millis() as u64)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn history_finds_the_flaky_test_times_the_rest_and_quarantine_stops_gating() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut slow_durations = Vec::new();
    for n in 1..=4 {
        let (code, events) = run(&data, None);
        assert_eq!(
            code,
            Some(exit_code::TESTS_FAILED),
            "run {n}: `fails` fails"
        );
        assert_eq!(events[0].run_id.0, n);
        slow_durations.extend(passing_durations(&events, "tests::slow"));
    }

    // Flaky: exactly the patterned test, with its counts and evidence.
    let flaky: Vec<FlakyTest> = query(&data, &["flaky"]);
    let names: Vec<&str> = flaky.iter().map(|f| f.test.name.as_str()).collect();
    assert_eq!(
        names,
        ["tests::pattern_flaky"],
        "no stable or always-failing test is listed"
    );
    let f = &flaky[0];
    assert_eq!((f.attempts, f.failures, f.flaky_revisions), (6, 2, 1));
    let failed_in: Vec<(u64, u32)> = f
        .evidence
        .iter()
        .filter(|e| e.failed)
        .map(|e| (e.run_id, e.attempt))
        .collect();
    assert_eq!(failed_in, [(1, 1), (3, 1)]);
    assert!(
        f.evidence
            .iter()
            .all(|e| e.revision == "rev-1" && e.agent_id.starts_with("local-"))
    );
    assert!(f.first_flaky_ms.unwrap() <= f.last_flaky_ms.unwrap());
    assert!((f.failure_probability - 2.0 / 6.0).abs() < 1e-9);

    // Timings: p95 is the nearest-rank p95 of the durations the runs reported.
    let t: Timings = query(&data, &["timings", "--top", "50"]);
    let slow = t
        .tests
        .iter()
        .find(|x| x.test.name == "tests::slow")
        .unwrap();
    slow_durations.sort_unstable();
    assert_eq!(slow.samples as usize, slow_durations.len());
    assert_eq!(Some(slow.p95_ms), percentile(&slow_durations, 95.0));
    assert_eq!(
        t.tests[0].test.name, "tests::slow",
        "the slowest test comes first"
    );

    // A test's own record.
    let h: Vec<TestHistory> = query(&data, &["history", "pattern_flaky"]);
    assert_eq!(h.len(), 1);
    let statuses: Vec<(u64, AttemptStatus)> =
        h[0].log.iter().map(|a| (a.run_id, a.status)).collect();
    use AttemptStatus::{Failed, Passed};
    assert_eq!(
        statuses,
        [
            (1, Failed),
            (1, Passed),
            (2, Passed),
            (3, Failed),
            (3, Passed),
            (4, Passed)
        ]
    );
    assert_eq!(h[0].runs, 4);

    let runs: Vec<RunOverview> = query(&data, &["runs"]);
    let ids: Vec<u64> = runs.iter().map(|r| r.run_id).collect();
    assert_eq!(ids, [4, 3, 2, 1]);
    assert!(runs.iter().all(|r| r.revision == "rev-1"));

    // Quarantine the always-failing test: the next run succeeds, and says why.
    let added: Vec<QuarantineInfo> = query(
        &data,
        &[
            "quarantine",
            "add",
            "tests::fails",
            "--reason",
            "known bug #12",
        ],
    );
    assert_eq!(added.len(), 1);
    let junit = dir.path().join("junit.xml");
    let (code, events) = run(&data, Some(&junit));
    assert_eq!(
        code,
        Some(exit_code::SUCCESS),
        "a quarantined failure does not fail the run"
    );
    let s = summary(&events);
    assert_eq!((s.failed, s.quarantined), (0, 1));
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let case = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some("tests::fails"))
        .unwrap();
    let skipped = case
        .children()
        .find(|c| c.has_tag_name("skipped"))
        .expect("reported as skipped");
    assert!(
        skipped
            .attribute("message")
            .unwrap()
            .starts_with("quarantined test failed")
    );
    let property = case
        .descendants()
        .find(|p| p.has_tag_name("property"))
        .unwrap();
    assert_eq!(
        (property.attribute("name"), property.attribute("value")),
        (Some("testfleet.quarantined"), Some("true"))
    );
    assert_eq!(doc.root_element().attribute("failures"), Some("0"));

    let listed: Vec<QuarantineInfo> = query(&data, &["quarantine", "list"]);
    let listed: BTreeMap<&str, &str> = listed
        .iter()
        .map(|q| (q.name.as_str(), q.reason.as_str()))
        .collect();
    assert_eq!(listed, BTreeMap::from([("tests::fails", "known bug #12")]));
    let _: Vec<QuarantineInfo> = query(&data, &["quarantine", "remove", "tests::fails"]);
    let listed: Vec<QuarantineInfo> = query(&data, &["quarantine", "list"]);
    assert!(listed.is_empty());
    let (code, _) = run(&data, None);
    assert_eq!(
        code,
        Some(exit_code::TESTS_FAILED),
        "released, it fails runs again"
    );
}

#[test]
fn queries_without_history_say_where_they_looked() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_output(testfleet().args(["flaky", "--data-dir"]).arg(dir.path()));
    assert_ne!(out.status.code(), Some(exit_code::SUCCESS));
    assert!(stderr(&out).contains("no history in"), "{}", stderr(&out));
}

#[test]
fn the_same_queries_answer_from_a_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, url) = coordinator(dir.path());
    // Tests see the agent's variables the suite passes (`pass_env = ["FIXTURE_*"]`), not the
    // submitter's: the pattern goes to the agent.
    let mut cmd = testfleet();
    cmd.env("FIXTURE_FAIL_RUNS", "1")
        .args([
            "agent",
            "--coordinator",
            &url,
            "--agent-id",
            "historian",
            "--slots",
            "1",
            "--work-dir",
        ])
        .arg(dir.path().join("historian"));
    let _agent = Proc::spawn(cmd, dir.path().join("historian.log"));
    wait_for_agents(&url, 1);
    for _ in 0..2 {
        let out = RunLine::on(&url)
            .retries(1)
            .arg("--revision")
            .arg("r9")
            .json()
            .filters(&["pattern_flaky", "adds"])
            .manifest(&fixture::manifest())
            .output();
        assert_eq!(
            out.status.code(),
            Some(exit_code::SUCCESS),
            "{}",
            stderr(&out)
        );
    }
    let remote = |args: &[&str]| -> serde_json::Value {
        let out = run_output(
            testfleet()
                .args(args)
                .args(["--json", "--coordinator", &url]),
        );
        assert_eq!(
            out.status.code(),
            Some(exit_code::SUCCESS),
            "{args:?}: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let flaky: Vec<FlakyTest> = serde_json::from_value(remote(&["flaky"])).unwrap();
    assert_eq!(flaky.len(), 1);
    assert_eq!(
        (
            flaky[0].test.name.as_str(),
            flaky[0].attempts,
            flaky[0].failures
        ),
        ("tests::pattern_flaky", 3, 1)
    );
    assert_eq!(flaky[0].evidence.iter().filter(|e| e.failed).count(), 1);
    assert!(flaky[0].evidence.iter().all(|e| e.agent_id == "historian"));

    let t: Timings = serde_json::from_value(remote(&["timings", "--top", "2"])).unwrap();
    assert_eq!(t.tests.len(), 2, "--top is honoured");
    let h: Vec<TestHistory> =
        serde_json::from_value(remote(&["history", "pattern_flaky"])).unwrap();
    assert_eq!(h[0].log.len(), 3);
    assert!(h[0].flaky.is_some());
    let runs: Vec<RunOverview> = serde_json::from_value(remote(&["runs"])).unwrap();
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter()
            .all(|r| r.revision == "r9"
                && r.summary.as_ref().is_some_and(|s| s.flaky + s.passed == 3))
    );

    let added: Vec<QuarantineInfo> =
        serde_json::from_value(remote(&["quarantine", "add", "tests::pattern_flaky"])).unwrap();
    assert_eq!(added[0].by, "manual");
    let flaky: Vec<FlakyTest> = serde_json::from_value(remote(&["flaky"])).unwrap();
    assert!(flaky[0].quarantined);
    let _ = remote(&["quarantine", "remove", "tests::pattern_flaky"]);
    let listed: Vec<QuarantineInfo> =
        serde_json::from_value(remote(&["quarantine", "list"])).unwrap();
    assert!(listed.is_empty());
    // An unknown test is refused with a reason, not silently ignored.
    let out =
        run_output(testfleet().args(["quarantine", "add", "no_such_test", "--coordinator", &url]));
    assert_eq!(out.status.code(), Some(exit_code::REQUEST_REJECTED));
    assert!(
        stderr(&out).contains("no test named `no_such_test`"),
        "{}",
        stderr(&out)
    );
}

/// A query piped into a reader that stops early (`testfleet timings | head`) ends quietly, as a
/// Unix tool does: with success and nothing on stderr, not a panic.
#[test]
fn a_query_whose_reader_goes_away_ends_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Enough tests that the answer is bigger than a pipe holds.
    let mut xml = String::from("<testsuite name=\"big\">");
    for i in 0..4000 {
        xml.push_str(&format!(
            "<testcase classname=\"suite.module_{}\" name=\"test_{i:05}\" time=\"0.01\"/>",
            i % 40
        ));
    }
    xml.push_str("</testsuite>");
    let junit = dir.path().join("big.xml");
    std::fs::write(&junit, xml).unwrap();
    let out = run_output(
        testfleet()
            .args(["import", "junit", "--suite", "big", "--data-dir"])
            .arg(&data)
            .arg(&junit),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let mut child = testfleet()
        .args(["timings", "--json", "--top", "100000", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The reader is gone: the rest of the answer has nowhere to go.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stderr(&out), "");
}
