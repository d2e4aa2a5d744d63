//! Safe extraction: the archive's digest is verified before anything is unpacked, every entry is
//! checked before it is written, and nothing — through `..`, absolute paths, links, device files or
//! sheer size — ever lands outside the target directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::{BundleError, digest_file};

/// Bounds on what one bundle may unpack to (decompression bombs).
#[derive(Clone, Copy, Debug)]
pub struct ExtractLimits {
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits {
            max_unpacked_bytes: 16 << 30,
            max_entries: 100_000,
        }
    }
}

/// Verifies `archive` against `expected_digest`, then unpacks it into `dest` (which must not exist
/// yet or be empty). On error, `dest` may hold a partial tree; the caller removes it.
pub fn extract(
    archive: &Path,
    expected_digest: &str,
    dest: &Path,
    limits: ExtractLimits,
) -> Result<(), BundleError> {
    let actual = digest_file(archive)?;
    if actual != expected_digest {
        return Err(BundleError::DigestMismatch {
            expected: expected_digest.to_owned(),
            actual,
        });
    }
    std::fs::create_dir_all(dest)
        .map_err(BundleError::io("failed to create extraction dir", dest))?;
    let file = File::open(archive).map_err(BundleError::io("failed to open bundle", archive))?;
    let decoder =
        zstd::Decoder::new(file).map_err(BundleError::io("failed to read bundle", archive))?;
    let mut tar = tar::Archive::new(decoder);
    let mut unpacked = 0u64;
    let mut count = 0u64;
    let entries = tar
        .entries()
        .map_err(BundleError::io("failed to read bundle", archive))?;
    for entry in entries {
        let mut entry = entry.map_err(BundleError::io("corrupt bundle entry in", archive))?;
        count += 1;
        if count > limits.max_entries {
            return Err(BundleError::TooLarge {
                what: "entry count",
                limit: limits.max_entries,
            });
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = safe_relative(&raw)?;
        let target = dest.join(&rel);
        ensure_parents_inside(dest, &rel, &raw)?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target)
                    .map_err(BundleError::io("failed to create", &target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
                let budget = limits.max_unpacked_bytes - unpacked;
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true) // never follow or overwrite something already there
                    .mode(mode)
                    .open(&target)
                    .map_err(BundleError::io("failed to create", &target))?;
                let written = io::copy(&mut (&mut entry).take(budget + 1), &mut out)
                    .map_err(BundleError::io("failed to write", &target))?;
                unpacked += written;
                if written > budget {
                    return Err(BundleError::TooLarge {
                        what: "unpacked size",
                        limit: limits.max_unpacked_bytes,
                    });
                }
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                check_link_target(&link, &raw)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(BundleError::io("failed to create link", &target))?;
            }
            other => {
                return Err(BundleError::UnsafeEntry {
                    path: raw,
                    reason: format!(
                        "entry type {other:?} is not allowed (only files, directories and inner symlinks)"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// A path inside the bundle made only of normal components.
fn safe_relative(raw: &str) -> Result<PathBuf, BundleError> {
    let reject = |reason: &str| BundleError::UnsafeEntry {
        path: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let p = Path::new(raw);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(reject("path contains `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(reject("absolute path")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(reject("empty path"));
    }
    Ok(out)
}

/// Refuses to write through a parent that is a symlink: a link that points inside today could be
/// combined with later entries to reach outside.
fn ensure_parents_inside(dest: &Path, rel: &Path, raw: &str) -> Result<(), BundleError> {
    let mut cur = dest.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(BundleError::UnsafeEntry {
                    path: raw.to_owned(),
                    reason: "path goes through a symlink".into(),
                });
            }
            Ok(m) if !m.is_dir() => {
                return Err(BundleError::UnsafeEntry {
                    path: raw.to_owned(),
                    reason: "a parent of the path is a file".into(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur).map_err(BundleError::io("failed to create", &cur))?;
            }
            Err(e) => return Err(BundleError::io("failed to inspect", &cur)(e)),
        }
    }
    Ok(())
}

/// A symlink may only point down, into its own directory's subtree: no `..`, nothing absolute.
/// Judging `..` lexically is not enough, because an earlier link can make `a/..` land elsewhere
/// (`d/B -> ..` and then `d/A -> B/../..` leaves the tree); downward-only links compose safely.
fn check_link_target(link: &str, raw: &str) -> Result<(), BundleError> {
    let reject = |reason: &str| BundleError::UnsafeEntry {
        path: raw.to_owned(),
        reason: reason.to_owned(),
    };
    if link.is_empty() {
        return Err(reject("symlink without a target"));
    }
    let target = Path::new(link);
    if target.is_absolute() {
        return Err(reject("symlink points to an absolute path"));
    }
    for c in target.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(reject(
                    "symlink points upwards (`..`), possibly outside the bundle",
                ));
            }
            _ => return Err(reject("symlink points to an absolute path")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BundleEntry, pack};
    use std::io::Write;

    /// Writes an archive whose entry names and types are set byte for byte, as an attacker would.
    fn hostile(
        dir: &Path,
        entries: &[(&str, tar::EntryType, &[u8], Option<&str>)],
    ) -> (PathBuf, String) {
        let path = dir.join("hostile.tar.zst");
        let file = File::create(&path).unwrap();
        let enc = zstd::Encoder::new(file, 1).unwrap();
        let mut b = tar::Builder::new(enc);
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_old();
            let nb = name.as_bytes();
            h.as_old_mut().name[..nb.len()].copy_from_slice(nb);
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap().flush().unwrap();
        let digest = digest_file(&path).unwrap();
        (path, digest)
    }

    fn rejects(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)], expect: &str) {
        let root = tempfile::tempdir().unwrap();
        let (archive, digest) = hostile(root.path(), entries);
        let dest = root.path().join("x/dest");
        let err = extract(&archive, &digest, &dest, ExtractLimits::default()).unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
        // Nothing was written anywhere in the root but the archive and the extraction dir.
        let mut names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["hostile.tar.zst", "x"]);
        assert_eq!(std::fs::read_dir(root.path().join("x")).unwrap().count(), 1);
    }

    use tar::EntryType as T;

    #[test]
    fn parent_dir_entries_are_rejected() {
        rejects(
            &[("../escape", T::Regular, b"x", None)],
            "path contains `..`",
        );
        rejects(
            &[("a/../../escape", T::Regular, b"x", None)],
            "path contains `..`",
        );
    }

    #[test]
    fn absolute_entries_are_rejected() {
        rejects(&[("/tmp/escape", T::Regular, b"x", None)], "absolute path");
    }

    #[test]
    fn links_out_are_rejected() {
        rejects(&[("l", T::Symlink, b"", Some("/etc"))], "absolute path");
        rejects(
            &[("l", T::Symlink, b"", Some("../.."))],
            "outside the bundle",
        );
        rejects(
            &[("a/l", T::Symlink, b"", Some("../../x"))],
            "outside the bundle",
        );
        rejects(&[("h", T::Link, b"", Some("../x"))], "not allowed");
        // Chained links that each look inside but together climb out.
        rejects(
            &[
                ("d/B", T::Symlink, b"", Some("..")),
                ("d/A", T::Symlink, b"", Some("B/../..")),
            ],
            "points upwards",
        );
    }

    #[test]
    fn downward_links_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let (archive, digest) = hostile(
            root.path(),
            &[
                ("d/f", T::Regular, b"x", None),
                ("link", T::Symlink, b"", Some("d/f")),
            ],
        );
        let dest = root.path().join("out");
        extract(&archive, &digest, &dest, ExtractLimits::default()).unwrap();
        assert_eq!(std::fs::read(dest.join("link")).unwrap(), b"x");
    }

    #[test]
    fn writing_through_an_inner_link_is_rejected() {
        rejects(
            &[
                ("d/f", T::Regular, b"x", None),
                ("l", T::Symlink, b"", Some("d")),
                ("l/g", T::Regular, b"x", None),
            ],
            "through a symlink",
        );
    }

    #[test]
    fn device_files_are_rejected() {
        rejects(&[("dev", T::Char, b"", None)], "not allowed");
        rejects(&[("fifo", T::Fifo, b"", None)], "not allowed");
        rejects(&[("blk", T::Block, b"", None)], "not allowed");
    }

    #[test]
    fn archives_of_countless_entries_stop_at_the_limit() {
        let root = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let entries: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), T::Regular, &b"x"[..], None))
            .collect();
        let (archive, digest) = hostile(root.path(), &entries);
        let limits = ExtractLimits {
            max_unpacked_bytes: 1 << 20,
            max_entries: 10,
        };
        let err = extract(&archive, &digest, &root.path().join("d"), limits).unwrap_err();
        assert!(err.to_string().contains("entry count"), "{err}");
        assert!(std::fs::read_dir(root.path().join("d")).unwrap().count() <= 10);
    }

    #[test]
    fn decompression_bombs_stop_at_the_limit() {
        let root = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 1 << 20];
        let (archive, digest) = hostile(root.path(), &[("big", T::Regular, &zeros, None)]);
        let limits = ExtractLimits {
            max_unpacked_bytes: 1000,
            max_entries: 10,
        };
        let err = extract(&archive, &digest, &root.path().join("d"), limits).unwrap_err();
        assert!(err.to_string().contains("unpacked size"), "{err}");
        assert!(std::fs::metadata(root.path().join("d/big")).unwrap().len() <= 1001);
    }

    #[test]
    fn a_digest_mismatch_unpacks_nothing() {
        let root = tempfile::tempdir().unwrap();
        let (archive, _) = hostile(root.path(), &[("ok", T::Regular, b"x", None)]);
        let err = extract(
            &archive,
            &"0".repeat(64),
            &root.path().join("d"),
            ExtractLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, BundleError::DigestMismatch { .. }), "{err}");
        assert!(!root.path().join("d").exists());
    }

    #[test]
    fn packed_bundles_round_trip_with_modes() {
        let root = tempfile::tempdir().unwrap();
        let exe = root.path().join("exe");
        std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let packed = pack(
            &[BundleEntry {
                archive_path: "bin/exe".into(),
                source: exe,
            }],
            &root.path().join("out"),
        )
        .unwrap();
        let dest = root.path().join("d");
        extract(
            &packed.path,
            &packed.digest,
            &dest,
            ExtractLimits::default(),
        )
        .unwrap();
        let meta = std::fs::metadata(dest.join("bin/exe")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o755
        );
    }
}
