//! `testfleet run --local 2` on the fixture suite: outcomes, JUnit, timeouts, crashes, output caps,
//! and history in sled.

use std::collections::BTreeMap;

use testfleet_coordinator::{HistoryStore, SledStore};
use testfleet_model::{AttemptStatus, Outcome, RunId, exit_code};

use crate::fixture;
use crate::support::*;

#[test]
fn local_run_matches_the_fixture_model_and_reaches_sled() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let data = dir.path().join("data");
    let out = RunLine::local(2)
        .retries(1)
        .timeout(5, 1)
        .arg("--output-cap")
        .arg("8192")
        .json()
        .manifest(&fixture::manifest())
        .junit(&junit)
        .data_dir(&data)
        .output();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(exit_code::TESTS_FAILED), "{log}");
    let events = events(&out);
    assert_eq!(final_outcomes(&events), fixture::expected(true), "{log}");

    // Both local agents ran tests.
    let s = summary(&events);
    assert_eq!(s.attempts_per_agent.len(), 2, "{:?}", s.attempts_per_agent);
    assert_eq!(
        (s.passed, s.failed, s.flaky, s.timed_out, s.skipped),
        (9, 2, 1, 1, 1)
    );

    // The hanging test is killed at its timeout, with its output so far.
    let hangs = attempts(&events, "tests::hangs");
    assert_eq!(hangs.len(), 2);
    for (_, _, r) in &hangs {
        assert_eq!(r.status, AttemptStatus::TimedOut);
        assert!(r.message.contains("timed out after 5.0 s"), "{}", r.message);
        assert!(String::from_utf8_lossy(&r.output).contains("about to hang"));
    }
    // The crashing test fails with its signal.
    let (_, _, crash) = &attempts(&events, "tests::crashes")[0];
    assert_eq!(crash.signal, Some(6));
    assert!(crash.message.contains("SIGABRT"), "{}", crash.message);
    assert!(String::from_utf8_lossy(&crash.output).contains("about to abort"));
    // The noisy test's output is capped: head and tail kept, the rest counted.
    let (_, _, noisy) = &attempts(&events, "tests::noisy")[0];
    assert!(
        noisy.output_omitted_bytes > 1_000_000,
        "{}",
        noisy.output_omitted_bytes
    );
    assert!(noisy.output.len() < 8192 + 100);
    let text = String::from_utf8_lossy(&noisy.output);
    assert!(
        text.contains("noisy line      0") && text.contains("noisy line  39999"),
        "{text}"
    );
    // The flaky test saw attempt 1 fail and attempt 2 pass.
    let flaky: Vec<_> = attempts(&events, "tests::flaky_first_attempt")
        .into_iter()
        .map(|(a, _, r)| (a, r.status))
        .collect();
    assert_eq!(
        flaky,
        vec![(1, AttemptStatus::Failed), (2, AttemptStatus::Passed)]
    );

    check_junit(&std::fs::read_to_string(&junit).unwrap());

    // Every result reached sled: reopen the data dir and read each test back.
    let run_id: RunId = events[0].run_id;
    let store = SledStore::open(&data).unwrap();
    let records = store.run_tests(run_id).unwrap();
    let stored: BTreeMap<_, _> = records
        .iter()
        .map(|r| ((r.binary_id.clone(), r.name.clone()), r.outcome.unwrap()))
        .collect();
    assert_eq!(stored, fixture::expected(true));
    let hang_record = records.iter().find(|r| r.name == "tests::hangs").unwrap();
    assert_eq!(hang_record.attempts.len(), 2);
    let run = store.run(run_id).unwrap().unwrap();
    assert_eq!(run.summary.unwrap(), s);
}

fn check_junit(xml: &str) {
    let doc = roxmltree::Document::parse(xml).expect("JUnit parses as XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("14"));
    assert_eq!(root.attribute("errors"), Some("0"));
    assert_eq!(
        root.attribute("failures"),
        Some("3"),
        "fails, crashes, hangs"
    );
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 14);
    let skipped = cases
        .iter()
        .filter(|c| c.children().any(|x| x.has_tag_name("skipped")))
        .count();
    assert_eq!(skipped, 1, "the ignored test");
    let case = |name: &str| {
        *cases
            .iter()
            .find(|c| c.attribute("name") == Some(name))
            .unwrap()
    };
    let children = |name: &str| -> Vec<String> {
        case(name)
            .children()
            .filter(|c| c.is_element())
            .map(|c| c.tag_name().name().to_owned())
            .collect()
    };
    assert_eq!(children("tests::flaky_first_attempt"), ["flakyFailure"]);
    assert_eq!(children("tests::fails"), ["failure", "rerunFailure"]);
    assert_eq!(children("tests::ignored"), ["skipped"]);
    assert_eq!(children("tests::adds"), Vec::<String>::new());
    let timeout = case("tests::hangs")
        .children()
        .find(|c| c.has_tag_name("failure"))
        .unwrap();
    assert_eq!(timeout.attribute("type"), Some("timeout"));
}

