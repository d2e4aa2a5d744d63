//! Grouped writes to the sled store. A [`WriteTx`] collects what a group of updates does to each
//! test and to each run, and writes each record back once when the group commits: a burst of
//! results for the same tests (a result, then its statistics, then its settled outcome) costs one
//! read and one write per record instead of three. Tests are independent of one another, so their
//! records are brought up to date on several threads at once, each owning a shard of the tests.
//!
//! The writes are plain inserts, not `sled::Batch`es: applying a batch takes a lock that is global
//! to the process, so the shards' batches ran one at a time and blocked every read meanwhile.
//! Nothing needed a group to be atomic (its run records and its tests' records were separate
//! batches already); each test's record is still one value, replaced whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use foldhash::fast::RandomState;

use testfleet_model::{Outcome, RunId, RunState, RunSummary, TestFinished, TestId, TestRef};

use super::super::records::{
    AttemptRecordRef, AttemptView, LogView, LoggedAttempt, RunEntryRef, RunRecord, TestLogPart,
    TestSummary, decode_test_summary, encode, encode_test, view_test_log,
};
use super::super::{HistoryError, HistoryWrites, verdict};
use super::keys::{run_group_key, test_key};
use super::output_files::Pointer;
use super::run_chunks::RunChunks;
use super::summary_index::{Written, named_summary};
use super::{OUTPUT_EXCERPT_BYTES, SledStore};

/// Below this many tests in a group, one thread does them all: a thread costs more than it saves.
const PARALLEL_MIN_TESTS: usize = 512;
/// Shards at most; never more than cores: twice as many shards as cores ingested less, both
/// under sled's batch lock and with plain inserts (docs/benchmarks.md, ingest).
const SHARDS_MAX: usize = 8;

/// What a group does to one test, in order.
enum TestOp {
    Attempt(LoggedAttempt),
    Excluded,
    Settled(Outcome),
}

/// A test's changes in a group, under its key (which names its suite and test: a test history
/// has not seen gets its names from there, so a group holds no copy of them).
struct TestChanges {
    ops: Vec<TestOp>,
}

pub(super) struct WriteTx<'a> {
    store: &'a SledStore,
    tests: HashMap<Vec<u8>, TestChanges, RandomState>,
    /// What this group records for each run, already encoded.
    run_entries: BTreeMap<u64, RunChunks>,
    /// Where results' outputs went in their runs' files, by run and event seq: stored in sled
    /// once the files are synced.
    outputs: Vec<(RunId, u64, Pointer)>,
}

impl SledStore {
    /// A fresh id for a group of run records, increasing across restarts.
    fn next_group_id(&self) -> Result<u64, HistoryError> {
        Ok(self.db.generate_id()?)
    }
}

impl<'a> WriteTx<'a> {
    pub(super) fn new(store: &'a SledStore) -> Self {
        WriteTx {
            store,
            tests: HashMap::default(),
            run_entries: BTreeMap::new(),
            outputs: Vec::new(),
        }
    }

    fn change(&mut self, suite: &str, id: &TestId, op: TestOp) {
        self.tests
            .entry(test_key(suite, id))
            .or_insert_with(|| TestChanges { ops: Vec::new() })
            .ops
            .push(op);
    }

    /// Writes what the group changed: the run records and results' outputs on this thread, the
    /// tests' summaries and logs on one thread per shard meanwhile (this one and the store's
    /// shard threads).
    pub(super) fn commit(&mut self) -> Result<(), HistoryError> {
        let store = self.store;
        // Summaries are kept for the index only if a query has loaded it (one that loads it
        // meanwhile has the rest read back: see `summaries_written`).
        let named = store.with_loaded_summaries(|_| ()).is_some();
        let mut shards = shard(std::mem::take(&mut self.tests)).into_iter();
        let first = shards.next();
        let extra = shards.len();
        let others: Vec<_> = shards
            .map(|s| {
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                let store = store.clone();
                let job = move || {
                    let _ = tx.send(write_tests(&store, s, named));
                };
                self.store.shard_threads.run(extra, Box::new(job));
                rx
            })
            .collect();
        let mine = self
            .write_runs_and_outputs()
            .and_then(|()| first.map_or(Ok(Vec::new()), |s| write_tests(store, s, named)));
        // The other shards are waited for whatever this thread met: nothing of the group is
        // still being written once this returns.
        let theirs: Vec<_> = others
            .into_iter()
            .map(|rx| rx.recv().expect("a shard writer does not panic"))
            .collect();
        let mut written = mine?;
        for w in theirs {
            written.extend(w?);
        }
        store.summaries_written(written)
    }

