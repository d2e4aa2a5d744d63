//! The coordinator's store of content-addressed bundles: files by digest (each kept as the zstd
//! frame it arrived as, so it is served without compressing again) and manifests naming them:
//! the coordinator's part of bundles that move only the files the other side lacks.
//!
//! Beside the archives, under the bundle directory:
//!
//! ```text
//! cas/<first two hex digits>/<sha256>-<size>   a verified file, read-only
//! manifests/<digest>                           a manifest whose every file is in cas/
//! tmp/                                         uploads in progress
//! ```
//!
//! Nothing is visible before it is verified: a file only once what it decompresses to hashes to
//! the digest it was sent under, a manifest only once every file it names is here (so a manifest
//! that is here can always be laid out). A file's modification time is its last use; the archives'
//! lock is shared, so that what a client was just told is here is never removed before its run is
//! submitted (see [`BlobStore::collect`]).

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use testfleet_bundle::BundleError;
use testfleet_bundle::blob::{BlobDigest, VerifyingDecoder};
use testfleet_bundle::manifest::{Manifest, ManifestLimits};

use testfleet_bundle::temp_name::unique_suffix;

#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    #[error(
        "coordinator limit --max-bundle-bytes hit: a file of the bundle is {size} bytes, the limit {limit}"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error("file {0} of the bundle was refused: {1}")]
    Refused(BlobDigest, BundleError),
    #[error("the manifest was refused: {0}")]
    BadManifest(String),
    #[error("`{0}` is not a sha256 hex digest")]
    BadDigest(String),
    #[error("{0}")]
    Damaged(String),
    #[error("bundle storage failed: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
    max_bytes: u64,
    /// The bundle store's lock: held while something is found and marked used, and while old
    /// things are removed.
    uses: Arc<Mutex<()>>,
}

/// What one [`BlobStore::collect`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CollectedBlobs {
    pub manifests: usize,
    pub files: usize,
    pub leftovers: usize,
    pub bytes: u64,
}

