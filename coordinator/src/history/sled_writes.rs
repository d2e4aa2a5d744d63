//! Grouped writes to the sled store. A [`WriteTx`] reads each record it changes once, keeps the
//! changes in memory, and writes every tree back in one batch when the group commits; a burst of
//! results for the same tests (a result, then its statistics, then its settled outcome) costs one
//! read and one write per record instead of three.

use std::collections::{BTreeMap, HashMap};

use testfleet_model::{AttemptResult, Outcome, RunId, RunState, RunSummary, TestId, TestRef};

use super::records::{
    AttemptRecord, LoggedAttempt, RunEntry, RunRecord, TestLog, TestSummary, decode, encode,
};
use super::sled_store::{OUTPUT_EXCERPT_BYTES, SledStore, run_group_key, test_key};
use super::{HistoryError, HistoryWrites, verdict};

pub(super) struct WriteTx<'a> {
    store: &'a SledStore,
    summaries: HashMap<Vec<u8>, TestSummary>,
    logs: HashMap<Vec<u8>, TestLog>,
    /// What this group records for each run: written as one value per run.
    run_entries: BTreeMap<u64, Vec<RunEntry>>,
}

impl<'a> WriteTx<'a> {
    pub(super) fn new(store: &'a SledStore) -> Self {
        WriteTx {
            store,
            summaries: HashMap::new(),
            logs: HashMap::new(),
            run_entries: BTreeMap::new(),
        }
    }

    fn summary(&mut self, suite: &str, id: &TestId) -> Result<&mut TestSummary, HistoryError> {
        let key = test_key(suite, id);
        if !self.summaries.contains_key(&key) {
            let s = self.store.summary_of(&key, suite, id)?;
            self.summaries.insert(key.clone(), s);
        }
        Ok(self.summaries.get_mut(&key).expect("just inserted"))
    }

    /// A test's summary and log together, for recording an attempt.
    fn summary_and_log(
        &mut self,
        suite: &str,
        id: &TestId,
    ) -> Result<(&mut TestSummary, &mut TestLog), HistoryError> {
        let key = test_key(suite, id);
        if !self.logs.contains_key(&key) {
            let log = match self.store.test_log.get(&key)? {
                Some(b) => decode(&key, &b)?,
                None => TestLog::default(),
            };
            self.logs.insert(key.clone(), log);
        }
        self.summary(suite, id)?;
        Ok((
            self.summaries.get_mut(&key).expect("loaded above"),
            self.logs.get_mut(&key).expect("loaded above"),
        ))
    }

    /// Writes what the group changed, one batch per tree. The attempt logs (the largest values)
    /// are encoded and written on a second thread while the rest is: sled's trees are
    /// independent, and the writer is the coordinator's busiest thread.
    pub(super) fn commit(&mut self) -> Result<(), HistoryError> {
        let logs: Vec<(Vec<u8>, TestLog)> = self.logs.drain().collect();
        let store = self.store;
        std::thread::scope(|scope| {
            let log_writer = (!logs.is_empty()).then(|| {
                scope.spawn(move || {
                    let mut batch = sled::Batch::default();
                    for (k, v) in logs {
                        batch.insert(k, encode(&v));
                    }
                    store.test_log.apply_batch(batch)
                })
            });
            let mut batch = sled::Batch::default();
            for (run, entries) in std::mem::take(&mut self.run_entries) {
                // Increasing across restarts, so a run's groups read back in the order written.
                let group = store.next_group_id()?;
                batch.insert(&run_group_key(RunId(run), group), encode(&entries));
            }
            store.run_tests.apply_batch(batch)?;
            let mut batch = sled::Batch::default();
            let written: Vec<(Vec<u8>, TestSummary)> = self.summaries.drain().collect();
            for (k, v) in &written {
                batch.insert(k.as_slice(), encode(v));
            }
            store.tests.apply_batch(batch)?;
            store.summaries_written(written);
            if let Some(w) = log_writer {
                w.join().expect("the log writer does not panic")?;
            }
            Ok(())
        })
    }
}

impl HistoryWrites for WriteTx<'_> {
    fn put_run(&mut self, rec: &RunRecord) -> Result<(), HistoryError> {
        self.store
            .runs
            .insert(rec.run_id.to_be_bytes(), encode(rec))?;
        Ok(())
    }

    fn record_skipped(
        &mut self,
        run: RunId,
        tests: &[TestRef],
        quarantined: &[u32],
    ) -> Result<(), HistoryError> {
        let entries = self.run_entries.entry(run.0).or_default();
        for t in tests {
            entries.push(RunEntry::Skipped {
                index: t.index,
                binary_id: t.binary_id.clone(),
                name: t.name.clone(),
                quarantined: quarantined.contains(&t.index),
            });
        }
        Ok(())
    }

    fn record_result(
        &mut self,
        run: RunId,
        test: &TestRef,
        attempt: u32,
        agent_id: &str,
        result: &AttemptResult,
        final_outcome: Option<Outcome>,
        quarantined: bool,
    ) -> Result<(), HistoryError> {
        let excerpt_len = result.output.len().min(OUTPUT_EXCERPT_BYTES);
        let attempt = AttemptRecord {
            attempt,
            agent_id: agent_id.to_owned(),
            status: result.status,
            duration_ms: result.duration.as_millis() as u64,
            exit_code: result.exit_code,
            signal: result.signal,
            message: result.message.clone(),
            output_excerpt: String::from_utf8_lossy(&result.output[..excerpt_len]).into_owned(),
        };
        self.run_entries
            .entry(run.0)
            .or_default()
            .push(RunEntry::Attempt {
                index: test.index,
                binary_id: test.binary_id.clone(),
                name: test.name.clone(),
                quarantined,
                attempt,
                outcome: final_outcome,
            });
        Ok(())
    }

    fn record_attempts(
        &mut self,
        suite: &str,
        attempts: &[(TestId, LoggedAttempt)],
    ) -> Result<(), HistoryError> {
        for (id, a) in attempts {
            let (summary, log) = self.summary_and_log(suite, id)?;
            verdict::record(summary, log, a.clone());
        }
        Ok(())
    }

    fn record_excluded(&mut self, suite: &str, tests: &[TestId]) -> Result<(), HistoryError> {
        for id in tests {
            self.summary(suite, id)?.excluded += 1;
        }
        Ok(())
    }

    fn record_settled(
        &mut self,
        suite: &str,
        id: &TestId,
        outcome: Outcome,
    ) -> Result<(), HistoryError> {
        let summary = self.summary(suite, id)?;
        summary.runs += 1;
        summary.last_outcome = Some(outcome);
        Ok(())
    }

    fn finish_run(
        &mut self,
        id: RunId,
        state: RunState,
        summary: &RunSummary,
    ) -> Result<(), HistoryError> {
        // Closing reads the run's records back (quarantine) and prunes: they must be in sled.
        self.commit()?;
        self.store.close_run(id, state, summary)
    }
}
