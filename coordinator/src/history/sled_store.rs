//! The sled-backed [`HistoryStore`]. Keys are fixed-width big-endian integers or `\0`-joined names,
//! so scans come out ordered; trees and shapes are described in `records.rs`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};

use testfleet_model::{Outcome, RunId, RunSpec, RunState, RunSummary, TestId};

use super::records::{
    LoggedAttempt, QuarantineEntry, RunRecord, TestLog, TestLogPart, TestRecord, TestSummary,
    decode, decode_test_log, decode_test_summary, encode, encode_json, encode_test, fold_entries,
};
use super::sled_writes::WriteTx;
use super::{HistoryError, HistoryStore, HistoryWrites, verdict};

/// Schema 1 kept only passing durations per test; schema 2 an attempt log and a summary in two
/// trees; schema 3 keeps both in one value per test (one read and one write per result).
const SCHEMA_VERSION: u32 = 3;
/// Schema 2's tree of attempt logs, folded into `tests` by the migration to 3.
const V2_LOG_TREE: &str = "test_log";
pub(super) const OUTPUT_EXCERPT_BYTES: usize = 4096;
/// Runs kept by default; older runs and their per-test records are pruned.
pub const DEFAULT_KEEP_RUNS: u64 = 1000;
/// A run's spec is stored in pieces of this size under (run, piece): sled keeps small values in
/// its tree nodes, but writes a node holding large ones to a file of its own whenever it changes,
/// so whole specs (megabytes for a suite of 100,000 tests) made every submission and every
/// finished run rewrite the specs of all the runs in flight.
const SPEC_PIECE_BYTES: usize = 4096;

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    pub(super) runs: sled::Tree,
    pub(super) run_tests: sled::Tree,
    pub(super) tests: sled::Tree,
    quarantine: sled::Tree,
    run_specs: sled::Tree,
    /// CI fan-out keys: key → run id.
    run_keys: sled::Tree,
    keep_runs: u64,
    /// Every test's summary, in memory once first asked for: queries and plans read here, and
    /// the writer updates it as it commits. (A summary is a few hundred bytes; 100,000 tests
    /// take tens of MiB, and a scan of them takes milliseconds instead of a sled scan's hundreds.)
    summaries: Arc<RwLock<Option<SummaryIndex>>>,
}

pub(super) type SummaryIndex = BTreeMap<Vec<u8>, TestSummary>;

/// A group of a run's records: (run id, group id). Stores written before records were grouped
/// hold 12-byte keys, (run id, test index), with one [`TestRecord`] each.
pub(super) fn run_group_key(run: RunId, group: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&run.0.to_be_bytes());
    k[8..].copy_from_slice(&group.to_be_bytes());
    k
}
const UNGROUPED_KEY_LEN: usize = 12;

pub(super) fn test_key(suite: &str, t: &TestId) -> Vec<u8> {
    [
        suite.as_bytes(),
        b"\0",
        t.binary_id.as_bytes(),
        b"\0",
        t.name.as_bytes(),
    ]
    .concat()
}

/// The summary of a test history has not seen yet.
pub(super) fn new_summary(suite: &str, id: &TestId) -> TestSummary {
    TestSummary {
        suite: suite.to_owned(),
        binary_id: id.binary_id.clone(),
        name: id.name.clone(),
        ..TestSummary::default()
    }
}

fn split_test_key(key: &[u8]) -> Option<(String, TestId)> {
    let mut parts = key.splitn(3, |b| *b == 0);
    let suite = String::from_utf8_lossy(parts.next()?).into_owned();
    let binary_id = String::from_utf8_lossy(parts.next()?).into_owned();
    let name = String::from_utf8_lossy(parts.next()?).into_owned();
    Some((suite, TestId { binary_id, name }))
}

