//! A bundle as a manifest of content-addressed files: every file's path, mode, size and sha256 in
//! one canonical text, whose own sha256 names the bundle. Sides that hold most of a bundle's files
//! already (a coordinator, an agent's cache) then move only the files they lack.
//!
//! The text has exactly one form for a given set of files, and `parse` accepts nothing else, so a
//! digest names one byte string:
//!
//! ```text
//! testfleet-manifest 1
//! <sha256, 64 lowercase hex> <size, decimal> <644|755> <path>
//! ```
//!
//! one line per file, sorted by the path's bytes. Paths are relative, `/`-separated, with no `.`,
//! `..` or empty component, no NUL, CR or LF; no path is a directory of another. Only regular
//! files exist in a manifest (bundles have never carried links or special files), so laying one
//! out can create nothing that points elsewhere.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use crate::BundleError;
use crate::extract::ExtractLimits;

/// The manifest's first line: the format's version, which also fixes the digest function.
pub const VERSION_LINE: &str = "testfleet-manifest 1";

/// The longest path a manifest holds, in bytes.
const MAX_PATH_BYTES: usize = 4096;
/// The longest path component, in bytes (most filesystems' own limit).
const MAX_COMPONENT_BYTES: usize = 255;
/// The deepest path, in components.
const MAX_DEPTH: usize = 64;

/// One file of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ManifestEntry {
    /// Relative, `/`-separated.
    pub path: String,
    /// Of the file's contents.
    pub sha256: [u8; 32],
    pub size: u64,
    /// Laid out with mode 0755 (else 0644), as bundles always kept the executable bit only.
    pub executable: bool,
}

impl ManifestEntry {
    /// The contents' digest as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// What a manifest from elsewhere may describe at most.
#[derive(Clone, Copy, Debug)]
pub struct ManifestLimits {
    pub max_entries: u64,
    /// Of all its files together.
    pub max_total_bytes: u64,
    /// Of the manifest's own text.
    pub max_manifest_bytes: u64,
}

impl From<ExtractLimits> for ManifestLimits {
    fn from(l: ExtractLimits) -> Self {
        ManifestLimits {
            max_entries: l.max_entries,
            max_total_bytes: l.max_unpacked_bytes,
            // A line is at most 64 + 21 + 4 + 3 + 4096 bytes; typical ones are a tenth of that.
            max_manifest_bytes: 32 << 20,
        }
    }
}

/// A bundle's files, sorted by path, each checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// The manifest of these files, in any order: sorted, and refused if a path is unsafe or
    /// named twice, or if a path is a directory of another.
    pub fn from_entries(mut entries: Vec<ManifestEntry>) -> Result<Self, BundleError> {
        entries.sort_unstable_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        for e in &entries {
            check_path(&e.path)?;
        }
        check_tree(&entries)?;
        Ok(Manifest { entries })
    }

    /// Reads a manifest from elsewhere: only the canonical text, within `limits`.
    pub fn parse(bytes: &[u8], limits: &ManifestLimits) -> Result<Self, BundleError> {
        if bytes.len() as u64 > limits.max_manifest_bytes {
            return Err(BundleError::TooLarge {
                what: "manifest bytes",
                limit: limits.max_manifest_bytes,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let body = text
            .strip_prefix(VERSION_LINE)
            .and_then(|rest| rest.strip_prefix('\n'))
            .ok_or_else(|| bad(&format!("does not start with `{VERSION_LINE}`")))?;
        if !body.is_empty() && !body.ends_with('\n') {
            return Err(bad("its last line does not end with a newline"));
        }
        let mut entries = Vec::new();
        let mut total: u64 = 0;
        // Lines end at LF alone: `str::lines` would also take a CR off, and accept a CRLF text,
        // which names the same files under another digest (found by the fuzzer).
        for (n, line) in body.split_terminator('\n').enumerate() {
            if entries.len() as u64 >= limits.max_entries {
                return Err(BundleError::TooLarge {
                    what: "manifest entries",
                    limit: limits.max_entries,
                });
            }
            let entry = parse_line(line).map_err(|why| bad(&format!("line {}: {why}", n + 2)))?;
            total = total
                .checked_add(entry.size)
                .filter(|t| *t <= limits.max_total_bytes)
                .ok_or(BundleError::TooLarge {
                    what: "bytes of the manifest's files",
                    limit: limits.max_total_bytes,
                })?;
            check_path(&entry.path)?;
            if let Some(prev) = entries.last().map(|p: &ManifestEntry| p.path.as_bytes())
                && prev >= entry.path.as_bytes()
            {
                return Err(bad(&format!(
                    "line {}: `{}` is out of order or named twice",
                    n + 2,
                    entry.path
                )));
            }
            entries.push(entry);
        }
        check_tree(&entries)?;
        Ok(Manifest { entries })
    }

    /// The canonical text.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(VERSION_LINE.len() + 1 + self.entries.len() * 128);
        out.push_str(VERSION_LINE);
        out.push('\n');
        for e in &self.entries {
            let mode = if e.executable { "755" } else { "644" };
            out.push_str(&format!(
                "{} {} {mode} {}\n",
                e.sha256_hex(),
                e.size,
                e.path
            ));
        }
        out.into_bytes()
    }

    /// The bundle's name: the sha256 of the canonical text, as lowercase hex.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.to_bytes()))
    }

    /// The files, sorted by path.
    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    /// The bytes of all its files together.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

fn bad(why: &str) -> BundleError {
    BundleError::UnsafeEntry {
        path: "manifest".into(),
        reason: why.to_owned(),
    }
}

/// One `<sha256> <size> <mode> <path>` line, in its one canonical form.
fn parse_line(line: &str) -> Result<ManifestEntry, String> {
    let mut fields = line.splitn(4, ' ');
    let (Some(hash), Some(size), Some(mode), Some(path)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err("not `<sha256> <size> <mode> <path>`".into());
    };
    if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("`{hash}` is not a sha256 in lowercase hex"));
    }
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(hash, &mut sha256).map_err(|e| e.to_string())?;
    let canonical_size = !size.is_empty()
        && size.bytes().all(|b| b.is_ascii_digit())
        && (size == "0" || !size.starts_with('0'));
    let size: u64 = canonical_size
        .then(|| size.parse().ok())
        .flatten()
        .ok_or_else(|| format!("`{size}` is not a size in decimal"))?;
    let executable = match mode {
        "755" => true,
        "644" => false,
        other => return Err(format!("mode `{other}` is neither 644 nor 755")),
    };
    Ok(ManifestEntry {
        path: path.to_owned(),
        sha256,
        size,
        executable,
    })
}

