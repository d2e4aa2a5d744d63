//! When the history writer cannot keep up, results wait between the agents and the disk within a
//! budget (`--max-pending-result-bytes`): past it, results are acknowledged only as the writer
//! catches up, while dispatch (leases for work requests) goes on. Here the writer's disk is held
//! shut on purpose: exactly the results that fit in the budget are acknowledged until it opens,
//! and then every one is, and recorded. Their outputs live in history, not in the run's event log
//! in memory, and a watcher from the start gets them back. The same holds when the disk fails
//! the writes instead (full): the writer keeps the group and its credits and writes it once
//! it can, nothing lost and nothing written twice.

mod common;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use testfleet_coordinator::history::{
    HistoryError, HistoryStore, HistoryWrites, LoggedAttempt, QuarantineEntry, RunRecord, TestLog,
    TestRecord, TestSummary,
};
use testfleet_coordinator::{CoordinatorConfig, SledStore};
use testfleet_model::{
    Outcome, RunId, RunSpec, RunState, RunSummary, TestFinished, TestId, TestRef,
};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use tokio_stream::StreamExt;

const GUARD: Duration = Duration::from_secs(60);
/// Tests in the run: more than the first leases take.
const TESTS: usize = 24;

/// A sled store whose group writes wait while the gate is shut, as a disk that stalls would, or
/// with `fails` fail at once, as a full disk does.
struct GatedStore {
    inner: SledStore,
    open: Arc<(Mutex<bool>, Condvar)>,
    fails: bool,
}

impl GatedStore {
    fn is_open(&self) -> bool {
        *self.open.0.lock().unwrap()
    }

    fn wait_open(&self) {
        let (lock, cvar) = &*self.open;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cvar.wait(open).unwrap();
        }
    }
}

/// Writes that go nowhere: a group whose commit is going to fail.
struct Discard;

impl HistoryWrites for Discard {
    fn put_run(&mut self, _: &RunRecord) -> Result<(), HistoryError> {
        Ok(())
    }
    fn record_skipped(&mut self, _: RunId, _: &[TestRef], _: &[u32]) -> Result<(), HistoryError> {
        Ok(())
    }
    fn record_result(&mut self, _: RunId, _: &TestFinished) -> Result<(), HistoryError> {
        Ok(())
    }
    fn record_output(&mut self, _: RunId, _: u64, _: &[u8]) -> Result<(), HistoryError> {
        Ok(())
    }
    fn record_attempts(
        &mut self,
        _: &str,
        _: &[(TestId, LoggedAttempt)],
    ) -> Result<(), HistoryError> {
        Ok(())
    }
    fn record_excluded(&mut self, _: &str, _: &[TestId]) -> Result<(), HistoryError> {
        Ok(())
    }
    fn record_settled(&mut self, _: &str, _: &TestId, _: Outcome) -> Result<(), HistoryError> {
        Ok(())
    }
    fn finish_run(&mut self, _: RunId, _: RunState, _: &RunSummary) -> Result<(), HistoryError> {
        Ok(())
    }
}

fn set_gate(gate: &Arc<(Mutex<bool>, Condvar)>, open: bool) {
    *gate.0.lock().unwrap() = open;
    gate.1.notify_all();
}

