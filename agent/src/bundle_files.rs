//! The agent's cache of bundles' files by digest, for bundles of content-addressed files: each
//! file is downloaded once, checked against its digest before it is kept, and shared by every
//! bundle that names it (a layout links or copies it; `bundle_manifest` fetches into it).
//!
//! `<dir>/<first two hex digits>/<sha256>-<size>` holds a file's contents, with `.x` for the
//! executable copy: a hard link shares its inode's mode, so each mode is a file of its own. A
//! file's modification time is its last use; files unused for the retention are removed, except
//! those a kept layout still links (removing them would free nothing; a layout of copies keeps
//! its own). Agents may share the directory: each writes under
//! a temporary name of its own, and the first to place a file keeps it.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use testfleet_bundle::BundleError;
use testfleet_bundle::blob::{BlobDigest, VerifyingDecoder};
use testfleet_bundle::temp_name::unique_suffix;

#[derive(Clone, Debug)]
pub struct FileCache {
    dir: PathBuf,
}

impl FileCache {
    pub fn new(dir: PathBuf) -> Self {
        FileCache { dir }
    }

    /// Where the file `digest` is kept, in the mode a bundle wants it.
    pub fn path_of(&self, digest: &BlobDigest, executable: bool) -> PathBuf {
        let hex = digest.sha256_hex();
        let suffix = if executable { ".x" } else { "" };
        self.dir
            .join(&hex[..2])
            .join(format!("{hex}-{}{suffix}", digest.size))
    }

