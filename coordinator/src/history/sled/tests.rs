//! The sled store over real data dirs: run ids, spec pieces, locking, migrations, retention.

use super::migrate::{SCHEMA_VERSION, V2_LOG_TREE};
use super::summary_index::new_summary;
use super::*;
use crate::history::records::{LoggedAttempt, TestLogPart, encode_json, encode_test};
use crate::history::verdict;
use testfleet_model::{Outcome, RunSummary, TestRef};

#[test]
fn run_ids_are_dense_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.next_run_id().unwrap(), RunId(1));
        assert_eq!(s.next_run_id().unwrap(), RunId(2));
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(s.next_run_id().unwrap(), RunId(3));
}

fn big_spec(tests: usize) -> RunSpec {
    let mut spec = RunSpec {
        retries: Some(2),
        test_timeout: std::time::Duration::from_secs(30),
        bundle_digest: Some("digest".into()),
        revision: "rev".into(),
        branch: "main".into(),
        ..testfleet_model::test_support::spec(tests)
    };
    for (i, t) in spec.tests.iter_mut().enumerate() {
        t.name = format!("module_{:03}::test_{i:07}", i % 97).into();
        t.set_ignored(i % 11 == 0);
    }
    spec
}

fn running(id: u64) -> RunRecord {
    RunRecord {
        run_id: id,
        suite: "s".into(),
        total_tests: 1,
        revision: String::new(),
        branch: String::new(),
        created_unix_ms: 0,
        state: RunState::Running,
        summary: None,
        quarantine: Default::default(),
        resumes: 0,
    }
}

/// A spec of many pieces reads back whole, next to others, across a reopen; closing its run
/// removes every piece and nothing of the others.
#[test]
fn a_spec_is_stored_in_pieces_and_removed_with_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (big_spec(5_000), big_spec(300));
    {
        let s = SledStore::open(dir.path()).unwrap();
        s.put_spec(RunId(1), &one).unwrap();
        s.put_spec(RunId(2), &two).unwrap();
        s.write(&mut |w| {
            w.put_run(&running(1))?;
            w.put_run(&running(2))
        })
        .unwrap();
        assert!(s.run_specs.len() > 10, "{} pieces", s.run_specs.len());
        s.flush().unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(s.spec(RunId(1)).unwrap().as_ref(), Some(&one));
    assert_eq!(s.spec(RunId(2)).unwrap().as_ref(), Some(&two));
    assert_eq!(s.spec(RunId(3)).unwrap(), None);
    s.close_run(RunId(1), RunState::Finished, &RunSummary::default())
        .unwrap();
    assert_eq!(s.spec(RunId(1)).unwrap(), None);
    assert_eq!(s.spec(RunId(2)).unwrap().as_ref(), Some(&two));
    let left = s.run_specs.iter().keys().count();
    assert_eq!(left, s.run_specs.scan_prefix(2u64.to_be_bytes()).count());
}

/// Stores written before specs were split hold each one whole under the run's id.
#[test]
fn a_spec_stored_whole_by_an_earlier_version_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let spec = big_spec(50);
    let s = SledStore::open(dir.path()).unwrap();
    s.run_specs
        .insert(7u64.to_be_bytes(), encode_json(&spec))
        .unwrap();
    assert_eq!(s.spec(RunId(7)).unwrap(), Some(spec));
    s.close_run(RunId(7), RunState::Finished, &RunSummary::default())
        .unwrap();
    assert_eq!(s.spec(RunId(7)).unwrap(), None);
}

/// The pieces of a submission whose run record was never written (a coordinator stopped in
/// between), and of a run that is no longer running, go when the store opens; a running
/// run's stay.
#[test]
fn specs_of_runs_that_are_not_running_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let spec = big_spec(2_000);
    {
        let s = SledStore::open(dir.path()).unwrap();
        for id in [1, 2, 3] {
            s.put_spec(RunId(id), &spec).unwrap();
        }
        let mut done = running(3);
        done.state = RunState::Finished;
        s.write(&mut |w| {
            w.put_run(&running(2))?;
            w.put_run(&done)
        })
        .unwrap();
        s.flush().unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(s.spec(RunId(1)).unwrap(), None, "never a run");
    assert_eq!(s.spec(RunId(2)).unwrap().as_ref(), Some(&spec), "running");
    assert_eq!(s.spec(RunId(3)).unwrap(), None, "finished");
    let left = s.run_specs.iter().keys().count();
    assert_eq!(left, s.run_specs.scan_prefix(2u64.to_be_bytes()).count());
}

