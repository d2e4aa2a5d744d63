//! History: what happened in every run, and what it says about each test. The scheduler never
//! touches it: the history writer turns events into records, and the API reads. Verdicts are
//! precomputed per test when results are recorded, so queries only scan small summaries.

pub mod credits;
mod estimate;
pub mod failures;
pub mod import;
mod plan;
pub mod policy;
pub mod query;
mod records;
mod sled;
pub mod stats;
#[cfg(test)]
mod tests;
mod verdict;
mod writer;

pub use estimate::{DEFAULT_ESTIMATE, estimate_all};
pub use plan::{Plan, plan};
pub use records::{
    AttemptRecord, Evidence, LoggedAttempt, QuarantineEntry, RunRecord, TestLog, TestRecord,
    TestSummary,
};
pub use sled::{DEFAULT_CACHE_BYTES, DEFAULT_KEEP_RUNS, SledStore};
pub use writer::{HistoryUpdate, QUERY_WAIT, spawn_writer, written};

use testfleet_model::{
    Outcome, RunId, RunSpec, RunState, RunSummary, TestFinished, TestId, TestRef,
};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history storage failed: {0}")]
    Storage(#[from] ::sled::Error),
    #[error("history record `{key}` is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "history schema version {found} is newer than this testfleet understands ({supported})"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("failed to open the data dir `{path}`: {reason}")]
    Open { path: String, reason: String },
}

impl HistoryError {
    /// Whether the disk failed (full, or an I/O error): not the record's fault, so the same write
    /// may succeed later.
    pub fn is_storage(&self) -> bool {
        matches!(self, HistoryError::Storage(::sled::Error::Io(_)))
    }
}

/// The writes history takes; a store applies a group of them together (see
/// [`HistoryStore::write`]).
pub trait HistoryWrites {
    fn put_run(&mut self, rec: &RunRecord) -> Result<(), HistoryError>;
    fn record_skipped(
        &mut self,
        run: RunId,
        tests: &[TestRef],
        quarantined: &[u32],
    ) -> Result<(), HistoryError>;
    /// One attempt into the run's record of the test (every attempt, infrastructure errors too).
    #[allow(clippy::too_many_arguments)]
    fn record_result(&mut self, run: RunId, finished: &TestFinished) -> Result<(), HistoryError>;
    /// The whole captured output of the result the run's event `seq` carries: kept on disk, so
    /// that the run's event log in memory need not keep it.
    fn record_output(&mut self, run: RunId, seq: u64, output: &[u8]) -> Result<(), HistoryError>;
    /// Attempts that count for the tests' statistics.
    fn record_attempts(
        &mut self,
        suite: &str,
        attempts: &[(TestId, LoggedAttempt)],
    ) -> Result<(), HistoryError>;
    /// Attempts left out of the statistics (their lease failed almost as a whole).
    fn record_excluded(&mut self, suite: &str, tests: &[TestId]) -> Result<(), HistoryError>;
    fn record_settled(
        &mut self,
        suite: &str,
        test: &TestId,
        outcome: Outcome,
    ) -> Result<(), HistoryError>;
    /// Closes a run: its record, quarantine transitions, retention.
    fn finish_run(
        &mut self,
        id: RunId,
        state: RunState,
        summary: &RunSummary,
    ) -> Result<(), HistoryError>;
}

/// The storage behind history. Calls are synchronous: callers on the async runtime use
/// `spawn_blocking` or the writer thread.
pub trait HistoryStore: Send + Sync + 'static {
    /// A fresh run id, never handed out before (also across restarts).
    fn next_run_id(&self) -> Result<RunId, HistoryError>;
    /// The spec of a run that has not finished, so a restarted coordinator can resume it.
    fn put_spec(&self, run: RunId, spec: &RunSpec) -> Result<(), HistoryError>;
    fn spec(&self, run: RunId) -> Result<Option<RunSpec>, HistoryError>;
    /// Runs still marked running (a coordinator stopped while they ran).
    fn unfinished_runs(&self) -> Result<Vec<RunRecord>, HistoryError>;

    /// Applies the writes `f` makes as one group: each record is read once, changed in memory,
    /// and written back once with the group, so a burst of results for one test costs one write.
    fn write(
        &self,
        f: &mut dyn FnMut(&mut dyn HistoryWrites) -> Result<(), HistoryError>,
    ) -> Result<(), HistoryError>;

    fn run(&self, id: RunId) -> Result<Option<RunRecord>, HistoryError>;
    /// Newest first; with `before`, only the runs older than it (the next page).
    fn runs(&self, before: Option<RunId>, limit: usize) -> Result<Vec<RunRecord>, HistoryError>;
    fn run_tests(&self, id: RunId) -> Result<Vec<TestRecord>, HistoryError>;
    /// The outputs recorded for the run's events `seqs` (`None` where none is).
    fn outputs(&self, run: RunId, seqs: &[u64]) -> Result<Vec<Option<Vec<u8>>>, HistoryError>;
    /// Visits every test's summary, of one suite or all, in key order, without copying them.
    fn for_each_summary(
        &self,
        suite: Option<&str>,
        f: &mut dyn FnMut(&TestSummary),
    ) -> Result<(), HistoryError>;
    /// Every test's summary, of one suite or all.
    fn summaries(&self, suite: Option<&str>) -> Result<Vec<TestSummary>, HistoryError> {
        let mut out = Vec::new();
        self.for_each_summary(suite, &mut |s| out.push(s.clone()))?;
        Ok(out)
    }
    fn summaries_of(
        &self,
        suite: &str,
        tests: &[TestId],
    ) -> Result<Vec<Option<TestSummary>>, HistoryError>;
    /// Each test's p95 of passing durations, where history has one: what a plan needs, without
    /// copying a summary per test of a run (a run of a million tests would copy half a GiB).
    fn p95s_of(&self, suite: &str, tests: &[TestId]) -> Result<Vec<Option<u64>>, HistoryError> {
        Ok(self
            .summaries_of(suite, tests)?
            .into_iter()
            .map(|s| s.and_then(|s| s.p95_ms))
            .collect())
    }
    fn test_log(
        &self,
        suite: &str,
        test: &TestId,
    ) -> Result<Option<(TestSummary, TestLog)>, HistoryError>;
    fn quarantined(&self, suite: &str, tests: &[TestId]) -> Result<Vec<bool>, HistoryError>;
    /// Puts a test into quarantine or (with `None`) takes it out; returns whether it was in.
    fn set_quarantine(
        &self,
        suite: &str,
        test: &TestId,
        entry: Option<&QuarantineEntry>,
    ) -> Result<bool, HistoryError>;
    fn quarantine_list(&self) -> Result<Vec<(String, TestId, QuarantineEntry)>, HistoryError>;
    /// The run a CI fan-out key names, if a run was submitted with it (and is still kept).
    fn run_for_key(&self, key: &str) -> Result<Option<RunId>, HistoryError>;
    /// Names `run` by `key`, on disk before this returns.
    fn put_run_key(&self, key: &str, run: RunId) -> Result<(), HistoryError>;
    fn flush(&self) -> Result<(), HistoryError>;
}