    fn write_runs_and_outputs(&mut self) -> Result<(), HistoryError> {
        let store = self.store;
        for (run, entries) in std::mem::take(&mut self.run_entries) {
            for value in entries.into_values() {
                // Increasing across restarts, so a run's groups read back in the order written.
                let group = store.next_group_id()?;
                store
                    .run_tests
                    .insert(run_group_key(RunId(run), group), value)?;
            }
        }
        // On disk before sled names them.
        let outputs = std::mem::take(&mut self.outputs);
        let runs: BTreeSet<RunId> = outputs.iter().map(|(run, _, _)| *run).collect();
        store.output_files.sync(runs)?;
        for (run, seq, at) in outputs {
            store
                .outputs
                .insert(super::keys::output_key(run, seq), &at.encode())?;
        }
        Ok(())
    }
}

/// Splits the tests by key hash into as many shards as there are cores (one for a small group).
fn shard(tests: HashMap<Vec<u8>, TestChanges, RandomState>) -> Vec<Vec<(Vec<u8>, TestChanges)>> {
    if tests.is_empty() {
        return Vec::new();
    }
    let n = if tests.len() < PARALLEL_MIN_TESTS {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, SHARDS_MAX)
    };
    let hasher = RandomState::default();
    let mut shards: Vec<Vec<_>> = (0..n).map(|_| Vec::new()).collect();
    for (key, changes) in tests {
        let i = (hasher.hash_one(&key) % n as u64) as usize;
        shards[i].push((key, changes));
    }
    shards
}

/// Brings one shard's tests up to date and writes each one's summary and log (one value, one
/// read and one write per test), in key order: neighbours share tree nodes, so the reads find
/// them cached and the inserts split far fewer (the shard's map order is random). Returns the
/// keys written, with their summaries (named after their keys) if `named`: for the in-memory
/// index, if a query loaded it.
fn write_tests(
    store: &SledStore,
    mut tests: Vec<(Vec<u8>, TestChanges)>,
    named: bool,
) -> Result<Written, HistoryError> {
    tests.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut written = Vec::with_capacity(tests.len());
    for (key, changes) in tests {
        let stored = store.tests.get(&key)?;
        let (mut summary, encoded_log) = match &stored {
            Some(value) => decode_test_summary(&key, value)?,
            None => (TestSummary::default(), &[][..]),
        };
        // The key names the test: values written since schema 4 do not repeat its names, and
        // older ones lose them as they are written again.
        summary.clear_names();
        // The log is read only if an attempt joins it (borrowing its strings from the value read
        // and from the attempts); otherwise its bytes go back as read.
        let mut log = stored.is_none().then(LogView::default);
        for op in &changes.ops {
            match op {
                TestOp::Attempt(a) => {
                    if log.is_none() {
                        log = Some(view_test_log(&key, encoded_log)?);
                    }
                    let log = log.as_mut().expect("read above");
                    verdict::record_view(&mut summary, log, AttemptView::of(a));
                }
                TestOp::Excluded => summary.excluded += 1,
                TestOp::Settled(outcome) => {
                    summary.runs += 1;
                    summary.last_outcome = Some(*outcome);
                }
            }
        }
        let log = match &log {
            Some(log) => TestLogPart::Viewed(log),
            None => TestLogPart::Encoded(encoded_log),
        };
        store
            .tests
            .insert(key.as_slice(), encode_test(&summary, log))?;
        let summary = if named {
            Some(named_summary(&key, summary)?)
        } else {
            None
        };
        written.push((key, summary));
    }
    Ok(written)
}

