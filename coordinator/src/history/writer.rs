//! The history writer: a dedicated thread that applies scheduler events to the store in order, so
//! that sled's synchronous writes never stall the async runtime.

use std::sync::Arc;

use testfleet_model::RunEvent;
use tokio::sync::mpsc;

use super::{HistoryStore, RunRecord};

#[derive(Clone, Debug)]
pub enum HistoryUpdate {
    RunCreated(RunRecord),
    Event { suite: Arc<str>, event: RunEvent },
}

/// Starts the writer; it ends (after flushing) when every sender is dropped. Join the handle to
/// know that everything sent has been written.
pub fn spawn_writer(
    store: Arc<dyn HistoryStore>,
) -> (
    mpsc::UnboundedSender<HistoryUpdate>,
    std::thread::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<HistoryUpdate>();
    let handle = std::thread::Builder::new()
        .name("history-writer".into())
        .spawn(move || {
            while let Some(update) = rx.blocking_recv() {
                if let Err(e) = store.apply(&update) {
                    // History is derived data: a failed write is reported, and the run goes on.
                    tracing::error!(error = %e, "failed to write history");
                }
            }
            if let Err(e) = store.flush() {
                tracing::error!(error = %e, "failed to flush history");
            }
        })
        .expect("spawning a thread succeeds");
    (tx, handle)
}
