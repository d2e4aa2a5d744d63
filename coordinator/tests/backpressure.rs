//! When the history writer cannot keep up, results wait between the agents and the disk within a
//! budget (`--max-pending-result-bytes`): past it, results are acknowledged only as the writer
//! catches up, while dispatch (leases for work requests) goes on. Here the writer's disk is held
//! shut on purpose: exactly the results that fit in the budget are acknowledged until it opens,
//! and then every one is, and recorded. Their outputs live in history, not in the run's event log
//! in memory, and a watcher from the start gets them back.

mod common;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use testfleet_coordinator::history::{
    HistoryError, HistoryStore, HistoryWrites, QuarantineEntry, RunRecord, TestLog, TestRecord,
    TestSummary,
};
use testfleet_coordinator::{CoordinatorConfig, SledStore};
use testfleet_model::{RunId, RunSpec, TestId};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use tokio_stream::StreamExt;

const GUARD: Duration = Duration::from_secs(60);
/// Tests in the run: more than the first leases take.
const TESTS: usize = 24;

/// A sled store whose group writes wait while the gate is shut, as a disk that stalls would.
struct GatedStore {
    inner: SledStore,
    open: Arc<(Mutex<bool>, Condvar)>,
}

impl GatedStore {
    fn wait_open(&self) {
        let (lock, cvar) = &*self.open;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cvar.wait(open).unwrap();
        }
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

async fn serve(dir: &Path, gate: Arc<(Mutex<bool>, Condvar)>) -> common::Served {
    let store = Arc::new(GatedStore {
        inner: SledStore::open(dir).unwrap(),
        open: gate,
    });
    let mut config = CoordinatorConfig::new(dir);
    // Three such results fit (17 KiB of credits each), a fourth does not.
    config.limits.max_pending_result_bytes = 64 << 10;
    common::serve_with(config, store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_past_the_budget_wait_for_the_writer_while_dispatch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new((Mutex::new(true), Condvar::new()));
    let served = serve(dir.path(), gate.clone()).await;
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

    // The disk stalls; the agent finishes four tests with 16 KiB of output each, of which
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
