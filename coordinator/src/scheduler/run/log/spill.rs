//! Where a run's log goes when it outgrows its share of memory: a file of the log's sealed chunks
//! in the coordinator's data dir, written off the scheduler's task (dispatch never waits for the
//! disk) and removed with the run's log. A chunk stays in memory until its bytes are on disk; one
//! that cannot be written stays there.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A sealed chunk's bytes: in memory, or at a place in the run's spill file. A chunk on disk
/// holds the file, so whoever holds the chunk (a watcher's snapshot, taken before the file was
/// made) can read it back.
pub(super) enum ChunkData {
    Memory(Arc<[u8]>),
    Disk {
        file: Arc<SpillFile>,
        offset: u64,
        len: usize,
    },
}

pub(super) type SharedChunk = Arc<Mutex<ChunkData>>;

/// One run's spill file. The file is removed when the last holder (the log, a reader, a write in
/// flight) lets go.
pub(super) struct SpillFile {
    path: PathBuf,
    file: File,
    /// A write failed (the disk is full, say): later chunks stay in memory.
    failed: AtomicBool,
}

impl SpillFile {
    pub fn create(dir: &Path, name: &str) -> std::io::Result<Arc<SpillFile>> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok(Arc::new(SpillFile {
            path,
            file,
            failed: AtomicBool::new(false),
        }))
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Writes `chunk`'s bytes at `offset` on a blocking thread, then lets its memory go.
    pub fn write(self: &Arc<Self>, chunk: SharedChunk, offset: u64) {
        let file = self.clone();
        let spawned = tokio::runtime::Handle::try_current().map(|rt| {
            rt.spawn_blocking(move || file.write_now(&chunk, offset));
        });
        if spawned.is_err() {
            tracing::warn!("no runtime to write a run's log to disk on: it stays in memory");
        }
    }

    fn write_now(self: &Arc<Self>, chunk: &SharedChunk, offset: u64) {
        let bytes = match &*chunk.lock().expect("chunk lock") {
            ChunkData::Memory(bytes) => bytes.clone(),
            ChunkData::Disk { .. } => return,
        };
        match self.file.write_all_at(&bytes, offset) {
            Ok(()) => {
                *chunk.lock().expect("chunk lock") = ChunkData::Disk {
                    file: self.clone(),
                    offset,
                    len: bytes.len(),
                };
            }
            Err(e) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        "cannot write a run's event log to disk; the rest of it stays in memory"
                    );
                }
            }
        }
    }

    /// A chunk's bytes, from memory or from the file.
    pub fn read(chunk: &SharedChunk) -> std::io::Result<Arc<[u8]>> {
        let (file, offset, len) = match &*chunk.lock().expect("chunk lock") {
            ChunkData::Memory(bytes) => return Ok(bytes.clone()),
            ChunkData::Disk { file, offset, len } => (file.clone(), *offset, *len),
        };
        let mut bytes = vec![0; len];
        file.file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes.into())
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