impl HistoryStore for GatedStore {
    fn next_run_id(&self) -> Result<RunId, HistoryError> {
        self.inner.next_run_id()
    }
    fn put_spec(&self, run: RunId, spec: &RunSpec) -> Result<(), HistoryError> {
        self.inner.put_spec(run, spec)
    }
    fn spec(&self, run: RunId) -> Result<Option<RunSpec>, HistoryError> {
        self.inner.spec(run)
    }
    fn unfinished_runs(&self) -> Result<Vec<RunRecord>, HistoryError> {
        self.inner.unfinished_runs()
    }
    fn write(
        &self,
        f: &mut dyn FnMut(&mut dyn HistoryWrites) -> Result<(), HistoryError>,
    ) -> Result<(), HistoryError> {
        if self.fails && !self.is_open() {
            // As sled does: the group's updates are applied, and its commit fails.
            f(&mut Discard)?;
            let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
            return Err(HistoryError::Storage(sled::Error::Io(full)));
        }
        self.wait_open();
        self.inner.write(f)
    }
    fn run(&self, id: RunId) -> Result<Option<RunRecord>, HistoryError> {
        self.inner.run(id)
    }
    fn runs(&self, before: Option<RunId>, limit: usize) -> Result<Vec<RunRecord>, HistoryError> {
        self.inner.runs(before, limit)
    }
    fn run_tests(&self, id: RunId) -> Result<Vec<TestRecord>, HistoryError> {
        self.inner.run_tests(id)
    }
    fn outputs(&self, run: RunId, seqs: &[u64]) -> Result<Vec<Option<Vec<u8>>>, HistoryError> {
        self.inner.outputs(run, seqs)
    }
    fn for_each_summary(
        &self,
        suite: Option<&str>,
        f: &mut dyn FnMut(&TestSummary),
    ) -> Result<(), HistoryError> {
        self.inner.for_each_summary(suite, f)
    }
    fn summaries_of(
        &self,
        suite: &str,
        tests: &[TestId],
    ) -> Result<Vec<Option<TestSummary>>, HistoryError> {
        self.inner.summaries_of(suite, tests)
    }
    fn test_log(
        &self,
        suite: &str,
        test: &TestId,
    ) -> Result<Option<(TestSummary, TestLog)>, HistoryError> {
        self.inner.test_log(suite, test)
    }
    fn quarantined(&self, suite: &str, tests: &[TestId]) -> Result<Vec<bool>, HistoryError> {
        self.inner.quarantined(suite, tests)
    }
    fn set_quarantine(
        &self,
        suite: &str,
        test: &TestId,
        entry: Option<&QuarantineEntry>,
    ) -> Result<bool, HistoryError> {
        self.inner.set_quarantine(suite, test, entry)
    }
    fn quarantine_list(&self) -> Result<Vec<(String, TestId, QuarantineEntry)>, HistoryError> {
        self.inner.quarantine_list()
    }
    fn run_for_key(&self, key: &str) -> Result<Option<RunId>, HistoryError> {
        self.inner.run_for_key(key)
    }
    fn put_run_key(&self, key: &str, run: RunId) -> Result<(), HistoryError> {
        self.inner.put_run_key(key, run)
    }
    fn flush(&self) -> Result<(), HistoryError> {
        self.inner.flush()
    }
}

/// A passing result of `t` in `lease` with 16 KiB of output.
fn passed(lease: &pb::Lease, t: &pb::LeasedTest) -> pb::AgentMessage {
    common::passed(lease, t, vec![b'o'; 16 << 10])
}