    /// Whether the file is here with its size; if it is, it counts as used now.
    pub fn has(&self, digest: &BlobDigest, executable: bool) -> bool {
        let path = self.path_of(digest, executable);
        let here = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == digest.size);
        if here {
            mark_used(&path);
        }
        here
    }

    /// Starts receiving the file `digest` as a zstd frame.
    pub fn begin(&self, digest: BlobDigest, executable: bool) -> Result<Incoming, BundleError> {
        let final_path = self.path_of(&digest, executable);
        let shard = final_path.parent().expect("a file's path has a shard");
        std::fs::create_dir_all(shard).map_err(BundleError::io("failed to create", shard))?;
        let tmp = shard.join(format!(
            ".incoming-{}-{}",
            digest.sha256_hex(),
            unique_suffix()
        ));
        let file =
            std::fs::File::create_new(&tmp).map_err(BundleError::io("failed to create", &tmp))?;
        let check = VerifyingDecoder::new(digest, file)
            .map_err(BundleError::io("failed to start decoding into", &tmp))?;
        Ok(Incoming {
            check: Some(check),
            executable,
            tmp,
            final_path,
        })
    }

    /// Removes files and leftovers of interrupted downloads unused since `cutoff`; returns how
    /// many.
    pub fn collect(&self, cutoff: SystemTime) -> std::io::Result<usize> {
        let mut removed = 0;
        let shards = match std::fs::read_dir(&self.dir) {
            Ok(shards) => shards,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for shard in shards {
            let shard = shard?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&shard)? {
                let entry = entry?;
                // A file some bundle's layout links is still named by a kept bundle. A download
                // interrupted after it placed its file (a link of its own) goes all the same.
                let leftover = entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".incoming-");
                let old = entry.metadata().is_ok_and(|m| {
                    (leftover || m.nlink() == 1) && m.modified().is_ok_and(|t| t < cutoff)
                });
                if old {
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

fn mark_used(path: &Path) {
    if let Err(e) = std::fs::File::open(path).and_then(|f| f.set_modified(SystemTime::now())) {
        tracing::warn!(path = %path.display(), error = %e, "could not mark a cached bundle file as used");
    }
}

/// A file being received; kept only once its contents are what its digest names. Dropped
/// unfinished, it leaves nothing behind.
pub struct Incoming {
    /// Taken when finished.
    check: Option<VerifyingDecoder<std::fs::File>>,
    executable: bool,
    tmp: PathBuf,
    final_path: PathBuf,
}

impl Incoming {
    /// The next bytes of the frame.
    pub fn write(&mut self, compressed: &[u8]) -> Result<(), BundleError> {
        let check = self.check.as_mut().expect("no write after finish");
        check
            .write_all(compressed)
            .map_err(BundleError::io("failed to write", &self.tmp))
    }

    /// Checks the file, gives it its mode, and puts it in place; returns where it is.
    pub fn finish(mut self) -> Result<PathBuf, BundleError> {
        let check = self.check.take().expect("a download is finished once");
        let file = check.finish()?;
        let io = |what| BundleError::io(what, &self.tmp);
        file.sync_all().map_err(io("failed to sync"))?;
        let mode = if self.executable { 0o755 } else { 0o644 };
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("failed to set the mode of"))?;
        drop(file);
        // Linked, not renamed: a file another agent sharing the dir placed first stays, and no
        // layout linking it ever sees it replaced.
        match std::fs::hard_link(&self.tmp, &self.final_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => mark_used(&self.final_path),
            Err(e) => return Err(BundleError::io("failed to place", &self.final_path)(e)),
        }
        Ok(self.final_path.clone())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Finished or not, the temporary name goes.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    use testfleet_bundle::blob::compress;

    use super::*;

    fn frame(contents: &[u8]) -> (BlobDigest, Vec<u8>) {
        let mut bytes = Vec::new();
        let digest = compress(contents, &mut bytes).unwrap();
        (digest, bytes)
    }

    fn receive(
        cache: &FileCache,
        d: BlobDigest,
        exec: bool,
        bytes: &[u8],
    ) -> Result<PathBuf, BundleError> {
        let mut incoming = cache.begin(d, exec)?;
        for piece in bytes.chunks(100) {
            incoming.write(piece)?;
        }
        incoming.finish()
    }

    /// Every file under `dir`, temporary ones included.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for shard in std::fs::read_dir(dir).into_iter().flatten() {
            let shard = shard.unwrap().path();
            for f in std::fs::read_dir(&shard).unwrap() {
                out.push(f.unwrap().path());
            }
        }
        out
    }

    #[test]
    fn a_file_is_kept_once_checked_in_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(dir.path().join("files"));
        let (d, bytes) = frame(b"\x7fELF a test binary");
        assert!(!cache.has(&d, true));
        let placed = receive(&cache, d, true, &bytes).unwrap();
        assert_eq!(std::fs::read(&placed).unwrap(), b"\x7fELF a test binary");
        assert_eq!(std::fs::metadata(&placed).unwrap().mode() & 0o777, 0o755);
        assert!(cache.has(&d, true));
        // The other mode is a file of its own.
        assert!(!cache.has(&d, false));
        let plain = receive(&cache, d, false, &bytes).unwrap();
        assert_eq!(std::fs::metadata(&plain).unwrap().mode() & 0o777, 0o644);
        assert_eq!(files(&dir.path().join("files")).len(), 2);
    }

    #[test]
    fn a_file_that_does_not_check_out_or_is_cut_off_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(dir.path().join("files"));
        let (d, _) = frame(b"what the digest names");
        let (_, other) = frame(b"what the bytes are!!!");
        assert!(matches!(
            receive(&cache, d, false, &other),
            Err(BundleError::DigestMismatch { .. })
        ));
        let (big, bytes) = frame(&vec![3u8; 1 << 20]);
        let mut incoming = cache.begin(big, false).unwrap();
        incoming.write(&bytes[..bytes.len() / 2]).unwrap();
        drop(incoming);
        assert!(files(&dir.path().join("files")).is_empty());
        assert!(!cache.has(&d, false) && !cache.has(&big, false));
    }

    #[test]
    fn a_file_placed_first_by_another_agent_stays() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(dir.path().join("files"));
        let (d, bytes) = frame(b"shared by two agents");
        let mut first = cache.begin(d, false).unwrap();
        let mut second = cache.begin(d, false).unwrap();
        first.write(&bytes).unwrap();
        second.write(&bytes).unwrap();
        let placed = first.finish().unwrap();
        let inode = std::fs::metadata(&placed).unwrap().ino();
        assert_eq!(second.finish().unwrap(), placed);
        assert_eq!(std::fs::metadata(&placed).unwrap().ino(), inode);
        assert_eq!(files(&dir.path().join("files")).len(), 1);
    }

    #[test]
    fn files_unused_since_the_cutoff_go_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(dir.path().join("files"));
        assert_eq!(cache.collect(SystemTime::now()).unwrap(), 0);
        let (old, old_bytes) = frame(b"unused for days");
        let (used, used_bytes) = frame(b"used just now");
        let old_path = receive(&cache, old, false, &old_bytes).unwrap();
        let used_path = receive(&cache, used, false, &used_bytes).unwrap();
        let day = Duration::from_secs(86_400);
        for p in [&old_path, &used_path] {
            let f = std::fs::File::open(p).unwrap();
            f.set_modified(SystemTime::now() - 2 * day).unwrap();
        }
        // A bundle being laid out finds it: it counts as used.
        assert!(cache.has(&used, false));
        assert_eq!(cache.collect(SystemTime::now() - day).unwrap(), 1);
        assert!(!old_path.exists() && used_path.exists());
    }
}
