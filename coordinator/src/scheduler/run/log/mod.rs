//! A run's event log: every event the run emitted, in order, for watchers that start from an
//! earlier position. Events are packed ([`record`]) into chunks; once a run's log holds more than
//! its share of memory, its oldest chunks go to a file in the data dir ([`spill`]) and are read
//! back from there. A million-test run's log takes tens of megabytes packed, where whole events
//! took hundreds.

mod record;
mod spill;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use testfleet_model::{RunEvent, RunId, RunSpec};

use spill::{ChunkData, SharedChunk, SpillFile};

/// How much of each run's log stays in memory, and where the rest goes.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Bytes of a run's packed log kept in memory; older chunks go to `dir`.
    pub memory: usize,
    /// `None`: logs stay in memory whole (tests, and coordinators without a data dir).
    pub dir: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            memory: 2 << 20,
            dir: None,
        }
    }
}

/// Packed events are sealed into chunks of about this size: the unit that goes to disk.
const CHUNK_BYTES: usize = 256 << 10;

struct Chunk {
    first_seq: u64,
    data: SharedChunk,
}

pub(super) struct EventLog {
    run_id: RunId,
    next_seq: u64,
    sealed: Vec<Chunk>,
    open: Vec<u8>,
    open_first: u64,
    /// Events of the kinds that do not pack (the run started or finished, notices, services,
    /// pulls): few, and kept as they are.
    whole: Vec<RunEvent>,
    config: Arc<LogConfig>,
    spill: Option<Arc<SpillFile>>,
    /// Whether making the spill file failed (said once).
    no_spill: bool,
    spill_end: u64,
    /// Sealed chunks before this one have been handed to the spill file.
    spilled: usize,
    /// Bytes in memory not yet handed to the spill file.
    resident: usize,
}

impl EventLog {
    pub fn new(run_id: RunId, first_seq: u64, config: Arc<LogConfig>) -> Self {
        EventLog {
            run_id,
            next_seq: first_seq,
            sealed: Vec::new(),
            open: Vec::new(),
            open_first: first_seq,
            whole: Vec::new(),
            config,
            spill: None,
            no_spill: false,
            spill_end: 0,
            spilled: 0,
            resident: 0,
        }
    }

    /// The sequence number the next event takes.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends `event`, which carries [`Self::next_seq`]; its output, if any, is dropped (history
    /// keeps it) and marked as on disk.
    /// Records an event; only the few kinds kept whole are copied (a result's output never is).
    pub fn push(&mut self, event: &RunEvent) {
        debug_assert_eq!(event.seq, self.next_seq);
        let before = self.open.len();
        if !record::pack(event, &mut self.open) {
            record::whole(self.whole.len() as u32, &mut self.open);
            self.whole.push(event.clone());
        }
        self.resident += self.open.len() - before;
        self.next_seq += 1;
        if self.open.len() >= CHUNK_BYTES {
            self.seal();
            self.spill_over();
        }
    }

    fn seal(&mut self) {
        let bytes: Arc<[u8]> = std::mem::take(&mut self.open).into();
        self.sealed.push(Chunk {
            first_seq: self.open_first,
            data: Arc::new(Mutex::new(ChunkData::Memory(bytes))),
        });
        self.open_first = self.next_seq;
    }

    /// Hands the oldest chunks in memory to the spill file while the log is over its share.
    fn spill_over(&mut self) {
        while self.resident > self.config.memory && self.spilled < self.sealed.len() {
            let Some(file) = self.spill_file() else {
                return;
            };
            if file.has_failed() {
                return;
            }
            let chunk = &self.sealed[self.spilled];
            let len = match &*chunk.data.lock().expect("chunk lock") {
                ChunkData::Memory(bytes) => bytes.len(),
                ChunkData::Disk { .. } => 0,
            };
            file.write(chunk.data.clone(), self.spill_end);
            self.spill_end += len as u64;
            self.resident = self.resident.saturating_sub(len);
            self.spilled += 1;
        }
    }

