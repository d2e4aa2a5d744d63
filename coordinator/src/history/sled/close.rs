//! Closing a run: its record's state and summary, quarantine moved along by the policy's
//! decisions (`history::policy`), and retention.

use testfleet_model::{RunId, RunState, RunSummary, TestId};

use super::super::policy::{self, QuarantineChange};
use super::super::records::{QuarantineEntry, RunRecord, decode, encode};
use super::super::{HistoryError, HistoryStore};
use super::SledStore;
use super::keys::test_key;

impl SledStore {
    fn update_run(
        &self,
        id: RunId,
        f: impl FnOnce(&mut RunRecord),
    ) -> Result<Option<RunRecord>, HistoryError> {
        let key = id.0.to_be_bytes();
        let Some(bytes) = self.runs.get(key)? else {
            return Ok(None);
        };
        let mut rec: RunRecord = decode(&key, &bytes)?;
        f(&mut rec);
        self.runs.insert(key, encode(&rec))?;
        Ok(Some(rec))
    }

    /// Closes a run whose records are all in sled: its state and summary, quarantine transitions,
    /// retention, and a flush (a finished run is on disk).
    pub(super) fn close_run(
        &self,
        id: RunId,
        state: RunState,
        summary: &RunSummary,
    ) -> Result<(), HistoryError> {
        if let Some(run) = self.update_run(id, |r| {
            r.state = state;
            r.summary = Some(summary.clone());
        })? {
            self.settle_quarantine(&run)?;
        }
        self.remove_spec(id)?;
        self.prune(id)?;
        self.db.flush()?;
        Ok(())
    }

    /// Moves quarantine along after a run, as the policy decides for each settled test.
    fn settle_quarantine(&self, run: &RunRecord) -> Result<(), HistoryError> {
        let policy = run.quarantine;
        // Nothing is in quarantine and nothing can enter it: no need to read the run back (for
        // 100,000 tests that read was 7% of the history writer's time).
        if self.quarantine.is_empty() && !policy.auto {
            return Ok(());
        }
        let settled_in = policy::SettledIn {
            run_id: run.run_id,
            created_unix_ms: run.created_unix_ms,
        };
        for t in self.run_tests(RunId(run.run_id))? {
            let Some(outcome) = t.outcome else { continue };
            let id = TestId {
                binary_id: t.binary_id.clone(),
                name: t.name.clone(),
            };
            let key = test_key(&run.suite, &id);
            let entry: Option<QuarantineEntry> = self
                .quarantine
                .get(&key)?
                .map(|b| decode(&key, &b))
                .transpose()?;
            let proved_flaky = || {
                self.summary_of(&key, &run.suite, &id)
                    .map(|s| s.flaky_revisions > 0)
            };
            match policy::settle_quarantine(entry, outcome, policy, settled_in, proved_flaky)? {
                QuarantineChange::None => {}
                QuarantineChange::Keep(e) => {
                    self.quarantine.insert(&key, encode(&e))?;
                }
                QuarantineChange::Release { streak } => {
                    self.quarantine.remove(&key)?;
                    tracing::info!(test = %id, streak, "released from quarantine");
                }
                QuarantineChange::Enter(e) => {
                    self.quarantine.insert(&key, encode(&e))?;
                    tracing::info!(test = %id, "quarantined by policy");
                }
            }
        }
        Ok(())
    }

    /// Removes the output files of runs history no longer has: a coordinator stopped between
    /// pruning a run and removing its file leaves one. Returns how many went.
    pub(super) fn remove_orphan_outputs(&self) -> Result<usize, HistoryError> {
        let mut removed = 0;
        for run in self.output_files.runs()? {
            if !self.runs.contains_key(run.0.to_be_bytes())? {
                self.output_files.remove_run(run)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Drops the oldest runs beyond the retention, with their per-test records.
    fn prune(&self, newest: RunId) -> Result<(), HistoryError> {
        let Some(cutoff) = newest.0.checked_sub(self.keep_runs) else {
            return Ok(());
        };
        let old: Vec<sled::IVec> = self
            .runs
            .range(..=(cutoff).to_be_bytes())
            .keys()
            .collect::<Result<_, _>>()?;
        // A key of a pruned run names nothing any more (a job retried that late starts anew).
        for kv in self.run_keys.iter() {
            let (k, v) = kv?;
            if v.as_ref() <= cutoff.to_be_bytes().as_slice() {
                self.run_keys.remove(k)?;
            }
        }
        for key in old {
            let mut batch = sled::Batch::default();
            for k in self.run_tests.scan_prefix(&key).keys() {
                batch.remove(k?);
            }
            self.run_tests.apply_batch(batch)?;
            let mut batch = sled::Batch::default();
            for k in self.outputs.scan_prefix(&key).keys() {
                batch.remove(k?);
            }
            self.outputs.apply_batch(batch)?;
            self.runs.remove(&key)?;
            if let Ok(id) = <[u8; 8]>::try_from(key.as_ref()) {
                self.output_files
                    .remove_run(RunId(u64::from_be_bytes(id)))?;
            }
        }
        Ok(())
    }
}
