//! A run's bundle as a manifest of content-addressed files: each entry's digest (from the digest
//! cache, or read on a few threads), its mode, and where the file is here, for the upload.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use testfleet_bundle::BundleEntry;
use testfleet_bundle::blob::BlobDigest;
use testfleet_bundle::manifest::{Manifest, ManifestEntry};

use super::digest_cache::{DigestCache, FileStamp};
use crate::error::{CliError, CliResult};

/// A bundle ready to send: its manifest's canonical text, the sha256 of that (the bundle's
/// digest), and a file here for each of the digests it names.
pub struct FileBundle {
    pub text: Vec<u8>,
    pub digest: String,
    pub sources: HashMap<BlobDigest, PathBuf>,
    /// Each entry's digest (files with the same contents count once in `sources`).
    pub entries: Vec<BlobDigest>,
}

/// Hashes `entries` (the cache at `cache_path` spares files hashed before) into a manifest.
pub fn build(entries: Vec<BundleEntry>, cache_path: &Path) -> CliResult<FileBundle> {
    let mut cache = DigestCache::load(cache_path);
    let started = filesystem_now(cache_path);
    // Per entry: its version here, its mode, and its digest once known.
    let mut files: Vec<(FileStamp, bool, Option<BlobDigest>)> = Vec::with_capacity(entries.len());
    let mut to_hash = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let meta = std::fs::metadata(&e.source).map_err(|err| unreadable(&e.source, &err))?;
        if !meta.is_file() {
            return Err(CliError::Bundle(format!(
                "cannot bundle {}: only regular files can be bundled",
                e.source.display()
            )));
        }
        let stamp = FileStamp::of(&meta);
        let known = cache.get(&stamp).map(|sha256| BlobDigest {
            sha256,
            size: meta.len(),
        });
        if known.is_none() {
            to_hash.push(i);
        }
        files.push((stamp, meta.permissions().mode() & 0o111 != 0, known));
    }
    for (i, digest) in hash_all(&entries, &to_hash)? {
        let (stamp, _, known) = &mut files[i];
        let after = std::fs::metadata(&entries[i].source)
            .map(|m| FileStamp::of(&m))
            .map_err(|err| unreadable(&entries[i].source, &err))?;
        cache.insert(*stamp, after, started, digest.sha256);
        // Named as read: a file that changes before it is sent fails its upload's check.
        *known = Some(digest);
    }
    let mut sources = HashMap::new();
    let mut manifest_entries = Vec::with_capacity(entries.len());
    let mut digests = Vec::with_capacity(entries.len());
    for (e, (_, executable, digest)) in entries.into_iter().zip(files) {
        let d = digest.expect("every file was hashed or found");
        sources.entry(d).or_insert_with(|| e.source.clone());
        digests.push(d);
        manifest_entries.push(ManifestEntry {
            path: e.archive_path,
            sha256: d.sha256,
            size: d.size,
            executable,
        });
    }
    let manifest = Manifest::from_entries(manifest_entries)
        .map_err(|e| CliError::Bundle(format!("cannot build the bundle: {e}")))?;
    cache.save();
    Ok(FileBundle {
        entries: digests,
        digest: manifest.digest(),
        text: manifest.to_bytes(),
        sources,
    })
}

/// The time now by the clock of the filesystem the cache is on (written as a file's modification
/// time): a network filesystem's server may be ahead of this machine, and a file written there a
/// moment ago must not look settled. This machine's clock if the file cannot be written.
fn filesystem_now(cache_path: &Path) -> SystemTime {
    let probe = cache_path.with_extension("now");
    probe
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&probe, b"now"))
        .and_then(|()| std::fs::metadata(&probe))
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| SystemTime::now())
}

fn unreadable(path: &Path, err: &std::io::Error) -> CliError {
    CliError::Bundle(format!("cannot bundle {}: {err}", path.display()))
}

/// The digests of `entries[i]` for each `i` of `which`, read on up to four threads (hashing is
/// the cost; the disk's cache usually holds freshly built binaries).
fn hash_all(entries: &[BundleEntry], which: &[usize]) -> CliResult<Vec<(usize, BlobDigest)>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(which.len().max(1));
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(which.len()));
    let failed = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = which.get(k) else { break };
                    match testfleet_bundle::blob::hash_file(&entries[i].source) {
                        Ok(d) => out.lock().expect("digests").push((i, d)),
                        Err(e) => {
                            *failed.lock().expect("failure") = Some(e);
                            next.store(which.len(), Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().expect("failure") {
        return Err(CliError::Bundle(format!("cannot bundle: {e}")));
    }
    Ok(out.into_inner().expect("digests"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_names_each_file_once_by_contents_and_keeps_the_executable_bit() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, data: &[u8], mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            BundleEntry {
                archive_path: format!("ws/{name}"),
                source: p,
            }
        };
        let entries = vec![
            file("b.txt", b"same", 0o644),
            file("a.txt", b"same", 0o644),
            file("tool", b"#!/bin/sh\n", 0o755),
        ];
        let cache = dir.path().join("digests.v1");
        let bundle = build(entries.clone(), &cache).unwrap();
        assert_eq!(bundle.entries.len(), 3);
        assert_eq!(bundle.sources.len(), 2, "two files with one contents");
        let text = String::from_utf8(bundle.text.clone()).unwrap();
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert!(lines[0].ends_with(" 4 644 ws/a.txt"), "{text}");
        assert!(lines[2].ends_with(" 10 755 ws/tool"), "{text}");
        // Built again (from the digest cache where it may): the same bundle.
        assert_eq!(build(entries, &cache).unwrap().digest, bundle.digest);
    }
}