#[test]
fn a_second_open_of_the_same_dir_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledStore::open(dir.path()).unwrap();
    let err = SledStore::open(dir.path())
        .err()
        .expect("the data dir is locked")
        .to_string();
    // The message callers show as it is: the dir, and that it may be in use.
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(
        err.contains("is another testfleet process using this data dir?"),
        "{err}"
    );
}

#[test]
fn a_schema_1_store_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What schema 1 wrote: a version of 1 and passing durations per test.
        let db = sled::open(dir.path().join("history")).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &1u32.to_be_bytes())
            .unwrap();
        let v1 = serde_json::json!({"recent_passing_ms": [30, 10, 20], "runs": 3, "last_outcome": "passed"});
        let mut value = vec![1u8];
        value.extend(serde_json::to_vec(&v1).unwrap());
        db.open_tree("tests")
            .unwrap()
            .insert(b"suite\0bin\0t1", value)
            .unwrap();
        db.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), Some(SCHEMA_VERSION));
    let id = TestId {
        binary_id: "bin".into(),
        name: "t1".into(),
    };
    let (summary, log) = store.test_log("suite", &id).unwrap().unwrap();
    assert_eq!(log.attempts.len(), 3);
    assert_eq!(
        (summary.runs, summary.p50_ms, summary.p95_ms),
        (3, Some(20), Some(30))
    );
    assert_eq!(summary.name, "t1");
    // A plan reads the same from sled as from the summary index, and does not load the index.
    let unknown = TestId {
        binary_id: "bin".into(),
        name: "never seen".into(),
    };
    let ids = [id.clone(), unknown];
    assert_eq!(store.p95s_of("suite", &ids).unwrap(), [Some(30), None]);
    assert!(store.with_loaded_summaries(|_| ()).is_none());
    assert_eq!(store.summaries(Some("suite")).unwrap().len(), 1);
    assert!(store.with_loaded_summaries(|_| ()).is_some());
    assert_eq!(store.p95s_of("suite", &ids).unwrap(), [Some(30), None]);
    // Opening again does not migrate twice.
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store
            .test_log("suite", &id)
            .unwrap()
            .unwrap()
            .1
            .attempts
            .len(),
        3
    );
}

/// Schema 2 kept summaries and logs in two trees. A migration cut short leaves some values
/// joined already and schema 2 in place: the next open must still end with every test whole.
#[test]
fn a_schema_2_store_is_joined_into_one_value_per_test_even_after_a_crash_midway() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<TestId> = (0..3)
        .map(|i| TestId {
            binary_id: "bin".into(),
            name: format!("t{i}"),
        })
        .collect();
    let record = |i: usize| {
        let (mut summary, mut log) = (new_summary("suite", &ids[i]), TestLog::default());
        for run in 0..=i as u64 {
            let a = LoggedAttempt {
                run_id: run + 1,
                attempt: 1,
                revision: "r".into(),
                status: testfleet_model::AttemptStatus::Passed,
                duration_ms: 10 * (run + 1),
                agent_id: "a".into(),
                at_unix_ms: 5,
            };
            verdict::record(&mut summary, &mut log, a);
        }
        (summary, log)
    };
    {
        let db = sled::open(dir.path().join("history")).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &2u32.to_be_bytes())
            .unwrap();
        let (tests, logs) = (
            db.open_tree("tests").unwrap(),
            db.open_tree(V2_LOG_TREE).unwrap(),
        );
        for (i, id) in ids.iter().enumerate() {
            let (summary, log) = record(i);
            let key = test_key("suite", id);
            logs.insert(&key, encode(&log)).unwrap();
            // Test 0 was joined by an earlier, interrupted migration.
            let value = if i == 0 {
                encode_test(&summary, TestLogPart::Decoded(&log))
            } else {
                encode(&summary)
            };
            tests.insert(&key, value).unwrap();
        }
        db.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), Some(SCHEMA_VERSION));
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            store.test_log("suite", id).unwrap(),
            Some(record(i)),
            "{id}"
        );
    }
    assert!(
        !store
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == V2_LOG_TREE.as_bytes()),
        "the old log tree is dropped"
    );
    // The index loads from the joined values too.
    let runs = store.summaries_of("suite", &ids).unwrap();
    assert_eq!(runs[2].as_ref().map(|s| s.attempts), Some(3));
}

