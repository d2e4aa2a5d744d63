//! Thin gRPC handlers: decode, convert and validate at the edge, ask the scheduler or the stores,
//! map the answer back. No run or agent state lives here; what a submission must pass before it
//! becomes a run is `admission`, and every domain error becomes a `Status` here, in one place.

pub mod access;
mod admission;
mod blobs;
mod bundles;
mod client;
mod gateway;
mod shared_names;

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

impl From<crate::blobs::BlobStoreError> for Status {
    fn from(e: crate::blobs::BlobStoreError) -> Self {
        use crate::blobs::BlobStoreError as E;
        match e {
            E::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
            E::Refused(..) | E::BadManifest(_) | E::BadDigest(_) => {
                Status::invalid_argument(e.to_string())
            }
            E::Damaged(_) => Status::data_loss(e.to_string()),
            E::Io(_) => Status::internal(e.to_string()),
        }
    }
}

impl From<crate::store_call::StoreCallError> for Status {
    fn from(e: crate::store_call::StoreCallError) -> Self {
        Status::internal(e.to_string())
    }
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, Status> {
    Ok(crate::store_call::blocking(f).await?)
}
