//! Room on the work dir's filesystem. An agent whose disk is nearly full takes no more work: its
//! bundles, sandboxes and tests' files would fail there, one lease after another. It says so once,
//! and asks for work again by itself once there is room (checked at most once a second, and at
//! least at every heartbeat, which wakes the session's loop).

use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub(crate) use testfleet_bundle::room::describe;
use testfleet_bundle::room::{free_bytes, mib};

/// The free space below which an agent takes no work unless told otherwise.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 << 20;

const CHECK_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct DiskRoom {
    dir: PathBuf,
    min_free: u64,
    /// The last check: when, and whether there was room.
    last: Cell<Option<(Instant, bool)>>,
}

impl DiskRoom {
    pub fn new(dir: PathBuf, min_free: u64) -> Self {
        DiskRoom {
            dir,
            min_free,
            last: Cell::new(None),
        }
    }

    /// Whether there is room for more work.
    pub fn has_room(&self) -> bool {
        let last = self.last.get();
        if let Some((at, room)) = last
            && at.elapsed() < CHECK_EVERY
        {
            return room;
        }
        let room = match free_bytes(&self.dir) {
            Ok(free) => {
                let room = free >= self.min_free;
                if last.is_none_or(|(_, was)| was != room) {
                    if room {
                        tracing::info!(free_mib = mib(free), dir = %self.dir.display(), "the work dir has room again: taking work");
                    } else {
                        tracing::warn!(
                            free_mib = mib(free),
                            min_free_mib = mib(self.min_free),
                            dir = %self.dir.display(),
                            "the work dir is nearly full (below --min-free-bytes): taking no work until there is room"
                        );
                    }
                }
                room
            }
            // A filesystem that cannot be asked is not a reason to stop working.
            Err(_) => true,
        };
        self.last.set(Some((Instant::now(), room)));
        room
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_what_the_filesystem_has_free_against_the_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert!(DiskRoom::new(dir.path().into(), 0).has_room());
        let none = DiskRoom::new(dir.path().into(), u64::MAX);
        assert!(!none.has_room());
    }
}
