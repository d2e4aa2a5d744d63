//! Laying a bundle out from a cache of its files: each manifest entry becomes a file under a fresh
//! directory, a hard link to the cached blob where nothing will write through it (a sandbox's
//! read-only lower layer), a clone or a copy otherwise. Paths come from a checked manifest
//! (relative, plain components, files only), directories are made here, and files are created
//! new, never overwritten, so nothing lands outside the directory or points elsewhere.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::BundleError;
use crate::manifest::{Manifest, ManifestEntry};

/// How files get from the cache into a layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Hard links, sharing the cached file (its mode included): only for layouts nothing writes
    /// to. Falls back to a clone or a copy where a link cannot be made (another filesystem, an
    /// inode's link limit, a cached file whose mode is not the entry's).
    Hardlink,
    /// A clone where the filesystem shares extents (btrfs, XFS), else a copy: files of their own.
    CloneOrCopy,
}

/// How each file of a layout was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayoutStats {
    pub linked: u64,
    pub cloned: u64,
    pub copied: u64,
}

/// Lays `manifest` out under `dest`, which must exist and be empty, taking each file's contents
/// from `blob_of(entry)` (already verified against the entry's digest).
pub fn layout(
    manifest: &Manifest,
    blob_of: impl Fn(&ManifestEntry) -> PathBuf,
    dest: &Path,
    mode: LinkMode,
) -> Result<LayoutStats, BundleError> {
    let mut stats = LayoutStats::default();
    for entry in manifest.entries() {
        let target = dest.join(&entry.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(BundleError::io("failed to create", parent))?;
        }
        let perms = std::fs::Permissions::from_mode(if entry.executable { 0o755 } else { 0o644 });
        if entry.size == 0 {
            let f = std::fs::File::create_new(&target)
                .map_err(BundleError::io("failed to create", &target))?;
            f.set_permissions(perms)
                .map_err(BundleError::io("failed to set the mode of", &target))?;
            stats.copied += 1;
            continue;
        }
        let blob = blob_of(entry);
        if mode == LinkMode::Hardlink && has_mode(&blob, &perms) {
            match std::fs::hard_link(&blob, &target) {
                Ok(()) => {
                    stats.linked += 1;
                    continue;
                }
                Err(e) if cannot_link(&e) => {}
                Err(e) => return Err(BundleError::io("failed to link", &target)(e)),
            }
        }
        let src = std::fs::File::open(&blob)
            .map_err(BundleError::io("failed to open the cached", &blob))?;
        let mut dst = std::fs::File::create_new(&target)
            .map_err(BundleError::io("failed to create", &target))?;
        if clone(&src, &dst) {
            stats.cloned += 1;
        } else {
            io::copy(&mut &src, &mut dst).map_err(BundleError::io("failed to copy to", &target))?;
            stats.copied += 1;
        }
        dst.set_permissions(perms)
            .map_err(BundleError::io("failed to set the mode of", &target))?;
    }
    Ok(stats)
}

/// Whether the cached file has the entry's mode: a link shares it, so one that differs is copied.
fn has_mode(blob: &Path, perms: &std::fs::Permissions) -> bool {
    std::fs::metadata(blob).is_ok_and(|m| m.permissions().mode() & 0o777 == perms.mode())
}

/// Errors after which a copy does what the link could not.
fn cannot_link(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EMLINK | libc::EPERM | libc::EOPNOTSUPP)
    )
}

