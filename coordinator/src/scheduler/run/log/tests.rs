//! The event log gives back every event as it was pushed (outputs aside), from any position,
//! whether its chunks are in memory or on disk, and keeps them in memory when the disk fails it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use testfleet_model::test_support::spec;
use testfleet_model::{
    AttemptResult, AttemptStatus, CaseName, EventKind, NoticeLevel, Outcome, RunEvent, RunId,
    RunSpec, RunState, RunSummary, TestFinished, TestRef,
};

use super::{CHUNK_BYTES, ChunkData, EventLog, LogConfig};

const RUN: RunId = RunId(7);

fn test_ref(spec: &RunSpec, index: u32) -> TestRef {
    TestRef {
        index,
        binary_id: spec.binaries[0].binary_id.clone(),
        name: spec.tests[index as usize].name.clone(),
    }
}

/// The `n`th event of a run of `spec`: every kind, outputs on some results, messages and cases on
/// others.
fn event(spec: &RunSpec, seq: u64, n: u64) -> RunEvent {
    let index = (n % spec.tests.len() as u64) as u32;
    let kind = match n % 7 {
        0 => EventKind::TestStarted {
            test: test_ref(spec, index),
            attempt: 1,
            agent_id: format!("agent-{}", n % 3),
        },
        1 | 2 => EventKind::TestFinished(TestFinished {
            test: test_ref(spec, index),
            attempt: 1 + (n % 2) as u32,
            agent_id: "agent-1".into(),
            result: AttemptResult {
                status: if n.is_multiple_of(2) {
                    AttemptStatus::Failed
                } else {
                    AttemptStatus::Passed
                },
                duration: Duration::from_nanos(1_234_567 * n),
                exit_code: Some(101),
                signal: n.is_multiple_of(3).then_some(9),
                output: if n.is_multiple_of(2) {
                    b"boom\n".to_vec()
                } else {
                    vec![]
                },
                output_omitted_bytes: n,
                message: if n.is_multiple_of(2) {
                    format!("failed {n}")
                } else {
                    String::new()
                },
                case: (n % 4 == 1).then(|| CaseName {
                    classname: "tests.test_x".into(),
                    name: format!("test_{n}"),
                }),
            },
            final_outcome: (n % 2 == 1).then_some(Outcome::Passed),
            lease_id: Some(n / 7),
            quarantined: n.is_multiple_of(5),
        }),
        3 => EventKind::LeaseFinished {
            lease_id: n,
            agent_id: "agent-2".into(),
            tests: 3,
            failed: 1,
        },
        4 => EventKind::Notice {
            level: NoticeLevel::Warning,
            message: format!("notice {n}"),
        },
        5 => EventKind::RunStarted {
            suite: "s".into(),
            total_tests: spec.tests.len() as u32,
            skipped: vec![test_ref(spec, 0)],
            quarantined: vec![],
        },
        _ => EventKind::RunFinished {
            summary: RunSummary {
                passed: n as u32,
                ..RunSummary::default()
            },
            state: RunState::Finished,
        },
    };
    RunEvent {
        seq,
        run_id: RUN,
        at_unix_ms: 1_700_000_000_000 + n,
        kind,
    }
}

/// Pushes `count` events from `first_seq`; returns them as the log should give them back.
fn fill(log: &mut EventLog, spec: &RunSpec, first_seq: u64, count: u64) -> Vec<RunEvent> {
    (0..count)
        .map(|n| {
            let e = event(spec, first_seq + n, n);
            log.push(&e);
            let mut back = e;
            if let EventKind::TestFinished(f) = &mut back.kind {
                f.result.output.clear();
            }
            back
        })
        .collect()
}

