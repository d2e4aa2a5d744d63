//! testfleet's gRPC wire protocol (`testfleet.v1`): the generated types and services, and the
//! conversions between them and `testfleet-model`, validated at the edge.

#[allow(clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("testfleet.v1");
}

mod chunks;
mod convert;
mod reports;
mod services;
mod session;
mod settings;
pub mod trace;

pub use chunks::file_chunks;

pub use convert::{ConvertError, outcome_from_wire, parse_run_id, run_state_from_wire};
pub use services::scope_from_wire;
pub use session::{LeaseError, coordinator_message_from_wire};

/// Largest gRPC message either side accepts: a lease or a run spec with many tests can be large.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Bundle chunk size for uploads and downloads.
pub const BUNDLE_CHUNK_BYTES: usize = 1 << 20;

/// Response metadata set on a history query answered before the coordinator's history writer
/// caught up with everything sent before the query (a large backlog): the answer is what is on
/// disk, and may miss the latest results.
pub const HISTORY_BEHIND_HEADER: &str = "testfleet-history-behind";
