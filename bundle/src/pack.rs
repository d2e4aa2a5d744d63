//! Deterministic packing: entries sorted by path, owner 0, mtime 0, only the executable bit kept —
//! so identical inputs give identical bytes and therefore the same digest.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{BundleError, Sha256Writer};

/// One file to put into a bundle.
#[derive(Clone, Debug)]
pub struct BundleEntry {
    /// Relative path inside the bundle, `/`-separated.
    pub archive_path: String,
    pub source: PathBuf,
}

#[derive(Debug)]
pub struct PackedBundle {
    pub digest: String,
    pub size: u64,
    pub path: PathBuf,
}

/// Packs `entries` into `dir/<digest>.tar.zst` and returns where and what it is.
pub fn pack(entries: &[BundleEntry], dir: &Path) -> Result<PackedBundle, BundleError> {
    std::fs::create_dir_all(dir).map_err(BundleError::io("failed to create bundle dir", dir))?;
    let tmp = dir.join(format!(".packing-{}", std::process::id()));
    let file = File::create(&tmp).map_err(BundleError::io("failed to create bundle", &tmp))?;
    let hashed = Sha256Writer::new(BufWriter::new(file));
    let encoder =
        zstd::Encoder::new(hashed, 3).map_err(BundleError::io("failed to start zstd", &tmp))?;
    let mut builder = tar::Builder::new(encoder);
    builder.mode(tar::HeaderMode::Deterministic);

    let mut sorted: Vec<&BundleEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.archive_path.cmp(&b.archive_path));
    sorted.dedup_by(|a, b| a.archive_path == b.archive_path);
    for e in sorted {
        append_file(&mut builder, e)?;
    }
    let encoder = builder
        .into_inner()
        .map_err(BundleError::io("failed to finish tar", &tmp))?;
    let hashed = encoder
        .finish()
        .map_err(BundleError::io("failed to finish zstd", &tmp))?;
    let (digest, size, mut writer) = hashed.finish();
    writer
        .flush()
        .map_err(BundleError::io("failed to write bundle", &tmp))?;
    drop(writer);
    let path = dir.join(format!("{digest}.tar.zst"));
    std::fs::rename(&tmp, &path).map_err(BundleError::io("failed to store bundle", &path))?;
    Ok(PackedBundle { digest, size, path })
}

fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    e: &BundleEntry,
) -> Result<(), BundleError> {
    let meta =
        std::fs::metadata(&e.source).map_err(BundleError::io("failed to read", &e.source))?;
    if !meta.is_file() {
        return Err(BundleError::UnsafeEntry {
            path: e.source.display().to_string(),
            reason: "only regular files can be bundled".into(),
        });
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(meta.len());
    let exec = meta.permissions().mode() & 0o111 != 0;
    header.set_mode(if exec { 0o755 } else { 0o644 });
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    let file = File::open(&e.source).map_err(BundleError::io("failed to open", &e.source))?;
    builder
        .append_data(&mut header, &e.archive_path, file)
        .map_err(BundleError::io("failed to add to bundle", &e.source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_digest_regardless_of_order_and_mtime() {
        let src = tempfile::tempdir().unwrap();
        let a = src.path().join("a");
        let b = src.path().join("b");
        std::fs::write(&a, b"alpha").unwrap();
        std::fs::write(&b, b"beta").unwrap();
        let entries = vec![
            BundleEntry {
                archive_path: "x/a".into(),
                source: a.clone(),
            },
            BundleEntry {
                archive_path: "b".into(),
                source: b.clone(),
            },
        ];
        let out = tempfile::tempdir().unwrap();
        let first = pack(&entries, out.path()).unwrap();
        std::fs::write(&a, b"alpha").unwrap(); // new mtime, same bytes
        let reversed: Vec<_> = entries.iter().rev().cloned().collect();
        let second = pack(&reversed, out.path()).unwrap();
        assert_eq!(first.digest, second.digest);
        assert_eq!(crate::digest_file(&second.path).unwrap(), second.digest);

        std::fs::write(&a, b"alpha2").unwrap();
        let third = pack(&entries, out.path()).unwrap();
        assert_ne!(first.digest, third.digest);
    }
}
