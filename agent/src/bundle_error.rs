//! Why a lease's bundle could not be had: what the cache, and the two ways of fetching a bundle
//! (a manifest's files, one archive), report. Each names the bundle and keeps its cause as the
//! source, so that a full disk is found among the causes and said (`session::with_room`).

use std::path::PathBuf;

use testfleet_bundle::BundleError;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the coordinator named bundle `{0}`, which is not a SHA-256 digest")]
    BadDigest(String),
    #[error("failed to download bundle {digest}: {status}")]
    Download { digest: String, status: String },
    #[error("bundle {digest} is unusable: {source}")]
    Bundle {
        digest: String,
        #[source]
        source: BundleError,
    },
    #[error("bundle cache I/O failed at `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
