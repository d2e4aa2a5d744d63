//! Results' outputs beside sled: each run's are appended to one file of its own under
//! `<data dir>/history-outputs/`, and sled's `outputs` tree holds for each a small pointer (where
//! in the file, how long, its CRC-32). sled rewrites the tree nodes that hold a value whenever one
//! changes, so outputs stored in it were written four to five times over (3 GiB of writes for
//! 625 MiB of output); appended to a file they are written once, and pruning a run removes its
//! file.
//!
//! A group's outputs are written as the writer reads them (through a small buffer per file, so
//! the group never holds a second copy) and are on disk (`fdatasync`) before sled holds their
//! pointers, so a pointer sled has never names bytes that were lost. An append cut short (a full
//! disk) leaves bytes no pointer names; the group is written again after it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use testfleet_model::RunId;

use super::super::HistoryError;

/// Run files the writer keeps open between groups (a group touches the runs in flight).
const OPEN_FILES_MAX: usize = 16;

/// Where one output is: its run's file, an offset, a length and the CRC-32 of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pointer {
    offset: u64,
    len: u32,
    crc: u32,
}

/// The size of an encoded [`Pointer`]; a piece of an output stored in sled itself (stores written
/// before outputs moved beside it) is under a longer key, never this value's.
pub(super) const POINTER_BYTES: usize = 16;

impl Pointer {
    pub fn encode(&self) -> [u8; POINTER_BYTES] {
        let mut b = [0u8; POINTER_BYTES];
        b[..8].copy_from_slice(&self.offset.to_be_bytes());
        b[8..12].copy_from_slice(&self.len.to_be_bytes());
        b[12..].copy_from_slice(&self.crc.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Pointer> {
        let b: &[u8; POINTER_BYTES] = b.try_into().ok()?;
        Some(Pointer {
            offset: u64::from_be_bytes(b[..8].try_into().ok()?),
            len: u32::from_be_bytes(b[8..12].try_into().ok()?),
            crc: u32::from_be_bytes(b[12..].try_into().ok()?),
        })
    }
}

pub(super) struct OutputFiles {
    dir: PathBuf,
    /// The writer's open files, most recently used last.
    open: Mutex<VecDeque<RunFile>>,
}

/// A run's file open for appending: what is written goes through a buffer, and `end` is where
/// the next output goes.
struct RunFile {
    run: RunId,
    file: BufWriter<File>,
    end: u64,
}

/// Each open file's buffer: small outputs are gathered into one write, large ones pass through.
const BUFFER_BYTES: usize = 64 << 10;

fn io_error(e: std::io::Error) -> HistoryError {
    // As sled's own I/O errors: the writer keeps the group and tries again (a full disk).
    HistoryError::Storage(sled::Error::Io(e))
}

impl OutputFiles {
    pub fn open(data_dir: &Path) -> Result<Self, HistoryError> {
        let dir = data_dir.join("history-outputs");
        std::fs::create_dir_all(&dir).map_err(io_error)?;
        Ok(OutputFiles {
            dir,
            open: Mutex::new(VecDeque::new()),
        })
    }

    fn path(&self, run: RunId) -> PathBuf {
        self.dir.join(format!("{:020}.out", run.0))
    }

    /// Appends one output to its run's file and says where it is. It is durable once [`sync`]
    /// has returned for the run; a pointer must not be stored before.
    ///
    /// [`sync`]: OutputFiles::sync
    pub fn append(&self, run: RunId, output: &[u8]) -> Result<Pointer, HistoryError> {
        let len = u32::try_from(output.len())
            .map_err(|_| io_error(std::io::Error::other("an output of 4 GiB or more")))?;
        let mut open = self.open.lock().expect("output files lock");
        let i = match open.iter().position(|f| f.run == run) {
            Some(i) => i,
            None => {
                let mut file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.path(run))
                    .map_err(io_error)?;
                // The end, not a remembered length: an append cut short left bytes after it.
                let end = file.seek(SeekFrom::End(0)).map_err(io_error)?;
                open.push_back(RunFile {
                    run,
                    file: BufWriter::with_capacity(BUFFER_BYTES, file),
                    end,
                });
                open.len() - 1
            }
        };
        let f = &mut open[i];
        if let Err(e) = f.file.write_all(output) {
            // What reached the file is unknown: the next append opens it again at its end.
            open.remove(i);
            return Err(io_error(e));
        }
        let at = Pointer {
            offset: f.end,
            len,
            crc: crc32fast::hash(output),
        };
        f.end += u64::from(len);
        Ok(at)
    }

    /// Makes what was appended to these runs' files durable (`fdatasync`), and closes files
    /// beyond the few kept open (all of them written out by then).
    pub fn sync(&self, runs: impl IntoIterator<Item = RunId>) -> Result<(), HistoryError> {
        let mut open = self.open.lock().expect("output files lock");
        for run in runs {
            let Some(i) = open.iter().position(|f| f.run == run) else {
                continue;
            };
            let f = &mut open[i];
            let synced = f.file.flush().and_then(|()| f.file.get_ref().sync_data());
            if let Err(e) = synced {
                open.remove(i);
                return Err(io_error(e));
            }
            let f = open.remove(i).expect("found above");
            open.push_back(f);
        }
        while open.len() > OPEN_FILES_MAX {
            // Least recently used first; its buffer was written out when it was last synced.
            let mut f = open.pop_front().expect("longer than the limit");
            f.file.flush().map_err(io_error)?;
        }
        Ok(())
    }

    /// The output a pointer names, checked against its CRC.
    pub fn read(&self, run: RunId, seq: u64, at: Pointer) -> Result<Vec<u8>, HistoryError> {
        let path = self.path(run);
        let damaged = |reason: String| HistoryError::Corrupt {
            key: format!("output of run {run} event {seq} in {}", path.display()),
            reason,
        };
        let file = File::open(&path).map_err(|e| damaged(e.to_string()))?;
        let mut out = vec![0u8; at.len as usize];
        file.read_exact_at(&mut out, at.offset)
            .map_err(|e| damaged(e.to_string()))?;
        if crc32fast::hash(&out) != at.crc {
            return Err(damaged("its bytes do not match their checksum".into()));
        }
        Ok(out)
    }

    /// Removes a pruned run's file.
    pub fn remove_run(&self, run: RunId) -> Result<(), HistoryError> {
        self.open
            .lock()
            .expect("output files lock")
            .retain(|f| f.run != run);
        match std::fs::remove_file(self.path(run)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(e)),
            _ => Ok(()),
        }
    }

