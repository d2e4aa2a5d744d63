//! The history writer: a dedicated thread that applies scheduler events to the store in order, so
//! sled's synchronous writes never stall the async runtime.
//!
//! Results are written to the run's records as they arrive. Their effect on the tests' records
//! (statistics, and the outcome they settled) waits for their lease to finish: a lease in which
//! nearly every test failed at once points at the machine, not the tests, and is left out of the
//! statistics (see `docs/design/history.md`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use testfleet_model::{EventKind, Outcome, RunEvent, RunId, TestId};
use tokio::sync::mpsc;

use super::{HistoryError, HistoryStore, HistoryWrites, LoggedAttempt, RunRecord};
use crate::data_room::DataRoom;

/// Updates written as one group at most: large enough to amortise each record's read and write
/// and the shard threads (65,536 ingested 8–14% faster than 16,384 in side-by-side runs), small enough that a
/// group's records stay in the tens of megabytes.
const GROUP_MAX: usize = 65536;

#[derive(Clone, Debug)]
pub enum HistoryUpdate {
    RunCreated(Box<RunRecord>),
    Event {
        suite: Arc<str>,
        /// Boxed: a result's event is large, and the writer holds up to a group's worth of
        /// updates at once (a vector of them inline took 19 MiB).
        event: Box<RunEvent>,
        /// The credits of the agent's result this event records, given back once it is written.
        credit: Option<super::credits::Credit>,
    },
    /// Answered once everything sent before it is written.
    Synced(SyncAck),
}

#[derive(Clone, Debug)]
pub struct SyncAck(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);

impl SyncAck {
    fn answer(self) {
        if let Some(tx) = self.0.lock().expect("sync ack lock").take() {
            let _ = tx.send(());
        }
    }
}

/// How long a history query (or a dashboard page) waits for the writer to catch up before
/// answering from what is written: a query right after a run finished sees that run, and one made
/// while a backlog of hundreds of thousands of results is being written still answers.
pub const QUERY_WAIT: Duration = Duration::from_secs(10);

/// Waits until the writer has written everything sent to it before this call, for at most
/// `limit`; false if it has not by then (or has stopped). A query that follows a finished run
/// then sees that run: the run's last events reach its watchers before they reach the disk.
pub async fn written(history: &mpsc::UnboundedSender<HistoryUpdate>, limit: Duration) -> bool {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let ack = SyncAck(Arc::new(std::sync::Mutex::new(Some(tx))));
    if history.send(HistoryUpdate::Synced(ack)).is_err() {
        return false;
    }
    matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
}