/// Shares `src`'s extents with `dst` where the filesystem can (FICLONE); false where it cannot.
fn clone(src: &std::fs::File, dst: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: ioctl on two open descriptors; FICLONE takes the source descriptor as its argument.
    unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) == 0 }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::blob::hash_file;
    use crate::manifest::ManifestEntry;

    /// A cache of blobs by hex digest, and the manifest of `files` (path, contents, executable).
    fn cached(cache: &Path, files: &[(&str, &[u8], bool)]) -> Manifest {
        let mut entries = Vec::new();
        for (path, contents, executable) in files {
            let tmp = cache.join("tmp");
            std::fs::write(&tmp, contents).unwrap();
            let digest = hash_file(&tmp).unwrap();
            let mode = if *executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
            let name = format!(
                "{}{}",
                digest.sha256_hex(),
                if *executable { ".x" } else { "" }
            );
            std::fs::rename(&tmp, cache.join(name)).unwrap();
            entries.push(ManifestEntry {
                path: (*path).into(),
                sha256: digest.sha256,
                size: digest.size,
                executable: *executable,
            });
        }
        Manifest::from_entries(entries).unwrap()
    }

    fn blob_in(cache: &Path) -> impl Fn(&ManifestEntry) -> PathBuf + '_ {
        move |e| {
            cache.join(format!(
                "{}{}",
                e.sha256_hex(),
                if e.executable { ".x" } else { "" }
            ))
        }
    }

    /// Every file under `dir`, relative, with its contents and mode.
    fn tree(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                assert!(!m.file_type().is_symlink(), "{}", p.display());
                if m.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                    out.push((rel, std::fs::read(&p).unwrap(), m.mode() & 0o777));
                }
            }
        }
        out.sort();
        out
    }

    const FILES: &[(&str, &[u8], bool)] = &[
        ("target/debug/deps/basic-1f2e", b"\x7fELF test binary", true),
        ("ws/tests/data/input.txt", b"fixture data\n", false),
        ("ws/Cargo.toml", b"", false),
    ];

    fn expected() -> Vec<(String, Vec<u8>, u32)> {
        let mut out: Vec<_> = FILES
            .iter()
            .map(|(p, c, x)| ((*p).to_owned(), c.to_vec(), if *x { 0o755 } else { 0o644 }))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn hard_links_share_the_cached_files_and_copies_are_files_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let manifest = cached(&cache, FILES);

        let linked = dir.path().join("linked");
        std::fs::create_dir(&linked).unwrap();
        let stats = layout(&manifest, blob_in(&cache), &linked, LinkMode::Hardlink).unwrap();
        assert_eq!(tree(&linked), expected());
        assert_eq!((stats.linked, stats.cloned + stats.copied), (2, 1));
        let bin = linked.join("target/debug/deps/basic-1f2e");
        assert_eq!(std::fs::metadata(&bin).unwrap().nlink(), 2);

        let copied = dir.path().join("copied");
        std::fs::create_dir(&copied).unwrap();
        let stats = layout(&manifest, blob_in(&cache), &copied, LinkMode::CloneOrCopy).unwrap();
        assert_eq!(tree(&copied), expected());
        assert_eq!(stats.linked, 0);
        // Writing to a copy leaves the cache as it was.
        std::fs::write(copied.join("ws/tests/data/input.txt"), b"changed").unwrap();
        assert_eq!(tree(&linked), expected());
    }

    #[test]
    fn a_cached_file_whose_mode_is_not_the_entry_s_is_copied_with_the_entry_s_mode() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let manifest = cached(&cache, FILES);
        let bin = manifest.entries()[0].clone();
        let blob = blob_in(&cache)(&bin);
        std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let stats = layout(&manifest, blob_in(&cache), &dest, LinkMode::Hardlink).unwrap();
        assert_eq!(tree(&dest), expected());
        assert_eq!(stats.linked, 1);
        let mode = std::fs::metadata(&blob).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "the cached file's mode is not changed");
    }

    #[test]
    fn a_layout_never_overwrites_and_a_missing_blob_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let manifest = cached(&cache, FILES);
        let dest = dir.path().join("dest");
        std::fs::create_dir_all(dest.join("ws")).unwrap();
        std::fs::write(dest.join("ws/Cargo.toml"), b"there before").unwrap();
        for mode in [LinkMode::Hardlink, LinkMode::CloneOrCopy] {
            assert!(layout(&manifest, blob_in(&cache), &dest, mode).is_err());
            assert_eq!(
                std::fs::read(dest.join("ws/Cargo.toml")).unwrap(),
                b"there before"
            );
        }
        let empty = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        let err = layout(&manifest, blob_in(empty.path()), &fresh, LinkMode::Hardlink)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cached"), "{err}");
    }
}