#[test]
fn run_records_written_one_per_test_by_earlier_versions_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let old = TestRecord {
        index: 3,
        binary_id: "b".into(),
        name: "t".into(),
        attempts: vec![],
        outcome: Some(Outcome::Passed),
        quarantined: false,
    };
    let mut key = [0u8; UNGROUPED_KEY_LEN];
    key[..8].copy_from_slice(&7u64.to_be_bytes());
    key[8..].copy_from_slice(&3u32.to_be_bytes());
    store.run_tests.insert(key, encode_json(&old)).unwrap();
    let new = TestRef {
        index: 1,
        binary_id: "b".into(),
        name: "u".into(),
    };
    store
        .write(&mut |w| w.record_skipped(RunId(7), std::slice::from_ref(&new), &[]))
        .unwrap();
    let records = store.run_tests(RunId(7)).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0].index, records[0].outcome),
        (1, Some(Outcome::Skipped))
    );
    assert_eq!(records[1], old);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("history")).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("schema version 99 is newer"), "{err}");
    // Not a data dir in use: the error does not say so.
    assert!(!err.contains("another testfleet process"), "{err}");
}

#[test]
fn old_runs_are_pruned_beyond_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap().with_retention(2);
    let test = TestRef {
        index: 0,
        binary_id: "b".into(),
        name: "t".into(),
    };
    for _ in 0..4 {
        let id = store.next_run_id().unwrap();
        let run = running(id.0);
        store
            .write(&mut |w| {
                w.put_run(&run)?;
                w.record_skipped(id, std::slice::from_ref(&test), &[])?;
                w.record_output(id, 7, b"printed")?;
                w.finish_run(id, RunState::Finished, &RunSummary::default())
            })
            .unwrap();
    }
    let kept: Vec<u64> = store
        .runs(None, 10)
        .unwrap()
        .iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(kept, [4, 3]);
    let ids = |before, limit| -> Vec<u64> {
        let page = store.runs(Some(RunId(before)), limit).unwrap();
        page.iter().map(|r| r.run_id).collect()
    };
    assert_eq!(ids(4, 10), [3], "the page before run 4");
    assert_eq!(
        ids(5, 1),
        [4],
        "a page of one, from a run that does not exist"
    );
    assert!(ids(3, 10).is_empty(), "nothing kept before run 3");
    assert!(store.run_tests(RunId(1)).unwrap().is_empty());
    assert_eq!(store.run_tests(RunId(4)).unwrap().len(), 1);
    // The results' outputs go with their runs.
    assert_eq!(store.outputs(RunId(1), &[7]).unwrap(), [None]);
    assert_eq!(
        store.outputs(RunId(4), &[7, 8]).unwrap(),
        [Some(b"printed".to_vec()), None]
    );
    // Beside sled, one file per kept run.
    let files = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("history-outputs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        files(dir.path()),
        [format!("{:020}.out", 3), format!("{:020}.out", 4)]
    );
    // An output stored in pieces in sled, as stores before outputs moved beside it hold them,
    // still reads.
    let legacy = [
        &super::keys::output_key(RunId(3), 9)[..],
        &0u32.to_be_bytes(),
    ]
    .concat();
    store.outputs.insert(legacy, &b"old "[..]).unwrap();
    let legacy = [
        &super::keys::output_key(RunId(3), 9)[..],
        &1u32.to_be_bytes(),
    ]
    .concat();
    store.outputs.insert(legacy, &b"pieces"[..]).unwrap();
    assert_eq!(
        store.outputs(RunId(3), &[9]).unwrap(),
        [Some(b"old pieces".to_vec())]
    );
    store.flush().unwrap();
    drop(store);
    // A file whose run history no longer has (its pruning cut short) goes when the store opens.
    std::fs::write(
        dir.path()
            .join("history-outputs")
            .join(format!("{:020}.out", 1)),
        b"left",
    )
    .unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        files(dir.path()),
        [format!("{:020}.out", 3), format!("{:020}.out", 4)]
    );
    assert_eq!(
        store.outputs(RunId(4), &[7]).unwrap(),
        [Some(b"printed".to_vec())]
    );
}

fn attempt_of(run: u64, failed: bool) -> LoggedAttempt {
    LoggedAttempt {
        run_id: run,
        attempt: 1,
        revision: "r".into(),
        status: if failed {
            testfleet_model::AttemptStatus::Failed
        } else {
            testfleet_model::AttemptStatus::Passed
        },
        duration_ms: 10 * run,
        agent_id: "a".into(),
        at_unix_ms: run,
    }
}