/// How long a group whose write failed waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Starts the writer; it ends (after flushing) when every sender is dropped. Join the handle to
/// know that everything sent has been written. With `room`, it writes nothing while the data dir
/// is below its minimum of free space: it holds what it has (see `data_room.rs`).
pub fn spawn_writer(
    store: Arc<dyn HistoryStore>,
    room: Option<Arc<DataRoom>>,
) -> (
    mpsc::UnboundedSender<HistoryUpdate>,
    std::thread::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<HistoryUpdate>();
    let handle = std::thread::Builder::new()
        .name("history-writer".into())
        .spawn(move || {
            lower_priority();
            let mut w = Writer {
                store,
                revisions: HashMap::new(),
                pending: HashMap::new(),
            };
            let mut group = Vec::with_capacity(GROUP_MAX);
            let mut failing = false;
            loop {
                if group.is_empty() {
                    match rx.blocking_recv() {
                        Some(first) => group.push(first),
                        None => break,
                    }
                }
                // Whatever else is already waiting goes into the same group of writes.
                while group.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(u) => group.push(u),
                        Err(_) => break,
                    }
                }
                if let Some(room) = &room
                    && room.check(0).is_err()
                {
                    tracing::warn!(
                        updates = group.len(),
                        "history waits for room on the data dir, holding what it has not written: agents' results go unacknowledged once --max-pending-result-bytes of them wait"
                    );
                    if !room.wait_blocking(|| rx.is_closed()) {
                        tracing::error!(
                            updates = group.len() + rx.len(),
                            "stopping with the data dir full: the last results are not in history; unfinished runs resume on the next start and run those tests again"
                        );
                        return;
                    }
                    tracing::info!("history has room again: writing what it held");
                }
                match w.write_group(&group) {
                    Ok(()) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("history is written again");
                        }
                        // The group is committed: syncs are answered, and its results' credits
                        // go back to their sessions as the group is dropped.
                        answer_syncs(group.drain(..));
                    }
                    Err(e) if e.is_storage() => {
                        // Kept with its credits: agents stop being acknowledged and keep their
                        // results instead of their being acknowledged and lost.
                        if !std::mem::replace(&mut failing, true) {
                            tracing::error!(error = %e, updates = group.len(), "history cannot be written: its results are held, and agents' results go unacknowledged, until it can (sled refuses every write after an I/O error until the coordinator restarts: restart it once the data dir has room; unfinished runs resume)");
                        }
                        if rx.is_closed() {
                            tracing::error!(updates = group.len() + rx.len(), "stopping with history unwritten: unfinished runs resume on the next start and run those tests again");
                            return;
                        }
                        std::thread::sleep(RETRY_AFTER);
                    }
                    Err(e) => {
                        // Not the disk (a record that cannot be read): history is derived data,
                        // the failure is reported and the runs go on.
                        tracing::error!(error = %e, "failed to write history");
                        answer_syncs(group.drain(..));
                    }
                }
            }
            // Leases still open when the coordinator stops: what they ran and settled counts.
            if let Err(e) = w.write_held() {
                tracing::error!(error = %e, "failed to write the attempts of unfinished leases");
            }
            if let Err(e) = w.store.flush() {
                tracing::error!(error = %e, "failed to flush history");
            }
        })
        .expect("spawning a thread succeeds");
    (tx, handle)
}

/// Answers the syncs among a group's updates, which are dropped (and their credits given back).
fn answer_syncs(group: impl Iterator<Item = HistoryUpdate>) {
    for update in group {
        if let HistoryUpdate::Synced(ack) = update {
            ack.answer();
        }
    }
}

