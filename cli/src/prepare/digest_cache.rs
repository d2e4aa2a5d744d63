//! The digests of the files the last bundle of a workspace named, kept between runs in
//! `target/testfleet/digests.v1`: a file whose device, inode, size, modification and change times
//! are all as they were is not read again. Test binaries weigh hundreds of MB; hashing them on
//! every run would cost more than sending what changed.
//!
//! A file written while it was hashed, or so recently that a later write could keep its times
//! (filesystems with coarse clocks), is hashed but not remembered. The cache is only a shortcut:
//! the coordinator checks every file it receives against its digest whatever this side claims.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The first line of the file: its format.
const HEADER: &str = "testfleet-digests 1";

/// A file changed less than this before it was hashed may change again within the same
/// timestamp and is not remembered.
const SETTLED: Duration = Duration::from_secs(2);

/// What identifies one version of a file on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    /// Whether the file had been left alone for a while at `now`.
    fn settled(&self, now: SystemTime) -> bool {
        let now_ns = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let newest = self.mtime_ns.max(self.ctime_ns);
        newest + (SETTLED.as_nanos() as i128) < now_ns
    }
}

/// Digests by file version: those read at load, and those this run used (the only ones saved).
pub struct DigestCache {
    path: PathBuf,
    known: HashMap<FileStamp, [u8; 32]>,
    used: HashMap<FileStamp, [u8; 32]>,
}

impl DigestCache {
    /// Reads the cache at `path`; a missing, older or damaged one is an empty cache.
    pub fn load(path: &Path) -> Self {
        let known = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| parse(&text))
            .unwrap_or_default();
        DigestCache {
            path: path.to_owned(),
            known,
            used: HashMap::new(),
        }
    }

    /// The digest of this version of a file, if it was hashed before; it is kept for next time.
    pub fn get(&mut self, stamp: &FileStamp) -> Option<[u8; 32]> {
        let sha = *self.known.get(stamp)?;
        self.used.insert(*stamp, sha);
        Some(sha)
    }

    /// Remembers a digest computed from a file that had `before` when its reading began and
    /// `after` when it ended, at `started`: only if the file did not change meanwhile and had
    /// settled.
    pub fn insert(
        &mut self,
        before: FileStamp,
        after: FileStamp,
        started: SystemTime,
        sha: [u8; 32],
    ) {
        if before == after && before.settled(started) {
            self.used.insert(before, sha);
        }
    }

    /// Writes what this run used, replacing the file at once (a reader never sees half of it).
    /// A cache that cannot be written only costs hashing again next time.
    pub fn save(&self) {
        let mut text = String::with_capacity(self.used.len() * 120 + HEADER.len() + 1);
        text.push_str(HEADER);
        text.push('\n');
        for (s, sha) in &self.used {
            text.push_str(&format!(
                "{} {} {} {} {} {}\n",
                s.dev,
                s.ino,
                s.size,
                s.mtime_ns,
                s.ctime_ns,
                hex::encode(sha)
            ));
        }
        let tmp = self.path.with_extension(format!(
            "tmp-{}",
            testfleet_bundle::temp_name::unique_suffix()
        ));
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::File::create(&tmp))
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(path = %self.path.display(), error = %e, "could not save the bundle's file digests");
        }
    }
}

fn parse(text: &str) -> Option<HashMap<FileStamp, [u8; 32]>> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut known = HashMap::new();
    for line in lines {
        let mut f = line.split(' ');
        let stamp = FileStamp {
            dev: f.next()?.parse().ok()?,
            ino: f.next()?.parse().ok()?,
            size: f.next()?.parse().ok()?,
            mtime_ns: f.next()?.parse().ok()?,
            ctime_ns: f.next()?.parse().ok()?,
        };
        let mut sha = [0u8; 32];
        hex::decode_to_slice(f.next()?, &mut sha).ok()?;
        if f.next().is_some() {
            return None;
        }
        known.insert(stamp, sha);
    }
    Some(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_file_is_remembered_across_runs_and_a_changed_one_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bin");
        std::fs::write(&file, b"one").unwrap();
        let stamp = FileStamp::of(&std::fs::metadata(&file).unwrap());
        let later = SystemTime::now() + Duration::from_secs(10);
        let path = dir.path().join("digests.v1");

        let mut cache = DigestCache::load(&path);
        assert_eq!(cache.get(&stamp), None);
        cache.insert(stamp, stamp, later, [7; 32]);
        cache.save();

        let mut again = DigestCache::load(&path);
        assert_eq!(again.get(&stamp), Some([7; 32]));

        // Rewritten: another size and other times, so another stamp.
        std::fs::write(&file, b"other").unwrap();
        let changed = FileStamp::of(&std::fs::metadata(&file).unwrap());
        assert_ne!(changed, stamp);
        assert_eq!(again.get(&changed), None);
    }

    #[test]
    fn a_file_just_written_or_changed_while_hashed_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bin");
        std::fs::write(&file, b"one").unwrap();
        let stamp = FileStamp::of(&std::fs::metadata(&file).unwrap());
        let mut cache = DigestCache::load(&dir.path().join("digests.v1"));
        // Written a moment ago: a write within the same clock tick would keep its times.
        cache.insert(stamp, stamp, SystemTime::now(), [1; 32]);
        assert_eq!(cache.get(&stamp), None);
        // Changed between the start and the end of its reading.
        let other = FileStamp { size: 9, ..stamp };
        cache.insert(stamp, other, SystemTime::now() + SETTLED * 5, [1; 32]);
        assert_eq!(cache.get(&stamp), None);
    }

    #[test]
    fn a_damaged_or_older_cache_is_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("digests.v1");
        for text in [
            "testfleet-digests 0\n1 2 3 4 5 00\n",
            "testfleet-digests 1\n1 2 x\n",
            "",
        ] {
            std::fs::write(&path, text).unwrap();
            assert!(DigestCache::load(&path).known.is_empty(), "{text:?}");
        }
    }
}