/// How long opening waits for a data dir's lock to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn is_lock_error(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock")
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, HistoryError> {
        let open_err = |reason: String| HistoryError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let config = sled::Config::new()
            .path(dir.join("history"))
            .cache_capacity(64 << 20)
            .flush_every_ms(Some(500));
        // A store just closed may hold its lock a moment longer: sled's IO threads finish their
        // last writes after the handle is dropped. A lock held past that is another process's.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(io)) if is_lock_error(&io) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(open_err(format!(
                            "{io} (is another testfleet process using this data dir?)"
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.map_err(|e| open_err(e.to_string()))?,
            }
        };
        let store = SledStore {
            meta: db.open_tree("meta")?,
            runs: db.open_tree("runs")?,
            run_tests: db.open_tree("run_tests")?,
            tests: db.open_tree("tests")?,
            quarantine: db.open_tree("quarantine")?,
            run_specs: db.open_tree("run_specs")?,
            run_keys: db.open_tree("run_keys")?,
            keep_runs: DEFAULT_KEEP_RUNS,
            summaries: Arc::default(),
            db,
        };
        store.migrate()?;
        // Housekeeping: a store it fails on still opens.
        match store.remove_orphan_specs() {
            Ok(0) => {}
            Ok(runs) => tracing::info!(runs, "removed the stored specs of runs not running"),
            Err(e) => tracing::warn!(error = %e, "could not look for specs of runs not running"),
        }
        Ok(store)
    }

    /// Removes the spec pieces of runs that are not running: a coordinator stopped between
    /// storing a submission's spec and its run record leaves pieces no run will ever read (a
    /// finished run's spec goes when it closes). Returns how many runs' pieces went.
    fn remove_orphan_specs(&self) -> Result<usize, HistoryError> {
        let mut removed = 0;
        let mut current: Option<(u64, bool)> = None;
        for key in self.run_specs.iter().keys() {
            let key = key?;
            let Some(id) = key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let keep = match current {
                Some((seen, keep)) if seen == id => keep,
                _ => {
                    // A record that cannot be read keeps its spec: only a known state decides.
                    let keep = match self.run(RunId(id)) {
                        Ok(run) => run.is_some_and(|r| r.state == RunState::Running),
                        Err(_) => true,
                    };
                    removed += usize::from(!keep);
                    current = Some((id, keep));
                    keep
                }
            };
            if !keep {
                self.run_specs.remove(key)?;
            }
        }
        if removed > 0 {
            self.run_specs.flush()?;
        }
        Ok(removed)
    }

    /// How many runs to keep (at least 1).
    pub fn with_retention(mut self, keep_runs: u64) -> Self {
        self.keep_runs = keep_runs.max(1);
        self
    }

    fn schema_version(&self) -> Result<Option<u32>, HistoryError> {
        self.meta
            .get("schema_version")?
            .map(|v| {
                v.as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| HistoryError::Corrupt {
                        key: "meta/schema_version".into(),
                        reason: "not a u32".into(),
                    })
            })
            .transpose()
    }

    fn migrate(&self) -> Result<(), HistoryError> {
        let found = match self.schema_version()? {
            // A new store: nothing to migrate.
            None if self.runs.is_empty() && self.tests.is_empty() => SCHEMA_VERSION,
            None => 1,
            Some(v) => v,
        };
        if found > SCHEMA_VERSION {
            return Err(HistoryError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        match found {
            1 => self.migrate_v1()?,
            2 => self.migrate_v2()?,
            _ => {}
        }
        self.meta
            .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
        self.db.flush()?;
        if self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == V2_LOG_TREE.as_bytes())
        {
            self.db.drop_tree(V2_LOG_TREE)?;
        }
        Ok(())
    }

    /// Schema 1's `tests` tree held `{recent_passing_ms, runs, last_outcome}`; each passing duration
    /// becomes a logged attempt of unknown revision, and a summary is computed from them.
    fn migrate_v1(&self) -> Result<(), HistoryError> {
        #[derive(serde::Deserialize)]
        struct V1 {
            recent_passing_ms: Vec<u64>,
            runs: u64,
            last_outcome: Option<Outcome>,
        }
        let mut migrated = 0;
        for kv in self.tests.iter() {
            let (key, value) = kv?;
            let old: V1 = decode(&key, &value)?;
            let Some((suite, id)) = split_test_key(&key) else {
                continue;
            };
            let (mut summary, mut log) = (TestSummary::default(), TestLog::default());
            summary.suite = suite;
            summary.binary_id = id.binary_id;
            summary.name = id.name;
            for ms in old.recent_passing_ms {
                let a = LoggedAttempt {
                    run_id: 0,
                    attempt: 1,
                    revision: String::new(),
                    status: testfleet_model::AttemptStatus::Passed,
                    duration_ms: ms,
                    agent_id: String::new(),
                    at_unix_ms: 0,
                };
                verdict::record(&mut summary, &mut log, a);
            }
            summary.runs = old.runs;
            summary.last_outcome = old.last_outcome;
            self.tests
                .insert(&key, encode_test(&summary, TestLogPart::Decoded(&log)))?;
            migrated += 1;
        }
        tracing::info!(tests = migrated, "history migrated from schema 1");
        Ok(())
    }

    /// Schema 2 kept each test's summary in `tests` and its log in `test_log`: they become one
    /// value in `tests`; `test_log` is dropped once the new version is on disk. A crash midway
    /// leaves version 2 and every log in place, and the next open starts over: a value already
    /// joined still reads as its summary (the log behind it is ignored) and is joined again.
    fn migrate_v2(&self) -> Result<(), HistoryError> {
        let logs = self.db.open_tree(V2_LOG_TREE)?;
        let mut migrated = 0;
        let mut batch = sled::Batch::default();
        for kv in self.tests.iter() {
            let (key, value) = kv?;
            let summary: TestSummary = decode(&key, &value)?;
            let log = match logs.get(&key)? {
                Some(b) => decode(&key, &b)?,
                None => TestLog::default(),
            };
            batch.insert(&key, encode_test(&summary, TestLogPart::Decoded(&log)));
            migrated += 1;
            if migrated % 10_000 == 0 {
                self.tests.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        self.tests.apply_batch(batch)?;
        tracing::info!(tests = migrated, "history migrated from schema 2");
        Ok(())
    }

    fn update_run(
        &self,
        id: RunId,
        f: impl FnOnce(&mut RunRecord),
    ) -> Result<Option<RunRecord>, HistoryError> {
        let key = id.0.to_be_bytes();
        let Some(bytes) = self.runs.get(key)? else {
            return Ok(None);
        };
        let mut rec: RunRecord = decode(&key, &bytes)?;
        f(&mut rec);
        self.runs.insert(key, encode(&rec))?;
        Ok(Some(rec))
    }

    pub(super) fn summary_of(
        &self,
        key: &[u8],
        suite: &str,
        id: &TestId,
    ) -> Result<TestSummary, HistoryError> {
        // Once loaded, the index holds every summary there is.
        let cached = self
            .summaries
            .read()
            .expect("summary index lock")
            .as_ref()
            .map(|index| index.get(key).cloned());
        let stored = match cached {
            Some(s) => s,
            None => self
                .tests
                .get(key)?
                .map(|b| decode_test_summary(key, &b).map(|(s, _)| s))
                .transpose()?,
        };
        Ok(stored.unwrap_or_else(|| new_summary(suite, id)))
    }

    /// Moves quarantine along after a run: clean runs count towards release, a flaky or failing
    /// run resets the count, and the auto policy quarantines tests that proved flaky.
    fn settle_quarantine(&self, run: &RunRecord) -> Result<(), HistoryError> {
        let policy = run.quarantine;
        // Nothing is in quarantine and nothing can enter it: no need to read the run back (for
        // 100,000 tests that read was 7% of the history writer's time).
        if self.quarantine.is_empty() && !policy.auto {
            return Ok(());
        }
        for t in self.run_tests(RunId(run.run_id))? {
            let Some(outcome) = t.outcome else { continue };
            let id = TestId {
                binary_id: t.binary_id.clone(),
                name: t.name.clone(),
            };
            let key = test_key(&run.suite, &id);
            let entry: Option<QuarantineEntry> = self
                .quarantine
                .get(&key)?
                .map(|b| decode(&key, &b))
                .transpose()?;
            match (entry, outcome) {
                (Some(mut e), Outcome::Passed) => {
                    e.clean_streak += 1;
                    if policy.release_after > 0 && e.clean_streak >= policy.release_after {
                        self.quarantine.remove(&key)?;
                        tracing::info!(test = %id, streak = e.clean_streak, "released from quarantine");
                    } else {
                        self.quarantine.insert(&key, encode(&e))?;
                    }
                }
                (Some(mut e), Outcome::Flaky | Outcome::Failed | Outcome::TimedOut) => {
                    e.clean_streak = 0;
                    self.quarantine.insert(&key, encode(&e))?;
                }
                (None, Outcome::Flaky | Outcome::Failed | Outcome::TimedOut) if policy.auto => {
                    let summary = self.summary_of(&key, &run.suite, &id)?;
                    // A test that only ever fails is broken, not flaky: it stays visible.
                    let reason = if outcome == Outcome::Flaky {
                        format!("failed, then passed on retry in run {}", run.run_id)
                    } else if summary.flaky_revisions > 0 {
                        format!(
                            "passed and failed on the same revision (run {})",
                            run.run_id
                        )
                    } else {
                        continue;
                    };
                    let e = QuarantineEntry {
                        since_ms: run.created_unix_ms,
                        by: "auto".into(),
                        reason,
                        clean_streak: 0,
                    };
                    self.quarantine.insert(&key, encode(&e))?;
                    tracing::info!(test = %id, "quarantined by policy");
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs `f` over the summary index, loading it from sled the first time.
    pub(super) fn with_summaries<T>(
        &self,
        f: impl FnOnce(&SummaryIndex) -> T,
    ) -> Result<T, HistoryError> {
        {
            let guard = self.summaries.read().expect("summary index lock");
            if let Some(index) = guard.as_ref() {
                return Ok(f(index));
            }
        }
        let mut guard = self.summaries.write().expect("summary index lock");
        if guard.is_none() {
            let mut index = SummaryIndex::new();
            for kv in self.tests.iter() {
                let (k, v) = kv?;
                index.insert(k.to_vec(), decode_test_summary(&k, &v)?.0);
            }
            *guard = Some(index);
        }
        Ok(f(guard.as_ref().expect("loaded above")))
    }

    /// Brings the summary index (if loaded) up to date with summaries just written.
    pub(super) fn summaries_written(&self, written: Vec<(Vec<u8>, TestSummary)>) {
        if let Some(index) = self.summaries.write().expect("summary index lock").as_mut() {
            index.extend(written);
        }
    }

    /// A fresh id for a group of run records, increasing across restarts.
    pub(super) fn next_group_id(&self) -> Result<u64, HistoryError> {
        Ok(self.db.generate_id()?)
    }

    /// Closes a run whose records are all in sled: its state and summary, quarantine transitions,
    /// retention, and a flush (a finished run is on disk).
    pub(super) fn close_run(
        &self,
        id: RunId,
        state: RunState,
        summary: &RunSummary,
    ) -> Result<(), HistoryError> {
        if let Some(run) = self.update_run(id, |r| {
            r.state = state;
            r.summary = Some(summary.clone());
        })? {
            self.settle_quarantine(&run)?;
        }
        // A finished run is never resumed: its spec can go.
        for key in self.run_specs.scan_prefix(id.0.to_be_bytes()).keys() {
            self.run_specs.remove(key?)?;
        }
        self.prune(id)?;
        self.db.flush()?;
        Ok(())
    }

    /// Drops the oldest runs beyond the retention, with their per-test records.
    fn prune(&self, newest: RunId) -> Result<(), HistoryError> {
        let Some(cutoff) = newest.0.checked_sub(self.keep_runs) else {
            return Ok(());
        };
        let old: Vec<sled::IVec> = self
            .runs
            .range(..=(cutoff).to_be_bytes())
            .keys()
            .collect::<Result<_, _>>()?;
        // A key of a pruned run names nothing any more (a job retried that late starts anew).
        for kv in self.run_keys.iter() {
            let (k, v) = kv?;
            if v.as_ref() <= cutoff.to_be_bytes().as_slice() {
                self.run_keys.remove(k)?;
            }
        }
        for key in old {
            let mut batch = sled::Batch::default();
            for k in self.run_tests.scan_prefix(&key).keys() {
                batch.remove(k?);
            }
            self.run_tests.apply_batch(batch)?;
            self.runs.remove(key)?;
        }
        Ok(())
    }
}

impl HistoryStore for SledStore {
    fn next_run_id(&self) -> Result<RunId, HistoryError> {
        // A dense counter (sled's generate_id skips ahead by a million after every restart).
        let next = self.meta.update_and_fetch("last_run_id", |old| {
            let last = old
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some((last + 1).to_be_bytes().to_vec())
        })?;
        let bytes: [u8; 8] = next
            .as_deref()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| HistoryError::Corrupt {
                key: "meta/last_run_id".into(),
                reason: "not a u64".into(),
            })?;
        self.meta.flush()?;
        Ok(RunId(u64::from_be_bytes(bytes)))
    }

    fn put_spec(&self, run: RunId, spec: &RunSpec) -> Result<(), HistoryError> {
        let encoded = encode_json(spec);
        for (i, piece) in encoded.chunks(SPEC_PIECE_BYTES).enumerate() {
            let key = [&run.0.to_be_bytes()[..], &(i as u32).to_be_bytes()].concat();
            self.run_specs.insert(key, piece)?;
        }
        Ok(())
    }

    fn spec(&self, run: RunId) -> Result<Option<RunSpec>, HistoryError> {
        let key = run.0.to_be_bytes();
        let mut encoded = Vec::new();
        // Pieces in key order; a store written before specs were split holds one value under
        // the run's id alone, which sorts first and is the whole spec.
        for piece in self.run_specs.scan_prefix(key).values() {
            encoded.extend_from_slice(&piece?);
        }
        if encoded.is_empty() {
            return Ok(None);
        }
        decode(&key, &encoded).map(Some)
    }

    fn unfinished_runs(&self) -> Result<Vec<RunRecord>, HistoryError> {
        let mut out = Vec::new();
        for kv in self.runs.iter() {
            let (k, v) = kv?;
            let rec: RunRecord = decode(&k, &v)?;
            if rec.state == RunState::Running {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn write(
        &self,
        f: &mut dyn FnMut(&mut dyn HistoryWrites) -> Result<(), HistoryError>,
    ) -> Result<(), HistoryError> {
        let mut tx = WriteTx::new(self);
        f(&mut tx)?;
        tx.commit()
    }

    fn run(&self, id: RunId) -> Result<Option<RunRecord>, HistoryError> {
        let key = id.0.to_be_bytes();
        self.runs.get(key)?.map(|b| decode(&key, &b)).transpose()
    }

    fn runs(&self, before: Option<RunId>, limit: usize) -> Result<Vec<RunRecord>, HistoryError> {
        // Keys are big-endian run ids: key order is run order.
        let end = before.map_or(Bound::Unbounded, |b| Bound::Excluded(b.0.to_be_bytes()));
        self.runs
            .range((Bound::Unbounded, end))
            .rev()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    fn run_tests(&self, id: RunId) -> Result<Vec<TestRecord>, HistoryError> {
        let mut records = BTreeMap::new();
        for kv in self.run_tests.scan_prefix(id.0.to_be_bytes()) {
            let (k, v) = kv?;
            if k.len() == UNGROUPED_KEY_LEN {
                let rec: TestRecord = decode(&k, &v)?;
                records.insert(rec.index, rec);
            } else {
                fold_entries(&mut records, decode(&k, &v)?);
            }
        }
        Ok(records.into_values().collect())
    }

    fn for_each_summary(
        &self,
        suite: Option<&str>,
        f: &mut dyn FnMut(&TestSummary),
    ) -> Result<(), HistoryError> {
        let prefix = suite
            .map(|s| [s.as_bytes(), b"\0"].concat())
            .unwrap_or_default();
        self.with_summaries(|all| {
            for (_, s) in all
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
            {
                f(s);
            }
        })
    }

    fn summaries_of(
        &self,
        suite: &str,
        tests: &[TestId],
    ) -> Result<Vec<Option<TestSummary>>, HistoryError> {
        self.with_summaries(|all| {
            tests
                .iter()
                .map(|t| all.get(&test_key(suite, t)).cloned())
                .collect()
        })
    }

    fn test_log(
        &self,
        suite: &str,
        test: &TestId,
    ) -> Result<Option<(TestSummary, TestLog)>, HistoryError> {
        let key = test_key(suite, test);
        let Some(value) = self.tests.get(&key)? else {
            return Ok(None);
        };
        let (summary, log) = decode_test_summary(&key, &value)?;
        Ok(Some((summary, decode_test_log(&key, log)?)))
    }

    fn quarantined(&self, suite: &str, tests: &[TestId]) -> Result<Vec<bool>, HistoryError> {
        tests
            .iter()
            .map(|t| Ok(self.quarantine.contains_key(test_key(suite, t))?))
            .collect()
    }

    fn set_quarantine(
        &self,
        suite: &str,
        test: &TestId,
        entry: Option<&QuarantineEntry>,
    ) -> Result<bool, HistoryError> {
        let key = test_key(suite, test);
        let existed = match entry {
            Some(e) => self.quarantine.insert(&key, encode(e))?.is_some(),
            None => self.quarantine.remove(&key)?.is_some(),
        };
        self.quarantine.flush()?;
        Ok(existed)
    }

    fn quarantine_list(&self) -> Result<Vec<(String, TestId, QuarantineEntry)>, HistoryError> {
        self.quarantine
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let (suite, id) = split_test_key(&k).ok_or_else(|| HistoryError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "not a test key".into(),
                })?;
                Ok((suite, id, decode(&k, &v)?))
            })
            .collect()
    }

    fn run_for_key(&self, key: &str) -> Result<Option<RunId>, HistoryError> {
        self.run_keys
            .get(key)?
            .map(|v| {
                v.as_ref()
                    .try_into()
                    .map(|b| RunId(u64::from_be_bytes(b)))
                    .map_err(|_| HistoryError::Corrupt {
                        key: format!("run_keys/{key}"),
                        reason: "not a run id".into(),
                    })
            })
            .transpose()
    }

    fn put_run_key(&self, key: &str, run: RunId) -> Result<(), HistoryError> {
        self.run_keys.insert(key, &run.0.to_be_bytes())?;
        self.run_keys.flush()?;
        Ok(())
    }

    fn flush(&self) -> Result<(), HistoryError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testfleet_model::TestRef;

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
        RunSpec {
            suite: "s".into(),
            binaries: vec![testfleet_model::Binary {
                binary_id: "b".into(),
                path: "/bin/true".into(),
                cwd: "/".into(),
                env: Default::default(),
                services: vec![],
                runner: Default::default(),
                path_env: Default::default(),
                library_path: vec![],
            }],
            tests: (0..tests)
                .map(|i| testfleet_model::TestSpec {
                    binary: 0,
                    name: format!("module_{:03}::test_{i:07}", i % 97),
                    ignored: i % 11 == 0,
                })
                .collect(),
            retries: Some(2),
            test_timeout: std::time::Duration::from_secs(30),
            kill_grace: std::time::Duration::from_secs(1),
            output_cap_bytes: 4096,
            bundle_digest: Some("digest".into()),
            revision: "rev".into(),
            branch: "main".into(),
            services: vec![],
            workspace: String::new(),
            quarantine: Default::default(),
            tests_per_process: 1,
            origin: vec![],
            pass_env: vec![],
        }
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
            .expect("the data dir is locked");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
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
        let err = SledStore::open(dir.path()).err().unwrap();
        assert!(
            err.to_string().contains("schema version 99 is newer"),
            "{err}"
        );
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
    }
}
