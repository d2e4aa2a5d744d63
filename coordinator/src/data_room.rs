//! Room on the data dir's filesystem. sled refuses every write once one has failed (until the store
//! is opened again), so the coordinator does not let it run out of space: below `--min-free-bytes`
//! it refuses what would write more (new runs, bundle uploads, imported results, quarantine
//! changes), and its history writer waits for room, holding what it has not written together with
//! its results' credits, so agents stop being acknowledged and keep their results meanwhile.
//! Running runs go on as far as that allows, and everything resumes by itself once there is room.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use testfleet_bundle::room::{free_bytes, mib};

/// The free space below which a coordinator writes nothing more unless told otherwise: sled's log
/// grows in segments and is compacted by rewriting, and a bundle upload takes up to its size.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 512 << 20;

/// How often a waiting writer looks again.
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct DataRoom {
    dir: PathBuf,
    min_free: u64,
    /// Whether the last check found room, so that changes are said once.
    last_room: Mutex<Option<bool>>,
}

/// The data dir is below its minimum of free space.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "the coordinator's data dir {dir} has {free_mib:.1} MiB free{needed}, below --min-free-bytes ({min_mib:.1} MiB)",
    free_mib = mib(*free),
    min_mib = mib(*min_free),
    needed = if *extra > 0 { format!(" ({:.1} MiB once {:.1} MiB more are written)", mib(free.saturating_sub(*extra)), mib(*extra)) } else { String::new() }
)]
pub struct NoRoom {
    pub dir: String,
    pub free: u64,
    pub min_free: u64,
    /// What the refused request would have written.
    pub extra: u64,
}

impl DataRoom {
    pub fn new(dir: &Path, min_free: u64) -> Self {
        DataRoom {
            dir: dir.to_owned(),
            min_free,
            last_room: Mutex::new(None),
        }
    }

    /// Whether there is room to write `extra` bytes more and keep the minimum free. A filesystem
    /// that cannot be asked is not a reason to stop: writing there will say what is wrong. (Asked
    /// each time: a statvfs costs microseconds, and a request must not pass on an old answer.)
    pub fn check(&self, extra: u64) -> Result<(), NoRoom> {
        let free = free_bytes(&self.dir).ok();
        let room = free.is_none_or(|f| f >= self.min_free);
        let mut last = self.last_room.lock().expect("data room lock");
        if *last != Some(room) {
            self.say_changed(free, room, last.is_none());
            *last = Some(room);
        }
        match free {
            Some(free) if free < self.min_free.saturating_add(extra) => Err(NoRoom {
                dir: self.dir.display().to_string(),
                free,
                min_free: self.min_free,
                extra,
            }),
            _ => Ok(()),
        }
    }

    fn say_changed(&self, free: Option<u64>, room: bool, first: bool) {
        let dir = self.dir.display().to_string();
        let free_mib = free.map_or(f64::NAN, mib);
        if !room {
            tracing::warn!(
                dir,
                free_mib,
                min_free_mib = mib(self.min_free),
                "the data dir is nearly full (below --min-free-bytes): new runs and uploads are refused and history waits for room; free space there"
            );
        } else if !first {
            tracing::info!(dir, free_mib, "the data dir has room again");
        }
    }

    /// Blocks the calling thread until there is room, or until `give_up` says to stop waiting;
    /// returns whether there is room.
    pub fn wait_blocking(&self, give_up: impl Fn() -> bool) -> bool {
        loop {
            if self.check(0).is_ok() {
                return true;
            }
            if give_up() {
                return false;
            }
            std::thread::sleep(CHECK_EVERY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_the_free_space_against_the_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let room = DataRoom::new(dir.path(), 0);
        assert!(room.check(0).is_ok());
        // What a write would take counts against the minimum.
        let too_big = room.check(u64::MAX).unwrap_err().to_string();
        assert!(too_big.contains("MiB more are written"), "{too_big}");
        let full = DataRoom::new(dir.path(), u64::MAX);
        let no_room = full.check(0).unwrap_err();
        let said = no_room.to_string();
        assert!(said.contains("--min-free-bytes"), "{said}");
        assert!(said.contains(&dir.path().display().to_string()), "{said}");
        // A waiter told to give up returns at once, without room.
        assert!(!full.wait_blocking(|| true));
        // A filesystem that cannot be asked does not stop anything.
        assert!(
            DataRoom::new(&dir.path().join("gone"), u64::MAX)
                .check(0)
                .is_ok()
        );
    }
}