async fn serve(
    dir: &Path,
    inner: SledStore,
    gate: Arc<(Mutex<bool>, Condvar)>,
    fails: bool,
) -> common::Served {
    let store = Arc::new(GatedStore {
        inner,
        open: gate,
        fails,
    });
    let mut config = CoordinatorConfig::new(dir);
    // Three such results fit (17 KiB of credits each), a fourth does not.
    config.limits.max_pending_result_bytes = 64 << 10;
    common::serve_with(config, store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_past_the_budget_wait_for_the_writer_while_dispatch_goes_on() {
    results_past_the_budget_wait(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_of_a_group_the_disk_failed_are_held_then_written_once() {
    results_past_the_budget_wait(true).await;
}

/// With `fails`, the shut disk fails writes instead of stalling them.
async fn results_past_the_budget_wait(fails: bool) {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new((Mutex::new(true), Condvar::new()));
    let sled = SledStore::open(dir.path()).unwrap();
    let served = serve(dir.path(), sled.clone(), gate.clone(), fails).await;
    let mut client = CoordinatorClient::new(served.channel.clone());
    let run_id = client
        .submit_run(pb::SubmitRunRequest {
            spec: Some(pb::RunSpec::from(&common::model_spec(TESTS))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;

    let (tx, mut inbound) = common::agent_session(&served.channel, "slow-disk", 6).await;
    let mut acks = 0;

    // The disk stalls (or fails); the agent finishes four tests with 16 KiB of output each, of which
    // three fit in the budget.
    set_gate(&gate, false);
    let mut leased = vec![];
    while leased.len() < 4 {
        tx.send(common::work(6)).unwrap();
        let lease = common::next_lease(&mut inbound, &mut acks).await;
        leased.extend(lease.tests.iter().map(|t| passed(&lease, t)));
    }
    let mut results = leased.into_iter();
    for r in results.by_ref().take(4) {
        tx.send(r).unwrap();
    }
    // Dispatch goes on meanwhile: the next work request is served.
    tx.send(common::work(6)).unwrap();
    let more = common::next_lease(&mut inbound, &mut acks).await;
    let mut rest: Vec<pb::AgentMessage> = results.collect();
    rest.extend(more.tests.iter().map(|t| passed(&more, t)));
    while acks < 3 {
        let m = tokio::time::timeout(GUARD, inbound.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::coordinator_message::Kind::Ack(_)) = m.kind {
            acks += 1;
        }
    }
    // The fourth waits for credits that only the writer gives back, and the writer waits for the
    // disk: whatever the scheduler was sent before now has been handled (this reply comes after
    // it), and there is still no fourth acknowledgement.
    let agents = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(agents.agents.len(), 1);
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(0), inbound.next()).await
    {
        if let Some(pb::coordinator_message::Kind::Ack(_)) = m.kind {
            acks += 1;
        }
    }
    assert_eq!(acks, 3, "only what fits in the budget is acknowledged");

    // The disk moves again: every result is acknowledged, and the run is recorded whole.
    set_gate(&gate, true);
    for r in rest {
        tx.send(r).unwrap();
    }
    while acks < TESTS {
        tx.send(common::work(6)).unwrap();
        let m = tokio::time::timeout(GUARD, inbound.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match m.kind {
            Some(pb::coordinator_message::Kind::Ack(_)) => acks += 1,
            Some(pb::coordinator_message::Kind::Lease(l)) => {
                for t in &l.tests {
                    tx.send(passed(&l, t)).unwrap();
                }
            }
            _ => {}
        }
    }
    let tests = client
        .get_run_tests(pb::GetRunRequest {
            run_id: run_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tests;
    assert_eq!(tests.len(), TESTS);
    // Each result once: a group the disk failed was written whole when retried, not twice.
    let records = sled.run_tests(RunId(run_id.parse().unwrap())).unwrap();
    assert_eq!(records.len(), TESTS);
    for r in &records {
        assert_eq!(r.attempts.len(), 1, "{r:?}");
    }
    // And in the tests' statistics (written when each lease finished), each attempt once too.
    let summaries = sled.summaries(None).unwrap();
    assert_eq!(summaries.len(), TESTS);
    for s in &summaries {
        assert_eq!((s.attempts, s.runs), (1, 1), "{s:?}");
    }
    assert!(
        tests
            .iter()
            .all(|t| t.outcome == pb::Outcome::Passed as i32),
        "{tests:?}"
    );
    // The run's event log in memory keeps no output: a watcher from the start gets each one
    // back from history, whole.
    let mut outputs = 0;
    for e in common::watch_to_end(&mut client, &run_id, GUARD).await {
        if let Some(pb::run_event::Kind::TestFinished(f)) = e.kind {
            let output = f.result.unwrap().output;
            assert_eq!(output, vec![b'o'; 16 << 10]);
            outputs += 1;
        }
    }
    assert_eq!(outputs, TESTS, "every result, with its output");
    drop(tx);
    let _ = served.stop.send(());
}
