//! The agent's bundle cache: each digest is downloaded once, verified, and extracted into its own
//! directory; concurrent leases for the same digest wait for the one download. Agents may share a
//! cache dir (CI jobs on one machine): each downloads and extracts under names of its own, and the
//! first to finish puts the bundle in place.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use testfleet_bundle::{BundleError, ExtractLimits};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_security::AuthChannel;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
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

#[derive(Clone)]
pub struct BundleCache {
    dir: PathBuf,
    locks: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
}

impl BundleCache {
    pub fn new(dir: PathBuf) -> Self {
        BundleCache {
            dir,
            locks: Arc::default(),
        }
    }

    /// The extracted root of bundle `digest`, downloading it first if needed.
    pub async fn ensure(
        &self,
        digest: &str,
        client: &mut CoordinatorClient<AuthChannel>,
    ) -> Result<PathBuf, CacheError> {
        let root = self.dir.join(digest);
        let lock = self
            .locks
            .lock()
            .await
            .entry(digest.to_owned())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if root.is_dir() {
            return Ok(root);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        // Names of this process and this download: another agent on the same dir has its own.
        let own = format!("{digest}-{}-{}", std::process::id(), unique());
        let archive = self.dir.join(format!(".download-{own}"));
        let download_err = |status: String| CacheError::Download {
            digest: digest.to_owned(),
            status,
        };
        let downloaded = async {
            let mut stream = client
                .download_bundle(pb::BundleRef {
                    digest: digest.to_owned(),
                })
                .await
                .map_err(|s| download_err(s.message().to_owned()))?
                .into_inner();
            let mut file = std::fs::File::create(&archive).map_err(io(&archive))?;
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| download_err(s.message().to_owned()))?
            {
                file.write_all(&chunk.data).map_err(io(&archive))?;
            }
            file.sync_all().map_err(io(&archive))?;
            drop(file);
            Ok::<(), CacheError>(())
        }
        .await;
        if let Err(e) = downloaded {
            let _ = std::fs::remove_file(&archive);
            return Err(e);
        }
        tracing::info!(%digest, "bundle downloaded");

        let staging = self.dir.join(format!(".extract-{own}"));
        let (d, a, s) = (digest.to_owned(), archive.clone(), staging.clone());
        let extracted = tokio::task::spawn_blocking(move || {
            testfleet_bundle::extract(&a, &d, &s, ExtractLimits::default())
        })
        .await
        .expect("extraction task does not panic");
        let _ = std::fs::remove_file(&archive);
        if let Err(source) = extracted {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(CacheError::Bundle {
                digest: digest.to_owned(),
                source,
            });
        }
        if let Err(e) = std::fs::rename(&staging, &root) {
            let _ = std::fs::remove_dir_all(&staging);
            // Another agent sharing this dir put the same (verified) bundle there first.
            if !root.is_dir() {
                return Err(io(&root)(e));
            }
        }
        tracing::info!(%digest, root = %root.display(), "bundle extracted");
        Ok(root)
    }
}

/// A number no other download of this process has.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
