//! The sled-backed [`HistoryStore`]. Keys are fixed-width big-endian integers or `\0`-joined names,
//! so scans come out ordered; trees and shapes are described in `records.rs`. Each concern of the
//! store is a child: its keys, its migrations, the run specs' pieces, the in-memory summary
//! index, closing a run (quarantine, retention), and grouped writes.

mod close;
mod keys;
mod many_keys;
mod migrate;
mod output_files;
mod run_chunks;
mod shard_threads;
mod specs;
mod summary_index;
#[cfg(test)]
mod tests;
mod writes;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};

use testfleet_model::{RunId, RunSpec, RunState, TestId};

use super::records::{
    QuarantineEntry, RunRecord, TestLog, TestRecord, TestSummary, decode, decode_test_log,
    decode_test_summary, encode, fold_entries,
};
use super::{HistoryError, HistoryStore, HistoryWrites};
use keys::{UNGROUPED_KEY_LEN, split_test_key, test_key};
use summary_index::SummaryIndex;
use writes::WriteTx;

pub(crate) const OUTPUT_EXCERPT_BYTES: usize = 4096;
/// Large values (run specs, results' outputs) are stored in pieces of this size under their key
/// and a piece number: sled keeps small values in its tree nodes, but writes a node holding large
/// ones to a file of its own whenever it changes, so whole specs (megabytes for a suite of 100,000
/// tests) made every submission and every finished run rewrite the specs of all the runs in
/// flight.
pub(super) const PIECE_BYTES: usize = 4096;
/// sled's page cache unless told otherwise. 64 MiB measured the same ingest rate with a peak
/// ~30 MiB higher (docs/benchmarks.md, ingest); the history's queries read the summary index, not
/// this cache.
pub const DEFAULT_CACHE_BYTES: u64 = 32 << 20;
/// Runs kept by default; older runs and their per-test records are pruned.
pub const DEFAULT_KEEP_RUNS: u64 = 1000;

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
    /// Captured outputs of results: run id and event seq (big-endian) → where the output is in
    /// its run's file; stores written before outputs moved beside sled hold pieces of outputs
    /// under the same key and a piece number.
    pub(super) outputs: sled::Tree,
    /// The outputs themselves, one file per run.
    output_files: Arc<output_files::OutputFiles>,
    /// Threads writing a group's shards of tests besides the writer.
    shard_threads: Arc<shard_threads::ShardThreads>,
    keep_runs: u64,
    /// Every test's summary, in memory once a query first asks: queries read here (and plans,
    /// once it is loaded), and the writer updates it as it commits. (A summary is a few hundred
    /// bytes; 100,000 tests take tens of MiB, and a scan of them takes milliseconds instead of a
    /// sled scan's hundreds.)
    summaries: Arc<RwLock<Option<SummaryIndex>>>,
}

/// How long opening waits for a data dir's lock to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn is_lock_error(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock")
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, HistoryError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens with `cache_bytes` of memory for sled's page cache.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, HistoryError> {
        let open_err = |reason: String| HistoryError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let config = sled::Config::new()
            .path(dir.join("history"))
            .cache_capacity(cache_bytes)
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
            outputs: db.open_tree("outputs")?,
            output_files: Arc::new(output_files::OutputFiles::open(dir)?),
            shard_threads: Arc::default(),
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
        match store.remove_orphan_outputs() {
            Ok(0) => {}
            Ok(runs) => tracing::info!(runs, "removed the output files of runs no longer kept"),
            Err(e) => tracing::warn!(error = %e, "could not look for output files of pruned runs"),
        }
        Ok(store)
    }

    /// How many runs to keep (at least 1).
    pub fn with_retention(mut self, keep_runs: u64) -> Self {
        self.keep_runs = keep_runs.max(1);
        self
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
        self.put_spec_pieces(run, spec)
    }

    fn spec(&self, run: RunId) -> Result<Option<RunSpec>, HistoryError> {
        self.read_spec(run)
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

    fn outputs(&self, run: RunId, seqs: &[u64]) -> Result<Vec<Option<Vec<u8>>>, HistoryError> {
        seqs.iter()
            .map(|seq| {
                let key = keys::output_key(run, *seq);
                if let Some(at) = self.outputs.get(key)? {
                    let at = output_files::Pointer::decode(&at).ok_or_else(|| {
                        HistoryError::Corrupt {
                            key: format!("output pointer of run {run} event {seq}"),
                            reason: format!("{} bytes, not a pointer", at.len()),
                        }
                    })?;
                    return self.output_files.read(run, *seq, at).map(Some);
                }
                // Written before outputs moved beside sled: its pieces, in key order.
                let mut output = Vec::new();
                for piece in self.outputs.scan_prefix(key).values() {
                    output.extend_from_slice(&piece?);
                }
                Ok((!output.is_empty()).then_some(output))
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
        self.read_summaries(suite, tests, true, |s| s.clone())
    }

    fn p95s_of(&self, suite: &str, tests: &[TestId]) -> Result<Vec<Option<u64>>, HistoryError> {
        Ok(self
            .read_summaries(suite, tests, false, |s| s.p95_ms)?
            .into_iter()
            .map(Option::flatten)
            .collect())
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
        let log = decode_test_log(&key, log)?;
        Ok(Some((summary_index::named_summary(&key, summary)?, log)))
    }

    fn quarantined(&self, suite: &str, tests: &[TestId]) -> Result<Vec<bool>, HistoryError> {
        // Few tests are in quarantine: a suite with none, the usual case, needs no lookup per
        // test (a plan of 100,000 tests made as many).
        let prefix = [suite.as_bytes(), b"\0"].concat();
        if self
            .quarantine
            .scan_prefix(&prefix)
            .next()
            .transpose()?
            .is_none()
        {
            return Ok(vec![false; tests.len()]);
        }
        let keys: Vec<Vec<u8>> = tests.iter().map(|t| test_key(suite, t)).collect();
        Ok(many_keys::get_many(&self.quarantine, &keys)?
            .iter()
            .map(Option::is_some)
            .collect())
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
