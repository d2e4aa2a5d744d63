//! Run specs, kept from submission until their run closes so an unfinished run resumes after a
//! restart, stored in pieces ([`PIECE_BYTES`]) under (run, piece).

use testfleet_model::{RunId, RunSpec, RunState};

use super::super::records::{decode, encode_json};
use super::super::{HistoryError, HistoryStore};
use super::{PIECE_BYTES, SledStore};

impl SledStore {
    pub(super) fn put_spec_pieces(&self, run: RunId, spec: &RunSpec) -> Result<(), HistoryError> {
        let encoded = encode_json(spec);
        for (i, piece) in encoded.chunks(PIECE_BYTES).enumerate() {
            let key = [&run.0.to_be_bytes()[..], &(i as u32).to_be_bytes()].concat();
            self.run_specs.insert(key, piece)?;
        }
        Ok(())
    }

    pub(super) fn read_spec(&self, run: RunId) -> Result<Option<RunSpec>, HistoryError> {
        let key = run.0.to_be_bytes();
        let mut encoded = Vec::new();
        // Pieces in key order; a store written before specs were split holds one value under
        // the run's id alone, which sorts first and is the whole spec.
        for piece in self.run_specs.scan_prefix(key).values() {
            encoded.extend_from_slice(&piece?);
        }
        if encoded.is_empty() {
            return Ok(None);
        }
        decode(&key, &encoded).map(Some)
    }

    /// A finished run is never resumed: its spec can go.
    pub(super) fn remove_spec(&self, run: RunId) -> Result<(), HistoryError> {
        for key in self.run_specs.scan_prefix(run.0.to_be_bytes()).keys() {
            self.run_specs.remove(key?)?;
        }
        Ok(())
    }

    /// Removes the spec pieces of runs that are not running: a coordinator stopped between
    /// storing a submission's spec and its run record leaves pieces no run will ever read (a
    /// finished run's spec goes when it closes). Returns how many runs' pieces went.
    pub(super) fn remove_orphan_specs(&self) -> Result<usize, HistoryError> {
        let mut removed = 0;
        let mut current: Option<(u64, bool)> = None;
        for key in self.run_specs.iter().keys() {
            let key = key?;
            let Some(id) = key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let keep = match current {
                Some((seen, keep)) if seen == id => keep,
                _ => {
                    // A record that cannot be read keeps its spec: only a known state decides.
                    let keep = match self.run(RunId(id)) {
                        Ok(run) => run.is_some_and(|r| r.state == RunState::Running),
                        Err(_) => true,
                    };
                    removed += usize::from(!keep);
                    current = Some((id, keep));
                    keep
                }
            };
            if !keep {
                self.run_specs.remove(key)?;
            }
        }
        if removed > 0 {
            self.run_specs.flush()?;
        }
        Ok(removed)
    }
}
