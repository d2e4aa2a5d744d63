//! How request handlers (the gRPC API and the dashboard) reach history: blocking store calls off
//! the async threads, and waiting for the history writer to catch up before a query answers.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::history::{HistoryError, HistoryUpdate};

/// Why a store call gave no answer; each front end maps it to its own error once.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreCallError {
    #[error("history task failed: {0}")]
    Task(String),
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// Runs blocking store work (sled calls block) off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, StoreCallError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreCallError::Task(e.to_string()))?
        .map_err(StoreCallError::from)
}

/// Waits (up to `wait`) until the history writer has written everything sent before now, so a
/// query right after a run sees it; false if it has not (the answer then says it may miss the
/// latest results).
pub(crate) async fn caught_up(history: &UnboundedSender<HistoryUpdate>, wait: Duration) -> bool {
    let written = crate::history::written(history, wait).await;
    if !written {
        tracing::debug!("history answer given before the writer caught up");
    }
    written
}
