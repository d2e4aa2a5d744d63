//! Content-addressed test bundles. A bundle is a `manifest` of files, each moved as a verified
//! `blob` only to the side that lacks it and laid out from a cache (`layout`); or, as before
//! manifests, one deterministic tar + zstd archive named by the sha256 of its bytes (still read
//! for one release). Neither ever writes outside its target directory.

pub mod blob;
mod digest;
mod extract;
pub mod layout;
pub mod manifest;
mod pack;
pub mod room;
pub mod temp_name;

pub use digest::{Sha256Writer, digest_file};
pub use extract::{ExtractLimits, extract};
pub use pack::{BundleEntry, PackedBundle, pack};

use std::path::{Path, PathBuf};

/// Removes a bundle left on disk, extracted (a directory) or packed (a file); one already gone
/// counts as removed. The agent's cache and the client's packing directory clean up with it.
pub fn remove(path: &Path) -> std::io::Result<()> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("bundle entry `{path}` rejected: {reason}")]
    UnsafeEntry { path: String, reason: String },
    #[error("bundle exceeds the limit of {limit}: {what}")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("{context} `{}`: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BundleError {
    /// Wraps an I/O error with what was being done to which path: `.map_err(BundleError::io(..))`.
    pub fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BundleError::Io {
            context,
            path,
            source,
        }
    }
}
