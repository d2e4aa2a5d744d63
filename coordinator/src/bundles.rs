//! The coordinator's bundle store: verified bundles on disk, named by their digest.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum BundleStoreError {
    #[error(
        "bundle digest mismatch: declared {declared}, but the uploaded data hashes to {actual}"
    )]
    DigestMismatch { declared: String, actual: String },
    #[error("bundle size mismatch: declared {declared} bytes, received {received}")]
    SizeMismatch { declared: u64, received: u64 },
    #[error(
        "coordinator limit --max-bundle-bytes hit: the bundle is {size} bytes, the limit {limit}"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error("`{0}` is not a sha256 hex digest")]
    BadDigest(String),
    #[error("bundle {0} is not on this coordinator")]
    NotFound(String),
    #[error("bundle storage failed: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct BundleStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl BundleStore {
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(BundleStore {
            dir: dir.to_path_buf(),
            max_bytes,
        })
    }

    pub fn path_of(&self, digest: &str) -> Result<PathBuf, BundleStoreError> {
        if !testfleet_model::spec::is_sha256_hex(digest) {
            return Err(BundleStoreError::BadDigest(
                digest.chars().take(80).collect(),
            ));
        }
        Ok(self.dir.join(format!("{digest}.tar.zst")))
    }

    pub fn has(&self, digest: &str) -> Result<bool, BundleStoreError> {
        Ok(self.path_of(digest)?.is_file())
    }

    /// Starts receiving a bundle that declares `digest` and `size`.
    pub async fn begin_upload(&self, digest: &str, size: u64) -> Result<Upload, BundleStoreError> {
        let final_path = self.path_of(digest)?;
        if size > self.max_bytes {
            return Err(BundleStoreError::TooLarge {
                size,
                limit: self.max_bytes,
            });
        }
        let tmp = self
            .dir
            .join(format!(".upload-{digest}-{}", unique_suffix()));
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(Upload {
            digest: digest.to_owned(),
            size,
            received: 0,
            hasher: Sha256::new(),
            file,
            tmp,
            final_path,
        })
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A bundle being received; it becomes visible only once its size and digest check out.
pub struct Upload {
    digest: String,
    size: u64,
    received: u64,
    hasher: Sha256,
    file: tokio::fs::File,
    tmp: PathBuf,
    final_path: PathBuf,
}

impl Upload {
    pub async fn write(&mut self, data: &[u8]) -> Result<(), BundleStoreError> {
        self.received += data.len() as u64;
        if self.received > self.size {
            return Err(BundleStoreError::SizeMismatch {
                declared: self.size,
                received: self.received,
            });
        }
        self.hasher.update(data);
        self.file.write_all(data).await?;
        Ok(())
    }

    pub async fn finish(mut self) -> Result<(), BundleStoreError> {
        if self.received != self.size {
            return Err(BundleStoreError::SizeMismatch {
                declared: self.size,
                received: self.received,
            });
        }
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if actual != self.digest {
            return Err(BundleStoreError::DigestMismatch {
                declared: self.digest.clone(),
                actual,
            });
        }
        self.file.flush().await?;
        self.file.sync_all().await?;
        tokio::fs::rename(&self.tmp, &self.final_path).await?;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // After a successful finish the temp file was renamed away and this is a no-op.
        let _ = std::fs::remove_file(&self.tmp);
    }
}