#[test]
fn every_kind_comes_back_from_any_position() {
    let spec = Arc::new(spec(50));
    let base = 1 << 40;
    let mut log = EventLog::new(RUN, base, Arc::new(LogConfig::default()));
    let pushed = fill(&mut log, &spec, base, 40_000);
    assert!(log.sealed.len() > 1, "the events span several chunks");
    for from in [
        0,
        base,
        base + 1,
        base + 12_345,
        base + 39_999,
        base + 40_000,
    ] {
        let back = log.snapshot(from, spec.clone()).read().unwrap();
        let want: Vec<&RunEvent> = pushed.iter().filter(|e| e.seq >= from).collect();
        assert_eq!(back.events.iter().collect::<Vec<_>>(), want, "from {from}");
        let with_output: Vec<u64> = want
            .iter()
            .filter(|e| {
                matches!(&e.kind, EventKind::TestFinished(f) if f.result.status == AttemptStatus::Failed)
            })
            .map(|e| e.seq)
            .collect();
        assert_eq!(back.outputs_on_disk, with_output, "from {from}");
    }
}

/// Waits, with a generous guard, until the log's memory is down to `most` bytes (the writes to
/// disk run on other threads).
fn wait_for_memory(log: &EventLog, most: usize) {
    let guard = Instant::now() + Duration::from_secs(60);
    while log.memory_bytes() > most {
        assert!(
            Instant::now() < guard,
            "the log's chunks never reached the disk"
        );
        std::thread::yield_now();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_share_the_log_goes_to_disk_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Arc::new(spec(50));
    let config = Arc::new(LogConfig {
        memory: CHUNK_BYTES,
        dir: Some(dir.path().join("logs")),
    });
    let mut log = EventLog::new(RUN, 0, config);
    let pushed = fill(&mut log, &spec, 0, 100_000);
    let sealed = log.sealed.len();
    assert!(sealed >= 4, "{sealed} chunks");
    let whole = log.whole.len() * std::mem::size_of::<RunEvent>();
    // At most the share, the open chunk and the whole events stay.
    wait_for_memory(&log, 2 * CHUNK_BYTES + log.open.capacity() + whole);
    let file = dir.path().join("logs").join("run-7.events");
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
    let snapshot = log.snapshot(10, spec.clone());
    let back = snapshot.read().unwrap();
    assert_eq!(back.events, pushed[10..]);
    // A reader's snapshot keeps the file until it is done; the run's log going removes it.
    let reader = log.snapshot(0, spec.clone());
    drop(log);
    assert_eq!(reader.read().unwrap().events, pushed);
    assert!(!file.exists(), "the spill file outlived its log");
}

/// A watcher's snapshot taken before the log had a file on disk (a watcher that falls behind
/// and catches up, at any time) still reads its chunks once they have gone to the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_before_the_log_went_to_disk_reads_it_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Arc::new(spec(50));
    let config = Arc::new(LogConfig {
        memory: 2 * CHUNK_BYTES,
        dir: Some(dir.path().join("logs")),
    });
    let mut log = EventLog::new(RUN, 0, config);
    let mut pushed = Vec::new();
    while log.sealed.is_empty() {
        let next = pushed.len() as u64;
        pushed.extend(fill(&mut log, &spec, next, 100));
    }
    assert!(log.spill.is_none(), "sealed, not on disk yet");
    let early = log.snapshot(0, spec.clone());
    let next = pushed.len() as u64;
    let more = fill(&mut log, &spec, next, 100_000);
    let whole = log.whole.len() * std::mem::size_of::<RunEvent>();
    wait_for_memory(&log, 2 * CHUNK_BYTES + log.open.capacity() + whole);
    let on_disk = early
        .chunks
        .iter()
        .filter(|(_, c)| matches!(&*c.lock().unwrap(), ChunkData::Disk { .. }))
        .count();
    assert!(on_disk > 0, "the early snapshot's chunks went to disk");
    let back = early.read().unwrap();
    let open_then = back.events.len();
    assert_eq!(back.events, pushed[..open_then]);
    pushed.extend(more);
    assert_eq!(log.snapshot(0, spec.clone()).read().unwrap().events, pushed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_reach_the_disk_stays_whole_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let spec = Arc::new(spec(5));
    let config = Arc::new(LogConfig {
        memory: 0,
        dir: Some(not_a_dir.join("logs")),
    });
    let mut log = EventLog::new(RUN, 0, config);
    let pushed = fill(&mut log, &spec, 0, 30_000);
    assert!(log.sealed.len() > 1);
    assert_eq!(log.snapshot(0, spec.clone()).read().unwrap().events, pushed);
    assert!(
        log.memory_bytes() > CHUNK_BYTES,
        "the events are still in memory"
    );
}