/// Since schema 4 a test's value leaves out the names its key holds: every read names it, and a
/// value written by schema 3 (names included) still reads, and loses them once written again.
#[test]
fn summaries_are_stored_without_names_and_read_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let id = |name: &str| TestId {
        binary_id: "bin".into(),
        name: name.into(),
    };
    let (new, old) = (id("new"), id("old"));
    // Written by schema 3: its names in the summary.
    let (mut summary, mut log) = (new_summary("suite", &old), TestLog::default());
    verdict::record(&mut summary, &mut log, attempt_of(1, false));
    let old_value = encode_test(&summary, TestLogPart::Decoded(&log));
    store
        .tests
        .insert(test_key("suite", &old), old_value.clone())
        .unwrap();
    store
        .write(&mut |tx| {
            tx.record_attempts("suite", &[(new.clone(), attempt_of(1, false))])?;
            tx.record_settled("suite", &new, Outcome::Passed)
        })
        .unwrap();
    let stored = store.tests.get(test_key("suite", &new)).unwrap().unwrap();
    let (raw, _) = crate::history::records::decode_test_summary(b"k", &stored).unwrap();
    assert_eq!(
        (
            raw.suite.as_str(),
            raw.binary_id.as_str(),
            raw.name.as_str()
        ),
        ("", "", "")
    );
    let named = |s: &TestSummary, t: &TestId| {
        assert_eq!(
            (s.suite.as_str(), &s.binary_id, &s.name),
            ("suite", &t.binary_id, &t.name)
        );
    };
    for t in [&new, &old] {
        let (s, log) = store.test_log("suite", t).unwrap().unwrap();
        named(&s, t);
        assert_eq!(log.attempts.len(), 1);
        named(
            &store
                .summaries_of("suite", std::slice::from_ref(t))
                .unwrap()[0]
                .clone()
                .unwrap(),
            t,
        );
    }
    assert_eq!(
        store.p95s_of("suite", &[new.clone(), old.clone()]).unwrap(),
        [Some(10), Some(10)]
    );
    // The old value, written again, is smaller by its names and reads the same.
    store
        .write(&mut |tx| tx.record_attempts("suite", &[(old.clone(), attempt_of(2, true))]))
        .unwrap();
    let rewritten = store.tests.get(test_key("suite", &old)).unwrap().unwrap();
    let (raw, _) = crate::history::records::decode_test_summary(b"k", &rewritten).unwrap();
    assert!(raw.name.is_empty() && raw.suite.is_empty());
    let (s, log) = store.test_log("suite", &old).unwrap().unwrap();
    named(&s, &old);
    assert_eq!((s.attempts, s.failures, log.attempts.len()), (2, 1, 2));
    // The index names them too.
    let mut seen = Vec::new();
    store
        .for_each_summary(Some("suite"), &mut |s| seen.push(s.name.clone()))
        .unwrap();
    assert_eq!(seen, ["new", "old"]);
}

/// A query may load the summary index while a group is being written: the tests the group wrote
/// without keeping their summaries are read back into it, so it never holds an older one.
#[test]
fn tests_written_while_the_index_was_not_loaded_are_read_back_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let t = TestId {
        binary_id: "bin".into(),
        name: "t".into(),
    };
    store
        .write(&mut |tx| tx.record_settled("suite", &t, Outcome::Passed))
        .unwrap();
    // Loaded now, from the value with one run...
    store
        .for_each_summary(None, &mut |s| assert_eq!(s.runs, 1))
        .unwrap();
    // ... while the group (which found it not loaded) wrote a second run.
    let key = test_key("suite", &t);
    let mut summary = TestSummary {
        runs: 2,
        ..TestSummary::default()
    };
    summary.clear_names();
    store
        .tests
        .insert(
            &key,
            encode_test(&summary, TestLogPart::Decoded(&TestLog::default())),
        )
        .unwrap();
    store.summaries_written(vec![(key, None)]).unwrap();
    let mut runs = Vec::new();
    store
        .for_each_summary(None, &mut |s| runs.push((s.name.clone(), s.runs)))
        .unwrap();
    assert_eq!(runs, [("t".to_string(), 2)]);
}

/// A suite with nothing in quarantine answers without a lookup per test; one with a test in
/// quarantine still names it (and another suite whose name starts the same is not confused).
#[test]
fn quarantine_is_read_per_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let ids: Vec<TestId> = (0..3)
        .map(|i| TestId {
            binary_id: "bin".into(),
            name: format!("t{i}"),
        })
        .collect();
    let entry = QuarantineEntry {
        since_ms: 1,
        by: "manual".into(),
        reason: "r".into(),
        clean_streak: 0,
    };
    store.set_quarantine("ab", &ids[1], Some(&entry)).unwrap();
    assert_eq!(store.quarantined("a", &ids).unwrap(), [false, false, false]);
    assert_eq!(store.quarantined("ab", &ids).unwrap(), [false, true, false]);
    store.set_quarantine("a", &ids[2], Some(&entry)).unwrap();
    assert_eq!(store.quarantined("a", &ids).unwrap(), [false, false, true]);
}