#[test]
fn without_retries_a_flaky_test_fails_and_history_accumulates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |filter: &str| {
        RunLine::local(1)
            .json()
            .filters(&[filter])
            .manifest(&fixture::manifest())
            .data_dir(&data)
            .output()
    };
    let first = run("flaky_first_attempt");
    assert_eq!(
        first.status.code(),
        Some(exit_code::TESTS_FAILED),
        "{}",
        stderr(&first)
    );
    let outcomes = final_outcomes(&events(&first));
    let expected = fixture::expected(false);
    assert_eq!(outcomes.len(), 1);
    for (k, o) in &outcomes {
        assert_eq!(expected[k], *o);
        assert_eq!(*o, Outcome::Failed);
    }
    let second = run("adds");
    assert_eq!(
        second.status.code(),
        Some(exit_code::SUCCESS),
        "{}",
        stderr(&second)
    );
    let store = SledStore::open(&data).unwrap();
    let runs = store.runs(None, 10).unwrap();
    assert_eq!(runs.len(), 2, "both runs are in the persistent data dir");
    assert!(runs[0].run_id > runs[1].run_id);
}

/// Running `tests::hangs` processes whose environment holds `marker`.
fn test_processes(marker: &str) -> usize {
    let has = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            has(&cmdline, b"tests::hangs") && has(&env, marker.as_bytes())
        })
        .count()
}

#[test]
fn ctrl_c_cancels_the_run_and_its_tests_stop() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("FIXTURE_CTRL_C_MARK={}", std::process::id());
    let cmd = RunLine::local(1)
        .env("FIXTURE_CTRL_C_MARK", std::process::id().to_string())
        .arg("--timeout")
        .arg("600")
        .filters(&["hangs"])
        .data_dir(&dir.path().join("data"))
        .manifest(&fixture::manifest())
        .command();
    let mut run = Proc::spawn(cmd, dir.path().join("run.log"));
    wait_until("the hanging test's start", || test_processes(&marker) > 0);
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(run.child.id() as i32, libc::SIGINT);
    }
    wait_until("the run's end", || run.child.try_wait().unwrap().is_some());
    assert_eq!(
        run.child.wait().unwrap().code(),
        Some(exit_code::RUN_INCOMPLETE),
        "{}",
        run.log()
    );
    assert!(run.log().contains("cancelling the run"), "{}", run.log());
    assert_eq!(test_processes(&marker), 0, "the cancelled test was stopped");
}

#[test]
fn batch_mode_keeps_every_tests_own_outcome_output_and_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let out = RunLine::local(1)
        .arg("--slots")
        .arg("2")
        .retries(1)
        .timeout(5, 1)
        .arg("--tests-per-process")
        .arg("20")
        .arg("--output-cap")
        .arg("8192")
        .json()
        .manifest(&fixture::manifest())
        .data_dir(&dir.path().join("data"))
        .output();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(exit_code::TESTS_FAILED), "{log}");
    let events = events(&out);
    // The same outcomes as with a process per test: the crash and the hang take down their
    // process, and the tests after them run again in a new one.
    assert_eq!(final_outcomes(&events), fixture::expected(true), "{log}");
    let (_, _, crash) = &attempts(&events, "tests::crashes")[0];
    assert_eq!(crash.signal, Some(6), "{}", crash.message);
    assert!(crash.message.contains("SIGABRT"), "{}", crash.message);
    assert!(String::from_utf8_lossy(&crash.output).contains("about to abort"));
    for (_, _, r) in attempts(&events, "tests::hangs") {
        assert_eq!(r.status, AttemptStatus::TimedOut);
        assert!(r.message.contains("timed out after 5.0 s"), "{}", r.message);
        assert!(String::from_utf8_lossy(&r.output).contains("about to hang"));
    }
    // Each test's output is its own, capped on its own.
    let (_, _, noisy) = &attempts(&events, "tests::noisy")[0];
    let text = String::from_utf8_lossy(&noisy.output);
    assert!(
        text.contains("noisy line      0") && text.contains("noisy line  39999"),
        "{text}"
    );
    assert!(!text.contains("about to"), "{text}");
    let (_, _, fails) = &attempts(&events, "tests::fails")[0];
    assert_eq!(fails.status, AttemptStatus::Failed);
    assert!(!String::from_utf8_lossy(&fails.output).contains("noisy line"));
}
