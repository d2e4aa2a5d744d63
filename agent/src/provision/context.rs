//! Build contexts: a directory packed as a deterministic tar, whose sha256 names the image, so an
//! agent builds each content once and reuses the image after that.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The tar of `dir` (sorted, zero mtimes and owners) and its hex sha256.
pub fn pack_context(dir: &Path) -> std::io::Result<(Vec<u8>, String)> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    add_dir(&mut builder, dir, Path::new(""))?;
    let bytes = builder.into_inner()?;
    let digest = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, digest))
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, dir: &Path, rel: &Path) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            add_dir(b, &path, &name)?;
        } else if meta.is_file() {
            b.append_path_with_name(&path, &name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_content_gives_the_same_digest() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("sub")).unwrap();
        std::fs::write(a.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(a.path().join("sub/f"), "x").unwrap();
        let (_, d1) = pack_context(a.path()).unwrap();
        std::fs::write(a.path().join("sub/f"), "x").unwrap(); // touched, same bytes
        let (_, d2) = pack_context(a.path()).unwrap();
        assert_eq!(d1, d2);
        std::fs::write(a.path().join("sub/f"), "y").unwrap();
        let (_, d3) = pack_context(a.path()).unwrap();
        assert_ne!(d1, d3);
    }
}
