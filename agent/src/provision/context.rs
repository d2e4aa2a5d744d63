//! Build contexts: a directory packed as a deterministic tar, whose sha256 names the image, so an
//! agent builds each content once and reuses the image after that. Symlinks are left out (a link
//! loop or a link to the host's files has no place in an image), and the size is bounded.

use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The largest build context packed.
pub const MAX_CONTEXT_BYTES: u64 = 1 << 30;

/// The tar of `dir` (sorted, zero mtimes and owners) and its hex sha256.
pub fn pack_context(dir: &Path) -> io::Result<(Vec<u8>, String)> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    let mut size = 0u64;
    add_dir(&mut builder, dir, Path::new(""), &mut size)?;
    let bytes = builder.into_inner()?;
    let digest = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, digest))
}

fn add_dir(
    b: &mut tar::Builder<Vec<u8>>,
    dir: &Path,
    rel: &Path,
    size: &mut u64,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Listed, then gone: a temporary file of some other process.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            add_dir(b, &path, &name, size)?;
        } else if meta.is_file() {
            *size += meta.len();
            if *size > MAX_CONTEXT_BYTES {
                return Err(io::Error::other(format!(
                    "the build context is larger than {} MiB",
                    MAX_CONTEXT_BYTES >> 20
                )));
            }
            b.append_path_with_name(&path, &name)?;
        } else {
            tracing::debug!(path = %path.display(), "left out of the build context: not a regular file");
        }
    }
    Ok(())
}

/// The images a Dockerfile builds `FROM`, except `scratch` and its own earlier stages.
pub fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut bases = Vec::new();
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            continue;
        }
        let args: Vec<&str> = words[1..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let Some(image) = args.first() else { continue };
        let image = image.to_string();
        if !image.eq_ignore_ascii_case("scratch")
            && !stages.iter().any(|s| s.eq_ignore_ascii_case(&image))
        {
            bases.push(image);
        }
        if let (Some(kw), Some(stage)) = (args.get(1), args.get(2))
            && kw.eq_ignore_ascii_case("AS")
        {
            stages.push(stage.to_string());
        }
    }
    bases
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

    #[test]
    fn symlinks_are_left_out_so_loops_cannot_hang_or_leak() {
        let a = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::os::unix::fs::symlink(a.path(), a.path().join("loop")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", a.path().join("secret")).unwrap();
        let (tar, _) = pack_context(a.path()).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["Dockerfile"]);
    }

    #[test]
    fn base_images_skip_scratch_and_stages() {
        let df = "# comment\nFROM --platform=linux/amd64 local/builder:1 AS build\nRUN x\nfrom build\nFROM scratch\nFROM local/runtime:2\n";
        assert_eq!(base_images(df), ["local/builder:1", "local/runtime:2"]);
        assert!(base_images("FROM scratch\nCOPY a /a\n").is_empty());
    }
}