    /// The runs that have a file here (housekeeping: files of runs pruned by a coordinator that
    /// stopped before removing them).
    pub fn runs(&self) -> Result<Vec<RunId>, HistoryError> {
        let mut runs = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_error)? {
            let name = entry.map_err(io_error)?.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".out"))
                .and_then(|n| n.parse().ok())
            {
                runs.push(RunId(id));
            }
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_read_back_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let files = OutputFiles::open(dir.path()).unwrap();
        let run = RunId(7);
        let first: Vec<Pointer> = [&b"one"[..], b"", b"three"]
            .iter()
            .map(|o| files.append(run, o).unwrap())
            .collect();
        files.sync([run]).unwrap();
        let second = [files.append(run, b"four").unwrap()];
        files.sync([run]).unwrap();
        assert_eq!(files.read(run, 1, first[0]).unwrap(), b"one");
        assert_eq!(files.read(run, 2, first[1]).unwrap(), b"");
        assert_eq!(files.read(run, 3, first[2]).unwrap(), b"three");
        assert_eq!(files.read(run, 4, second[0]).unwrap(), b"four");
        assert_eq!(Pointer::decode(&second[0].encode()), Some(second[0]));
        assert_eq!(files.runs().unwrap(), vec![run]);

        // A byte changed on disk is reported, not returned.
        let path = dir
            .path()
            .join("history-outputs")
            .join(format!("{:020}.out", 7));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = files.read(run, 1, first[0]).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");

        files.remove_run(run).unwrap();
        assert!(files.runs().unwrap().is_empty());
        assert!(files.read(run, 4, second[0]).is_err());
    }
}