/// A path a bundle may hold: relative, plain components only, within the length limits.
fn check_path(path: &str) -> Result<(), BundleError> {
    let reject = |reason: &str| BundleError::UnsafeEntry {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.is_empty() {
        return Err(reject("empty path"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(reject("path longer than 4096 bytes"));
    }
    if path.starts_with('/') {
        return Err(reject("absolute path"));
    }
    if path.contains(['\0', '\n', '\r']) {
        return Err(reject("path contains NUL, CR or LF"));
    }
    let mut depth = 0;
    for c in path.split('/') {
        match c {
            "" => return Err(reject("path has an empty component")),
            "." => return Err(reject("path contains `.`")),
            ".." => return Err(reject("path contains `..`")),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(reject("a component is longer than 255 bytes"));
            }
            _ => depth += 1,
        }
    }
    if depth > MAX_DEPTH {
        return Err(reject("path deeper than 64 components"));
    }
    Ok(())
}

/// No path named twice, and none a directory of another (`a` beside `a/b`): laying the bundle
/// out would have to make one thing both a file and a directory.
fn check_tree(sorted: &[ManifestEntry]) -> Result<(), BundleError> {
    let mut files: HashSet<&str> = HashSet::with_capacity(sorted.len());
    for e in sorted {
        if !files.insert(&e.path) {
            return Err(BundleError::UnsafeEntry {
                path: e.path.clone(),
                reason: "named twice".into(),
            });
        }
    }
    for e in sorted {
        let mut at = 0;
        while let Some(slash) = e.path[at..].find('/') {
            let dir = &e.path[..at + slash];
            if files.contains(dir) {
                return Err(BundleError::UnsafeEntry {
                    path: e.path.clone(),
                    reason: format!("`{dir}` is a file in the same bundle"),
                });
            }
            at += slash + 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, byte: u8, size: u64, executable: bool) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            sha256: [byte; 32],
            size,
            executable,
        }
    }

    fn limits() -> ManifestLimits {
        ManifestLimits::from(ExtractLimits::default())
    }

    fn sample() -> Manifest {
        Manifest::from_entries(vec![
            entry("target/debug/deps/basic-1f2e", 1, 4_000_000, true),
            entry("ws/tests/data/input.txt", 2, 12, false),
            entry("ws/Cargo.toml", 3, 0, false),
        ])
        .unwrap()
    }

    #[test]
    fn the_text_is_canonical_and_reads_back_as_written() {
        let m = sample();
        let bytes = m.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(
            text,
            format!(
                "testfleet-manifest 1\n{} 4000000 755 target/debug/deps/basic-1f2e\n{} 0 644 ws/Cargo.toml\n{} 12 644 ws/tests/data/input.txt\n",
                "01".repeat(32),
                "03".repeat(32),
                "02".repeat(32)
            )
        );
        let back = Manifest::parse(&bytes, &limits()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.digest(), m.digest());
        assert_eq!(back.total_bytes(), 4_000_012);
        assert_eq!(m.digest(), hex::encode(Sha256::digest(&bytes)));
    }

    #[test]
    fn the_same_files_in_any_order_have_the_same_digest_and_a_change_changes_it() {
        let mut shuffled = sample().entries().to_vec();
        shuffled.reverse();
        assert_eq!(
            Manifest::from_entries(shuffled.clone()).unwrap().digest(),
            sample().digest()
        );
        shuffled[0].executable = !shuffled[0].executable;
        assert_ne!(
            Manifest::from_entries(shuffled).unwrap().digest(),
            sample().digest()
        );
        let empty = Manifest::from_entries(vec![]).unwrap();
        assert_eq!(
            Manifest::parse(&empty.to_bytes(), &limits()).unwrap(),
            empty
        );
    }

    #[test]
    fn unsafe_paths_and_trees_are_refused_when_built() {
        for (path, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("ws/../../escape", "`..`"),
            ("ws/./x", "`.`"),
            ("ws//x", "empty component"),
            ("ws/a\nb", "NUL, CR or LF"),
            ("ws/a\0b", "NUL, CR or LF"),
        ] {
            let err = Manifest::from_entries(vec![entry(path, 1, 1, false)])
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{path:?}: {err}");
        }
        let long = "a/".repeat(65) + "f";
        assert!(Manifest::from_entries(vec![entry(&long, 1, 1, false)]).is_err());
        let wide = "x".repeat(256);
        assert!(Manifest::from_entries(vec![entry(&wide, 1, 1, false)]).is_err());
        let twice = Manifest::from_entries(vec![entry("a", 1, 1, false), entry("a", 2, 1, false)]);
        assert!(twice.unwrap_err().to_string().contains("named twice"));
        // `a-b` sorts between `a` and `a/c`: the check is not only of neighbours.
        let file_and_dir = Manifest::from_entries(vec![
            entry("a", 1, 1, false),
            entry("a-b", 1, 1, false),
            entry("a/c", 1, 1, false),
        ]);
        assert!(
            file_and_dir
                .unwrap_err()
                .to_string()
                .contains("`a` is a file")
        );
    }

    /// `parse` takes only the one text `to_bytes` writes: anything else would give one set of
    /// files two names.
    #[test]
    fn a_text_that_is_not_canonical_is_refused() {
        let good = String::from_utf8(sample().to_bytes()).unwrap();
        let line = |hash: &str, rest: &str| format!("{VERSION_LINE}\n{hash} {rest}\n");
        let hash = "ab".repeat(32);
        for (text, why) in [
            (
                good.replace("testfleet-manifest 1", "testfleet-manifest 2"),
                "does not start",
            ),
            (good.trim_end().to_owned(), "newline"),
            (format!("{good}\n"), "line 5"),
            (line(&hash.to_uppercase(), "1 644 a"), "lowercase hex"),
            (line(&hash[2..], "1 644 a"), "lowercase hex"),
            (line(&hash, "01 644 a"), "not a size"),
            (line(&hash, "+1 644 a"), "not a size"),
            (line(&hash, "1 600 a"), "mode `600`"),
            (line(&hash, "1 644"), "not `<sha256>"),
            (line(&hash, "1  644 a"), "mode ``"),
            (line(&hash, "1 644 ../a"), "`..`"),
            (line(&hash, "1 644 a\r"), "CR"),
            (
                format!("{VERSION_LINE}\n{hash} 1 644 b\n{hash} 1 644 a\n"),
                "out of order",
            ),
            (
                format!("{VERSION_LINE}\n{hash} 1 644 a\n{hash} 1 644 a\n"),
                "named twice",
            ),
            (
                format!("{VERSION_LINE}\n{hash} 1 644 a\n{hash} 1 644 a/b\n"),
                "`a` is a file",
            ),
        ] {
            let err = Manifest::parse(text.as_bytes(), &limits())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        assert!(Manifest::parse(&[0xff, 0xfe], &limits()).is_err());
    }

    #[test]
    fn limits_bound_entries_total_bytes_and_the_text() {
        let hash = "cd".repeat(32);
        let two = format!("{VERSION_LINE}\n{hash} 10 644 a\n{hash} 10 644 b\n");
        let tight = |entries, total, text| ManifestLimits {
            max_entries: entries,
            max_total_bytes: total,
            max_manifest_bytes: text,
        };
        assert!(Manifest::parse(two.as_bytes(), &tight(2, 20, 1 << 20)).is_ok());
        let err = |l| Manifest::parse(two.as_bytes(), &l).unwrap_err().to_string();
        assert!(err(tight(1, 20, 1 << 20)).contains("manifest entries"));
        assert!(err(tight(2, 19, 1 << 20)).contains("bytes of the manifest's files"));
        assert!(err(tight(2, 20, 64)).contains("manifest bytes"));
        // Sizes that would overflow when added are refused, not wrapped.
        let huge = format!(
            "{VERSION_LINE}\n{hash} {} 644 a\n{hash} {} 644 b\n",
            u64::MAX,
            u64::MAX
        );
        assert!(Manifest::parse(huge.as_bytes(), &tight(2, u64::MAX, 1 << 20)).is_err());
    }
}
