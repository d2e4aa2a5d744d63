//! History: what happened in every run, kept in a [`HistoryStore`] (sled in production). The
//! scheduler never touches it; the history writer turns events into records, and the API reads.

mod estimate;
mod records;
mod sled_store;
mod writer;

pub use estimate::{DEFAULT_ESTIMATE, estimate_all, percentile_nearest_rank};
pub use records::{AttemptRecord, RunRecord, TestRecord, TestStats};
pub use sled_store::SledStore;
pub use writer::{HistoryUpdate, spawn_writer};

use std::time::Duration;

use testfleet_model::{RunId, TestId};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history storage failed: {0}")]
    Storage(#[from] sled::Error),
    #[error("history record `{key}` is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "history schema version {found} is newer than this testfleet understands ({supported})"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("failed to open the data dir `{path}`: {reason}")]
    Open { path: String, reason: String },
}

/// The storage behind history. Calls are synchronous: callers on the async runtime use
/// `spawn_blocking` or the writer thread.
pub trait HistoryStore: Send + Sync + 'static {
    /// A fresh run id, never handed out before (also across restarts).
    fn next_run_id(&self) -> Result<RunId, HistoryError>;
    fn apply(&self, update: &HistoryUpdate) -> Result<(), HistoryError>;
    /// Recent passing durations of each test, for estimates.
    fn passing_durations(
        &self,
        suite: &str,
        tests: &[TestId],
    ) -> Result<Vec<Vec<Duration>>, HistoryError>;
    fn run(&self, id: RunId) -> Result<Option<RunRecord>, HistoryError>;
    /// Newest first.
    fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, HistoryError>;
    fn run_tests(&self, id: RunId) -> Result<Vec<TestRecord>, HistoryError>;
    fn test_stats(&self, suite: &str, test: &TestId) -> Result<Option<TestStats>, HistoryError>;
    fn flush(&self) -> Result<(), HistoryError>;
}
