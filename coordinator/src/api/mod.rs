//! Thin gRPC handlers: decode, convert and validate at the edge, ask the scheduler or the stores,
//! map the answer back. No run or agent state lives here.

pub mod access;
mod bundles;
mod client;
mod gateway;

pub use client::ClientApi;
pub use gateway::Gateway;

use tonic::Status;

use crate::history::HistoryError;
use crate::scheduler::SchedulerGone;

impl From<SchedulerGone> for Status {
    fn from(e: SchedulerGone) -> Self {
        Status::unavailable(format!("{e}: the coordinator is shutting down"))
    }
}

impl From<HistoryError> for Status {
    fn from(e: HistoryError) -> Self {
        Status::internal(e.to_string())
    }
}

impl From<crate::bundles::BundleStoreError> for Status {
    fn from(e: crate::bundles::BundleStoreError) -> Self {
        use crate::bundles::BundleStoreError as E;
        match e {
            E::NotFound(_) => Status::not_found(e.to_string()),
            E::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
            E::Io(_) => Status::internal(e.to_string()),
            E::DigestMismatch { .. } | E::SizeMismatch { .. } | E::BadDigest(_) => {
                Status::invalid_argument(e.to_string())
            }
        }
    }
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("history task failed: {e}")))?
        .map_err(Status::from)
}
