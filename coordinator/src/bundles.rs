//! The coordinator's bundle store: verified bundles on disk, named by their digest. A bundle's
//! modification time is its last use (its upload, or a submission that found it here); bundles
//! unused for the retention period that no unfinished run names are removed (`collect`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use testfleet_bundle::temp_name::unique_suffix;
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
    /// Held while a bundle is found and marked used, and while old ones are removed, so that a
    /// bundle a submission has just found is never removed under it.
    uses: Arc<Mutex<()>>,
}

/// What one [`BundleStore::collect`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub bundles: usize,
    pub leftovers: usize,
    pub bytes: u64,
}

impl BundleStore {
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(BundleStore {
            dir: dir.to_path_buf(),
            max_bytes,
            uses: Arc::default(),
        })
    }

    /// Removes the bundles last used before `cutoff` whose digest is not in `keep` (the bundles
    /// of unfinished runs), and uploads left unfinished before it (a coordinator stopped while
    /// receiving).
    pub fn collect(
        &self,
        cutoff: SystemTime,
        keep: &HashSet<String>,
    ) -> std::io::Result<Collected> {
        let _held = self.uses.lock().expect("bundle use lock");
        let mut collected = Collected::default();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let leftover = name.starts_with(".upload-");
            let digest = name.strip_suffix(".tar.zst");
            let kept = match digest {
                Some(d) => keep.contains(d),
                None => !leftover, // not ours: left alone
            };
            let Ok(meta) = entry.metadata() else { continue };
            if kept || !meta.is_file() || meta.modified()? >= cutoff {
                continue;
            }
            std::fs::remove_file(entry.path())?;
            collected.bytes += meta.len();
            if leftover {
                collected.leftovers += 1;
            } else {
                collected.bundles += 1;
            }
        }
        Ok(collected)
    }

    /// The store of content-addressed bundles beside the archives, under the same lock.
    pub fn blobs(&self) -> std::io::Result<crate::blobs::BlobStore> {
        crate::blobs::BlobStore::open(&self.dir, self.max_bytes, self.uses.clone())
    }

    pub fn path_of(&self, digest: &str) -> Result<PathBuf, BundleStoreError> {
        if !testfleet_model::spec::is_sha256_hex(digest) {
            return Err(BundleStoreError::BadDigest(
                digest.chars().take(80).collect(),
            ));
        }
        Ok(self.dir.join(format!("{digest}.tar.zst")))
    }

    /// Whether the bundle is here; if it is, it counts as used now (kept another retention
    /// period): whoever asks is about to submit a run that names it.
    pub fn has(&self, digest: &str) -> Result<bool, BundleStoreError> {
        let path = self.path_of(digest)?;
        let _held = self.uses.lock().expect("bundle use lock");
        if !path.is_file() {
            return Ok(false);
        }
        let used = std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = used {
            // Still usable; only its retention counts from its upload.
            tracing::warn!(bundle = digest, error = %e, "could not mark a bundle as used");
        }
        Ok(true)
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

/// How often old bundles are looked for, after the pass at start.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Every hour until `stop` turns true: [`collect_unused`].
pub(crate) async fn collect_periodically(
    bundles: BundleStore,
    store: Arc<dyn crate::HistoryStore>,
    retention: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let start = tokio::time::Instant::now() + COLLECT_EVERY;
    let mut every = tokio::time::interval_at(start, COLLECT_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        collect_unused(&bundles, &store, retention).await;
    }
}

/// Removes bundles unused for `retention` that no unfinished run names. Failures are logged: a
/// full disk is better than a lost bundle.
pub(crate) async fn collect_unused(
    bundles: &BundleStore,
    store: &Arc<dyn crate::HistoryStore>,
    retention: std::time::Duration,
) {
    let (bundles, store) = (bundles.clone(), store.clone());
    type Passes = (Collected, crate::blobs::CollectedBlobs);
    let pass = tokio::task::spawn_blocking(move || -> Result<Passes, String> {
        let mut keep = HashSet::new();
        for run in store.unfinished_runs().map_err(|e| e.to_string())? {
            let spec = store
                .spec(testfleet_model::RunId(run.run_id))
                .map_err(|e| e.to_string())?;
            keep.extend(spec.and_then(|s| s.bundle_digest));
        }
        let cutoff = SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let archives = bundles.collect(cutoff, &keep).map_err(|e| e.to_string())?;
        let blobs = bundles
            .blobs()
            .and_then(|b| b.collect(cutoff, &keep))
            .map_err(|e| e.to_string())?;
        Ok((archives, blobs))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let retention_days = retention.as_secs() / 86_400;
    match pass {
        Ok((archives, blobs)) => {
            if archives != Collected::default() {
                tracing::info!(
                    bundles = archives.bundles,
                    unfinished_uploads = archives.leftovers,
                    mib = archives.bytes / (1 << 20),
                    retention_days,
                    "removed bundles no run has used within the retention period"
                );
            }
            if blobs != crate::blobs::CollectedBlobs::default() {
                tracing::info!(
                    manifests = blobs.manifests,
                    files = blobs.files,
                    unfinished_uploads = blobs.leftovers,
                    mib = blobs.bytes / (1 << 20),
                    retention_days,
                    "removed bundle manifests and files no kept bundle needs"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not remove old bundles"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn digest(n: u8) -> String {
        hex::encode([n; 32])
    }

    /// A file in the store, last modified `age` ago.
    fn aged(store: &BundleStore, name: &str, age: Duration) -> PathBuf {
        let path = store.dir.join(name);
        std::fs::write(&path, b"bundle bytes").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    #[test]
    fn bundles_unused_for_the_retention_and_not_kept_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BundleStore::open(dir.path(), 1 << 20).unwrap();
        let day = Duration::from_secs(86_400);
        let old = aged(&store, &format!("{}.tar.zst", digest(1)), 10 * day);
        let old_kept = aged(&store, &format!("{}.tar.zst", digest(2)), 10 * day);
        let old_used = aged(&store, &format!("{}.tar.zst", digest(3)), 10 * day);
        let fresh = aged(&store, &format!("{}.tar.zst", digest(4)), day);
        let leftover = aged(&store, &format!(".upload-{}-1-0", digest(5)), 10 * day);
        let not_ours = aged(&store, "README", 10 * day);
        // A submission finds this one: it is used again.
        assert!(store.has(&digest(3)).unwrap());
        let keep = HashSet::from([digest(2)]);
        let collected = store.collect(SystemTime::now() - 7 * day, &keep).unwrap();
        assert_eq!(
            collected,
            Collected {
                bundles: 1,
                leftovers: 1,
                bytes: 2 * b"bundle bytes".len() as u64,
            }
        );
        assert!(!old.exists() && !leftover.exists());
        for p in [&old_kept, &old_used, &fresh, &not_ours] {
            assert!(p.exists(), "{} was removed", p.display());
        }
        assert!(!store.has(&digest(1)).unwrap());
    }
}