impl BlobStore {
    /// Opens the store under the bundle directory `dir`, sharing the archives' lock `uses`.
    pub fn open(dir: &Path, max_bytes: u64, uses: Arc<Mutex<()>>) -> std::io::Result<Self> {
        for sub in ["cas", "manifests", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(BlobStore {
            dir: dir.to_owned(),
            max_bytes,
            uses,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.uses.lock().expect("bundle use lock")
    }

    /// Where a verified file is (or would be).
    pub fn path_of(&self, d: &BlobDigest) -> PathBuf {
        let hex = d.sha256_hex();
        self.dir
            .join("cas")
            .join(&hex[..2])
            .join(format!("{hex}-{}", d.size))
    }

    fn manifest_path(&self, digest: &str) -> Result<PathBuf, BlobStoreError> {
        if !testfleet_model::spec::is_sha256_hex(digest) {
            return Err(BlobStoreError::BadDigest(digest.chars().take(80).collect()));
        }
        Ok(self.dir.join("manifests").join(digest))
    }

    /// The files of `digests` that are not here. Those that are count as used now: the client
    /// that asked will name them in a manifest next.
    pub fn find_missing(&self, digests: &[BlobDigest]) -> std::io::Result<Vec<BlobDigest>> {
        let _held = self.lock();
        let mut missing = Vec::new();
        for d in digests {
            if d.size == 0 {
                // The empty file is always here: it is made, never sent.
                continue;
            }
            if !mark_used(&self.path_of(d)) {
                missing.push(*d);
            }
        }
        Ok(missing)
    }

    /// Starts receiving the file `digest` names, as one zstd frame.
    pub fn begin(&self, digest: BlobDigest) -> Result<BlobUpload, BlobStoreError> {
        if digest.size > self.max_bytes {
            return Err(BlobStoreError::TooLarge {
                size: digest.size,
                limit: self.max_bytes,
            });
        }
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}-{}", digest.sha256_hex(), unique_suffix()));
        let file = std::fs::File::create_new(&tmp)?;
        Ok(BlobUpload {
            digest,
            file,
            check: Some(VerifyingDecoder::new(digest, std::io::sink())?),
            tmp,
            final_path: self.path_of(&digest),
        })
    }

    /// Stores the manifest `bytes` under `digest` if every file it names is here; otherwise
    /// stores nothing and returns the files it lacks (to be uploaded before asking again).
    pub fn put_manifest(
        &self,
        digest: &str,
        bytes: &[u8],
    ) -> Result<Vec<BlobDigest>, BlobStoreError> {
        let path = self.manifest_path(digest)?;
        let actual = hex::encode(Sha256::digest(bytes));
        if actual != digest {
            return Err(BlobStoreError::BadManifest(format!(
                "it hashes to {actual}, not {digest}"
            )));
        }
        let limits = ManifestLimits {
            max_total_bytes: self.max_bytes,
            ..ManifestLimits::from(testfleet_bundle::ExtractLimits::default())
        };
        let manifest = Manifest::parse(bytes, &limits)
            .map_err(|e| BlobStoreError::BadManifest(e.to_string()))?;
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("manifest-{digest}-{}", unique_suffix()));
        let written = write_synced(&tmp, bytes);
        let _held = self.lock();
        let mut missing = Vec::new();
        for e in manifest.entries() {
            let d = BlobDigest {
                sha256: e.sha256,
                size: e.size,
            };
            if d.size > 0 && !mark_used(&self.path_of(&d)) {
                missing.push(d);
            }
        }
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        if !missing.is_empty() {
            let _ = std::fs::remove_file(&tmp);
            missing.sort_unstable_by_key(|d| d.sha256);
            missing.dedup();
            return Ok(missing);
        }
        std::fs::rename(&tmp, &path)?;
        Ok(Vec::new())
    }

    /// Whether the manifest `digest` is here with every file it names; if it is, it counts as
    /// used now. One whose file was removed as damaged is not: its client sends that file again.
    pub fn has_manifest(&self, digest: &str) -> Result<bool, BlobStoreError> {
        let path = self.manifest_path(digest)?;
        let _held = self.lock();
        if !mark_used(&path) {
            return Ok(false);
        }
        let Some(manifest) = std::fs::read(&path)
            .ok()
            .and_then(|bytes| Manifest::parse(&bytes, &UNBOUNDED).ok())
        else {
            return Ok(false);
        };
        Ok(manifest.entries().iter().all(|e| {
            e.size == 0
                || self
                    .path_of(&BlobDigest {
                        sha256: e.sha256,
                        size: e.size,
                    })
                    .is_file()
        }))
    }

    /// The manifest `digest`, if it is here. One whose bytes no longer hash to its digest
    /// (damaged on disk) is removed and said to be damaged: the next run uploads it again.
    pub fn manifest(&self, digest: &str) -> Result<Option<Vec<u8>>, BlobStoreError> {
        let path = self.manifest_path(digest)?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != digest {
            let _held = self.lock();
            let _ = std::fs::remove_file(&path);
            tracing::error!(%digest, %actual, "a stored bundle manifest is damaged: removed; the next run of its bundle uploads it again");
            return Err(BlobStoreError::Damaged(format!(
                "the manifest of bundle {digest} is damaged on the coordinator (it hashes to {actual}); it was removed, and the next run of this bundle uploads it again"
            )));
        }
        Ok(Some(bytes))
    }

    /// Removes the stored file `d`, whose frame (as `opened`, read from it) no longer decodes to
    /// what it names: the next client that names it uploads it again. A file put in its place
    /// since (a new upload) is another inode, and stays.
    pub fn remove_damaged(
        &self,
        d: &BlobDigest,
        opened: &std::fs::Metadata,
        why: &str,
    ) -> BlobStoreError {
        use std::os::unix::fs::MetadataExt;
        let path = self.path_of(d);
        let _held = self.lock();
        if std::fs::metadata(&path)
            .is_ok_and(|m| m.dev() == opened.dev() && m.ino() == opened.ino())
        {
            let _ = std::fs::remove_file(&path);
        }
        tracing::error!(file = %d, error = why, "a stored bundle file is damaged: removed; the next run that names it uploads it again");
        BlobStoreError::Damaged(format!(
            "file {d} of the bundle is damaged on the coordinator ({why}); it was removed, and the next run of this bundle uploads it again"
        ))
    }

    /// Removes what has not been used since `cutoff` and that no kept bundle needs: manifests not
    /// in `keep` (the bundles of unfinished runs), then files no remaining manifest names, then
    /// uploads left unfinished. The lock is held for each decision, not for the whole pass: a file
    /// is removed only if, under the lock, it is still unused since `cutoff`, and whatever found
    /// it here (a client asking what is missing, a manifest being stored) marked it used under the
    /// same lock, so what a client was just told is here stays.
    pub fn collect(
        &self,
        cutoff: SystemTime,
        keep: &HashSet<String>,
    ) -> std::io::Result<CollectedBlobs> {
        let mut collected = CollectedBlobs::default();
        let manifests = self.dir.join("manifests");
        {
            let _held = self.lock();
            for entry in std::fs::read_dir(&manifests)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) || !unused_since(&entry.path(), cutoff) {
                    continue;
                }
                std::fs::remove_file(entry.path())?;
                collected.manifests += 1;
            }
        }
        // The files the remaining manifests name (a manifest stored from now on marked its files
        // used, so they are not old either).
        let mut named = HashSet::new();
        for entry in std::fs::read_dir(&manifests)? {
            let entry = entry?;
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            match Manifest::parse(&bytes, &UNBOUNDED) {
                Ok(m) => named.extend(m.entries().iter().map(|e| (e.sha256, e.size))),
                Err(e) => {
                    tracing::warn!(manifest = %entry.path().display(), error = %e, "an unreadable manifest: its files are kept");
                    return Ok(collected);
                }
            }
        }
        for shard in std::fs::read_dir(self.dir.join("cas"))? {
            let shard = shard?.path();
            let mut old = Vec::new();
            for entry in std::fs::read_dir(&shard)? {
                let entry = entry?;
                let Some(d) = parse_name(&entry.file_name().to_string_lossy()) else {
                    continue;
                };
                if !named.contains(&(d.sha256, d.size)) && unused_since(&entry.path(), cutoff) {
                    old.push(entry.path());
                }
            }
            let _held = self.lock();
            for path in old {
                // Looked at again: found meanwhile, it was marked used.
                if unused_since(&path, cutoff) {
                    let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                    std::fs::remove_file(&path)?;
                    collected.files += 1;
                    collected.bytes += len;
                }
            }
        }
        for entry in std::fs::read_dir(self.dir.join("tmp"))? {
            let entry = entry?;
            if unused_since(&entry.path(), cutoff) {
                std::fs::remove_file(entry.path())?;
                collected.leftovers += 1;
            }
        }
        Ok(collected)
    }
}