    fn spill_file(&mut self) -> Option<Arc<SpillFile>> {
        if self.spill.is_none() && !self.no_spill {
            let dir = self.config.dir.as_ref()?;
            match SpillFile::create(dir, &format!("run-{}.events", self.run_id)) {
                Ok(f) => self.spill = Some(f),
                Err(e) => {
                    self.no_spill = true;
                    tracing::warn!(run = %self.run_id, error = %e, "cannot make a file for the run's event log; it stays in memory");
                }
            }
        }
        self.spill.clone()
    }

    /// Bytes of the log in memory now (chunks whose write to disk failed or is in flight count).
    pub fn memory_bytes(&self) -> usize {
        let sealed: usize = self
            .sealed
            .iter()
            .map(|c| match &*c.data.lock().expect("chunk lock") {
                ChunkData::Memory(bytes) => bytes.len(),
                ChunkData::Disk { .. } => 0,
            })
            .sum();
        sealed + self.open.capacity() + self.whole.len() * std::mem::size_of::<RunEvent>()
    }

    /// What a reader needs to read the events from `from_seq` on, away from the scheduler.
    pub fn snapshot(&self, from_seq: u64, spec: Arc<RunSpec>) -> LogSnapshot {
        let mut chunks: Vec<(u64, SharedChunk)> = Vec::new();
        for (i, c) in self.sealed.iter().enumerate() {
            let end = self
                .sealed
                .get(i + 1)
                .map_or(self.open_first, |next| next.first_seq);
            if end > from_seq {
                chunks.push((c.first_seq, c.data.clone()));
            }
        }
        let open = (self.next_seq > from_seq).then(|| Arc::<[u8]>::from(self.open.as_slice()));
        LogSnapshot {
            run_id: self.run_id,
            spec,
            from_seq,
            chunks,
            open: open.map(|bytes| (self.open_first, bytes)),
            whole: self.whole.clone(),
        }
    }
}

/// A run's events from a position, read away from the scheduler (from disk, for old chunks).
pub struct LogSnapshot {
    run_id: RunId,
    spec: Arc<RunSpec>,
    from_seq: u64,
    chunks: Vec<(u64, SharedChunk)>,
    open: Option<(u64, Arc<[u8]>)>,
    whole: Vec<RunEvent>,
}

/// The events read, and the sequence numbers of results whose output is in history.
#[derive(Default)]
pub struct Backlog {
    pub events: Vec<RunEvent>,
    pub outputs_on_disk: Vec<u64>,
}

impl LogSnapshot {
    /// How many parts the snapshot is read in: each chunk in order, then the open one. A watcher
    /// of a long run from its start reads one at a time, so what it holds is a chunk's events,
    /// not the whole run's.
    pub fn parts(&self) -> usize {
        self.chunks.len() + usize::from(self.open.is_some())
    }

    /// Reads part `i` (below [`Self::parts`]): its events from `from_seq` on.
    pub fn read_part(&self, i: usize) -> std::io::Result<Backlog> {
        let (first, bytes) = match self.chunks.get(i) {
            Some((first, chunk)) => (*first, SpillFile::read(chunk)?),
            None => self
                .open
                .clone()
                .filter(|_| i == self.chunks.len())
                .ok_or_else(|| std::io::Error::other(format!("no part {i} in the log")))?,
        };
        let unpacker = record::Unpacker {
            run_id: self.run_id,
            spec: &self.spec,
            whole: &self.whole,
        };
        let mut backlog = Backlog::default();
        let mut rest: &[u8] = &bytes;
        let mut seq = first;
        while !rest.is_empty() {
            let (unpacked, after) = unpacker.next(seq, rest, seq < self.from_seq).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("run {}'s event log at {seq}: {e}", self.run_id),
                )
            })?;
            if let Some(u) = unpacked {
                if u.output_on_disk {
                    backlog.outputs_on_disk.push(seq);
                }
                backlog.events.push(u.event);
            }
            rest = after;
            seq += 1;
        }
        Ok(backlog)
    }

    /// Reads every part at once.
    #[cfg(test)]
    pub fn read(self) -> std::io::Result<Backlog> {
        let mut backlog = Backlog::default();
        for i in 0..self.parts() {
            let part = self.read_part(i)?;
            backlog.events.extend(part.events);
            backlog.outputs_on_disk.extend(part.outputs_on_disk);
        }
        Ok(backlog)
    }
}

#[cfg(test)]
mod tests;