/// History is throughput work; dispatching leases is latency work. When the two compete for a
/// core, the scheduler should win: the writer thread runs at a lower priority (nice 10), and the
/// shard threads it starts inherit it. Linux applies `setpriority` to a single thread when given
/// its thread id. (`SCHED_IDLE` gave dispatch more, but starves the writer on a machine kept busy:
/// queries and resumes that wait for it would wait for seconds; docs/benchmarks.md, scale.)
fn lower_priority() {
    // SAFETY: gettid and setpriority take and return plain integers.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

struct Writer {
    store: Arc<dyn HistoryStore>,
    /// Revision of each open run, for the attempts' log entries.
    revisions: HashMap<RunId, String>,
    /// Attempts waiting for their lease to finish, by (run, lease).
    pending: HashMap<(RunId, u64), Held>,
}

/// A lease's attempts waiting for it to finish, with the outcomes they settled: a test's
/// outcome is written with its attempt, so that the two cost its record one read and one write
/// (written as they arrived, a group boundary inside a lease of thousands of tests split them).
#[derive(Clone, Debug)]
struct Held {
    suite: Arc<str>,
    attempts: Vec<(TestId, LoggedAttempt)>,
    /// Index into `attempts`, and the outcome that attempt settled.
    settled: Vec<(usize, Outcome)>,
}

impl Held {
    fn new(suite: Arc<str>) -> Self {
        Held {
            suite,
            attempts: Vec::new(),
            settled: Vec::new(),
        }
    }

    /// Writes the lease's attempts (left out of the statistics if the lease failed almost as a
    /// whole) and the outcomes they settled.
    fn write(self, store: &mut dyn HistoryWrites, mass_failure: bool) -> Result<(), HistoryError> {
        let suite = &self.suite;
        if mass_failure {
            let ids: Vec<TestId> = self.attempts.iter().map(|(id, _)| id.clone()).collect();
            store.record_excluded(suite, &ids)?;
        } else {
            store.record_attempts(suite, &self.attempts)?;
        }
        for (i, outcome) in self.settled {
            store.record_settled(suite, &self.attempts[i].0, outcome)?;
        }
        Ok(())
    }
}

impl Writer {
    /// Writes a group. If the disk fails it, the writer is left as it was before, so the same
    /// group can be written again.
    fn write_group(&mut self, group: &[HistoryUpdate]) -> Result<(), HistoryError> {
        let before = (self.revisions.clone(), self.pending.clone());
        let store = self.store.clone();
        let written = store.write(&mut |tx| {
            for update in group {
                match self.apply(tx, update) {
                    Err(e) if e.is_storage() => return Err(e),
                    // History is derived data: an update it cannot make is reported, and the
                    // rest of the group is written.
                    Err(e) => tracing::error!(error = %e, "failed to write history"),
                    Ok(()) => {}
                }
            }
            Ok(())
        });
        if written.as_ref().is_err_and(HistoryError::is_storage) {
            (self.revisions, self.pending) = before;
        }
        written
    }

    /// Writes every lease's held attempts and outcomes.
    fn write_held(&mut self) -> Result<(), HistoryError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut held: Vec<Held> = self.pending.drain().map(|(_, held)| held).collect();
        self.store.write(&mut |tx| {
            for h in std::mem::take(&mut held) {
                h.write(tx, false)?;
            }
            Ok(())
        })
    }

    fn apply(
        &mut self,
        store: &mut dyn HistoryWrites,
        update: &HistoryUpdate,
    ) -> Result<(), HistoryError> {
        let (suite, event) = match update {
            HistoryUpdate::RunCreated(rec) => {
                self.revisions
                    .insert(RunId(rec.run_id), rec.revision.clone());
                return store.put_run(rec);
            }
            HistoryUpdate::Event { suite, event, .. } => (suite, event),
            HistoryUpdate::Synced(_) => return Ok(()),
        };
        let run = event.run_id;
        match &event.kind {
            EventKind::RunStarted {
                skipped,
                quarantined,
                ..
            } => {
                let q: Vec<u32> = quarantined.iter().map(|t| t.index).collect();
                store.record_skipped(run, skipped, &q)?;
            }
            EventKind::TestFinished(finished) => {
                store.record_result(run, finished)?;
                if !finished.result.output.is_empty() {
                    store.record_output(run, event.seq, &finished.result.output)?;
                }
                let id = TestId {
                    binary_id: finished.test.binary_id.to_string(),
                    name: finished.test.name.to_string(),
                };
                // Only attempts that ran count for statistics: an infrastructure error or a test
                // that skipped itself says nothing of its duration or its flakiness.
                if let (Some(lease), true) =
                    (finished.lease_id, finished.result.status.is_timed_run())
                {
                    let logged = LoggedAttempt {
                        run_id: run.0,
                        attempt: finished.attempt,
                        revision: self.revisions.get(&run).cloned().unwrap_or_default(),
                        status: finished.result.status,
                        duration_ms: finished.result.duration.as_millis() as u64,
                        agent_id: finished.agent_id.clone(),
                        at_unix_ms: event.at_unix_ms,
                    };
                    let held = self
                        .pending
                        .entry((run, lease))
                        .or_insert_with(|| Held::new(suite.clone()));
                    if let Some(o) = finished.final_outcome {
                        held.settled.push((held.attempts.len(), o));
                    }
                    held.attempts.push((id, logged));
                } else if let Some(o) = finished.final_outcome {
                    store.record_settled(suite, &id, o)?;
                }
            }
            EventKind::LeaseFinished {
                lease_id,
                tests,
                failed,
                ..
            } => {
                if let Some(held) = self.pending.remove(&(run, *lease_id)) {
                    let mass_failure = super::policy::is_mass_failure(*tests, *failed);
                    if mass_failure {
                        tracing::warn!(run = %run, lease = lease_id, tests, failed, "lease failed almost as a whole: left out of test statistics");
                    }
                    held.write(store, mass_failure)?;
                }
            }
            EventKind::RunFinished { summary, state } => {
                // Leases that never finished (revoked, lost) still count what they ran.
                let open: Vec<(RunId, u64)> = self
                    .pending
                    .keys()
                    .filter(|(r, _)| *r == run)
                    .copied()
                    .collect();
                for key in open {
                    if let Some(held) = self.pending.remove(&key) {
                        held.write(store, false)?;
                    }
                }
                self.revisions.remove(&run);
                store.finish_run(run, *state, summary)?;
            }
            EventKind::TestStarted { .. }
            | EventKind::Notice { .. }
            | EventKind::ServiceStarted { .. }
            | EventKind::ImagePulled { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::SledStore;
    use testfleet_model::{QuarantinePolicy, RunState};

    fn created(run: u64) -> HistoryUpdate {
        HistoryUpdate::RunCreated(Box::new(RunRecord {
            run_id: run,
            suite: "s".into(),
            total_tests: 0,
            revision: "r".into(),
            branch: "main".into(),
            created_unix_ms: run,
            state: RunState::Running,
            summary: None,
            quarantine: QuarantinePolicy::default(),
            resumes: 0,
        }))
    }

    /// The writer holds up to a group of updates in a vector: each is a few words, its event
    /// boxed (inline, a result's event made the vector 19 MiB).
    #[test]
    fn an_update_is_a_few_words() {
        assert!(std::mem::size_of::<HistoryUpdate>() <= 40);
    }

    /// Everything sent before a sync is readable once it is answered; a stopped writer answers
    /// no sync.
    #[tokio::test]
    async fn a_sync_is_answered_after_everything_sent_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn HistoryStore> = Arc::new(SledStore::open(dir.path()).unwrap());
        let (tx, handle) = spawn_writer(store.clone(), None);
        for run in 1..=2_000 {
            tx.send(created(run)).unwrap();
        }
        assert!(written(&tx, Duration::from_secs(60)).await);
        for run in 1..=2_000 {
            assert!(store.run(RunId(run)).unwrap().is_some(), "run {run}");
        }
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        drop(closed_rx);
        assert!(!written(&closed_tx, Duration::from_secs(60)).await);
        drop(tx);
        handle.join().unwrap();
    }

    /// A writer that has not reached the sync by the limit (here: one that never reads) is
    /// reported behind, so the query can say so.
    #[tokio::test]
    async fn a_sync_not_reached_within_the_limit_reports_the_writer_behind() {
        let (tx, _never_read) = mpsc::unbounded_channel();
        assert!(!written(&tx, Duration::from_millis(50)).await);
    }

    /// Below the data dir's minimum of free space nothing is written; a writer told to stop
    /// meanwhile stops without writing (what it held is not in history: unfinished runs resume).
    #[tokio::test]
    async fn a_writer_without_room_writes_nothing_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn HistoryStore> = Arc::new(SledStore::open(dir.path()).unwrap());
        let no_room = Arc::new(DataRoom::new(dir.path(), u64::MAX));
        let (tx, handle) = spawn_writer(store.clone(), Some(no_room));
        tx.send(created(1)).unwrap();
        assert!(!written(&tx, Duration::from_millis(50)).await);
        drop(tx);
        tokio::task::spawn_blocking(move || handle.join().unwrap())
            .await
            .unwrap();
        assert!(store.run(RunId(1)).unwrap().is_none());
    }
}