/// Limits for reading back a stored manifest: it was checked against the real ones when stored.
const UNBOUNDED: ManifestLimits = ManifestLimits {
    max_entries: u64::MAX,
    max_total_bytes: u64::MAX,
    max_manifest_bytes: u64::MAX,
};

/// A file's digest from its name in `cas/`.
fn parse_name(name: &str) -> Option<BlobDigest> {
    let (hex, size) = name.split_once('-')?;
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(hex, &mut sha256).ok()?;
    Some(BlobDigest {
        sha256,
        size: size.parse().ok()?,
    })
}

/// Whether `path` is here and was last used before `cutoff`.
fn unused_since(path: &Path, cutoff: SystemTime) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t < cutoff)
}

/// Whether `path` is here; if it is, marks it used now (its modification time). Call with the lock
/// held.
fn mark_used(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // Read-only files: the time is set through the descriptor, which futimens allows to the owner.
    if let Err(e) = file.set_modified(SystemTime::now()) {
        tracing::warn!(path = %path.display(), error = %e, "could not mark a stored file as used");
    }
    true
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create_new(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A file being received; it becomes visible only once what it decompresses to is what its
/// digest names. Dropped unfinished, it leaves nothing behind.
pub struct BlobUpload {
    digest: BlobDigest,
    file: std::fs::File,
    /// What the frame decompresses to, checked as it arrives (taken when finished).
    check: Option<VerifyingDecoder<std::io::Sink>>,
    tmp: PathBuf,
    final_path: PathBuf,
}

impl BlobUpload {
    /// The next bytes of the frame.
    pub fn write(&mut self, compressed: &[u8]) -> Result<(), BlobStoreError> {
        let check = self.check.as_mut().expect("no write after finish");
        check
            .write_all(compressed)
            .map_err(|e| refused(self.digest, e))?;
        self.file.write_all(compressed)?;
        Ok(())
    }

    /// Checks the file and makes it visible.
    pub fn finish(mut self) -> Result<(), BlobStoreError> {
        let check = self.check.take().expect("an upload is finished once");
        check
            .finish()
            .map_err(|e| BlobStoreError::Refused(self.digest, e))?;
        self.file.sync_all()?;
        self.file
            .set_permissions(std::fs::Permissions::from_mode(0o444))?;
        if let Some(shard) = self.final_path.parent() {
            std::fs::create_dir_all(shard)?;
        }
        // Another upload of the same file may have been first: the same verified bytes replace it.
        std::fs::rename(&self.tmp, &self.final_path)?;
        Ok(())
    }
}

fn refused(digest: BlobDigest, e: std::io::Error) -> BlobStoreError {
    BlobStoreError::Refused(
        digest,
        BundleError::DigestMismatch {
            expected: digest.to_string(),
            actual: format!("a frame that does not decode to it ({e})"),
        },
    )
}

impl Drop for BlobUpload {
    fn drop(&mut self) {
        // After a finish the temporary file was renamed away and this is a no-op.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests;