impl HistoryWrites for WriteTx<'_> {
    fn put_run(&mut self, rec: &RunRecord) -> Result<(), HistoryError> {
        self.store
            .runs
            .insert(rec.run_id.to_be_bytes(), encode(rec))?;
        Ok(())
    }

    fn record_skipped(
        &mut self,
        run: RunId,
        tests: &[TestRef],
        quarantined: &[u32],
    ) -> Result<(), HistoryError> {
        let entries = self.run_entries.entry(run.0).or_default();
        for t in tests {
            entries.push(&RunEntryRef::Skipped {
                index: t.index,
                binary_id: &t.binary_id,
                name: &t.name,
                quarantined: quarantined.contains(&t.index),
            });
        }
        Ok(())
    }

    fn record_result(&mut self, run: RunId, finished: &TestFinished) -> Result<(), HistoryError> {
        let result = &finished.result;
        let excerpt_len = result.output.len().min(OUTPUT_EXCERPT_BYTES);
        let excerpt = String::from_utf8_lossy(&result.output[..excerpt_len]);
        let attempt = AttemptRecordRef {
            attempt: finished.attempt,
            agent_id: &finished.agent_id,
            status: result.status,
            duration_ms: result.duration.as_millis() as u64,
            exit_code: result.exit_code,
            signal: result.signal,
            message: &result.message,
            output_excerpt: &excerpt,
        };
        self.run_entries
            .entry(run.0)
            .or_default()
            .push(&RunEntryRef::Attempt {
                index: finished.test.index,
                binary_id: &finished.test.binary_id,
                name: &finished.test.name,
                quarantined: finished.quarantined,
                attempt,
                outcome: finished.final_outcome,
            });
        Ok(())
    }

    fn record_output(&mut self, run: RunId, seq: u64, output: &[u8]) -> Result<(), HistoryError> {
        let at = self.store.output_files.append(run, output)?;
        self.outputs.push((run, seq, at));
        Ok(())
    }

    fn record_attempts(
        &mut self,
        suite: &str,
        attempts: &[(TestId, LoggedAttempt)],
    ) -> Result<(), HistoryError> {
        for (id, a) in attempts {
            self.change(suite, id, TestOp::Attempt(a.clone()));
        }
        Ok(())
    }

    fn record_excluded(&mut self, suite: &str, tests: &[TestId]) -> Result<(), HistoryError> {
        for id in tests {
            self.change(suite, id, TestOp::Excluded);
        }
        Ok(())
    }

    fn record_settled(
        &mut self,
        suite: &str,
        id: &TestId,
        outcome: Outcome,
    ) -> Result<(), HistoryError> {
        self.change(suite, id, TestOp::Settled(outcome));
        Ok(())
    }

    fn finish_run(
        &mut self,
        id: RunId,
        state: RunState,
        summary: &RunSummary,
    ) -> Result<(), HistoryError> {
        // Closing reads the run's records back (quarantine) and prunes: they must be in sled.
        self.commit()?;
        self.store.close_run(id, state, summary)
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::split_test_key;
    use super::super::run_chunks::RUN_ENTRIES_PER_VALUE;
    use super::*;
    use crate::history::HistoryStore;
    use testfleet_model::{AttemptResult, AttemptStatus};

    fn id(i: usize) -> TestId {
        TestId {
            binary_id: "bin".into(),
            name: format!("t{i:05}"),
        }
    }

    fn attempt(run: u64, failed: bool, ms: u64) -> LoggedAttempt {
        LoggedAttempt {
            run_id: run,
            attempt: 1,
            revision: "rev".into(),
            status: if failed {
                AttemptStatus::Failed
            } else {
                AttemptStatus::Passed
            },
            duration_ms: ms,
            agent_id: "a".into(),
            at_unix_ms: 1_000 + run,
        }
    }

    #[test]
    fn shards_hold_every_test_once_with_its_changes_in_order() {
        let mut tests = HashMap::default();
        for i in 0..PARALLEL_MIN_TESTS * 3 {
            let t = id(i);
            tests.insert(
                test_key("s", &t),
                TestChanges {
                    ops: vec![TestOp::Excluded, TestOp::Settled(Outcome::Passed)],
                },
            );
        }
        let shards = shard(tests);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(shards.len(), cores.clamp(1, SHARDS_MAX));
        let mut seen: Vec<String> = shards
            .iter()
            .flatten()
            .map(|(key, c)| {
                assert!(matches!(
                    c.ops.as_slice(),
                    [TestOp::Excluded, TestOp::Settled(Outcome::Passed)]
                ));
                split_test_key(key).unwrap().1.name
            })
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), PARALLEL_MIN_TESTS * 3);
        // A small group stays on one thread.
        let mut small = HashMap::default();
        small.insert(test_key("s", &id(0)), TestChanges { ops: vec![] });
        assert_eq!(shard(small).len(), 1);
    }

    /// A group's records for a run span many values, and two attempts of a test in different
    /// groups: the run reads back every test once, with its attempts in order.
    #[test]
    fn a_runs_records_read_back_whole_across_values_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let n = RUN_ENTRIES_PER_VALUE * 5 + 7;
        let result = |ms: u64| AttemptResult {
            duration: std::time::Duration::from_millis(ms),
            ..AttemptResult::infra_error("")
        };
        let test = |i: usize| TestRef {
            index: i as u32,
            binary_id: "bin".into(),
            name: format!("t{i:05}").into(),
        };
        for attempt in 1..=2u32 {
            store
                .write(&mut |tx| {
                    for i in 0..n {
                        let outcome = (attempt == 2).then_some(Outcome::Flaky);
                        let finished = TestFinished {
                            test: test(i),
                            attempt,
                            agent_id: "a".into(),
                            result: result(i as u64 * 10 + u64::from(attempt)),
                            final_outcome: outcome,
                            lease_id: None,
                            quarantined: false,
                        };
                        tx.record_result(RunId(1), &finished)?;
                    }
                    Ok(())
                })
                .unwrap();
        }
        let records = store.run_tests(RunId(1)).unwrap();
        assert_eq!(records.len(), n);
        for (i, rec) in records.iter().enumerate() {
            assert_eq!(rec.index as usize, i);
            let ms: Vec<u64> = rec.attempts.iter().map(|a| a.duration_ms).collect();
            assert_eq!(ms, vec![i as u64 * 10 + 1, i as u64 * 10 + 2], "test {i}");
            assert_eq!(rec.outcome, Some(Outcome::Flaky));
        }
        assert!(
            store.run_tests.len() > 5,
            "{} values",
            store.run_tests.len()
        );
    }

    /// A group large enough to be written by several threads: every test's summary and log must
    /// hold exactly what the group (and the one before it) recorded.
    #[test]
    fn a_large_group_written_in_shards_records_every_test_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let n = PARALLEL_MIN_TESTS * 4;
        for run in 1..=2u64 {
            store
                .write(&mut |tx| {
                    let attempts: Vec<_> = (0..n)
                        .map(|i| (id(i), attempt(run, i % 7 == 0 && run == 2, i as u64 + run)))
                        .collect();
                    tx.record_attempts("s", &attempts)?;
                    for i in 0..n {
                        tx.record_settled("s", &id(i), Outcome::Passed)?;
                    }
                    tx.record_excluded("s", &[id(3)])
                })
                .unwrap();
        }
        for i in 0..n {
            let (summary, log) = store.test_log("s", &id(i)).unwrap().unwrap();
            let durations: Vec<u64> = log.attempts.iter().map(|a| a.duration_ms).collect();
            assert_eq!(durations, vec![i as u64 + 1, i as u64 + 2], "test {i}");
            assert_eq!(summary.attempts, 2, "test {i}");
            assert_eq!(summary.failures, u64::from(i % 7 == 0), "test {i}");
            assert_eq!(summary.runs, 2, "test {i}");
            assert_eq!(summary.excluded, if i == 3 { 2 } else { 0 }, "test {i}");
        }
        // The in-memory index agrees with sled.
        let mut indexed = 0;
        store
            .for_each_summary(Some("s"), &mut |s| {
                assert_eq!(s.runs, 2);
                indexed += 1;
            })
            .unwrap();
        assert_eq!(indexed, n);
    }
}
