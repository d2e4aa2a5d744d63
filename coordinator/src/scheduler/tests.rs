//! The scheduler driven directly through its command channel, with agents as plain channels: every
//! behaviour here is deterministic because the scheduler handles one command at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use testfleet_model::{
    AgentId, AttemptResult, AttemptStatus, Binary, EventKind, LeaseId, Outcome, RunEvent, RunId,
    RunSpec, TestSpec,
};
use tokio::sync::mpsc;

use super::*;

fn spec(n: usize, retries: u32) -> Arc<RunSpec> {
    Arc::new(RunSpec {
        suite: "s".into(),
        binaries: vec![Binary {
            binary_id: "b".into(),
            path: "/bin/true".into(),
            cwd: "/".into(),
            env: BTreeMap::new(),
            services: vec![],
        }],
        tests: (0..n)
            .map(|i| TestSpec {
                binary: 0,
                name: format!("t{i}"),
                ignored: false,
            })
            .collect(),
        retries: Some(retries),
        test_timeout: Duration::from_secs(1),
        kill_grace: Duration::from_secs(1),
        output_cap_bytes: 4096,
        bundle_digest: None,
        revision: String::new(),
        branch: String::new(),
        services: vec![],
        workspace: String::new(),
    })
}

struct Harness {
    handle: SchedulerHandle,
    _history: mpsc::UnboundedReceiver<HistoryUpdate>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct FakeAgent {
    id: AgentId,
    conn: ConnId,
    rx: mpsc::UnboundedReceiver<AgentCommand>,
}

fn result(status: AttemptStatus) -> AttemptResult {
    AttemptResult {
        status,
        duration: Duration::from_millis(5),
        exit_code: None,
        signal: None,
        output: vec![],
        output_omitted_bytes: 0,
        message: String::new(),
    }
}

impl Harness {
    fn new() -> Self {
        let (history_tx, history_rx) = mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (handle, _task) = spawn(SchedulerConfig::default(), history_tx, async move {
            let _ = stopped.await;
        });
        Harness {
            handle,
            _history: history_rx,
            _stop: stop,
        }
    }

    async fn agent(&self, name: &str, slots: u32, conn: ConnId) -> FakeAgent {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id: AgentId = name.parse().unwrap();
        self.handle
            .send(Command::AgentConnected {
                hello: AgentHello {
                    agent_id: id.clone(),
                    slots,
                    labels: HashMap::new(),
                    docker_available: false,
                    version: "test".into(),
                    docker_status: "disabled in tests".into(),
                },
                conn,
                tx,
            })
            .unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(AgentCommand::Welcome { .. })
        ));
        FakeAgent { id, conn, rx }
    }

    fn from(&self, a: &FakeAgent, msg: FromAgent) {
        self.handle
            .send(Command::FromAgent {
                agent: a.id.clone(),
                conn: a.conn,
                msg,
            })
            .unwrap();
    }

    async fn submit(&self, run: u64, spec: Arc<RunSpec>) -> mpsc::UnboundedReceiver<RunEvent> {
        let estimates = vec![(Duration::from_secs(1), false); spec.tests.len()];
        self.handle
            .ask(|reply| Command::Submit {
                run_id: RunId(run),
                spec,
                estimates,
                reply,
            })
            .await
            .unwrap();
        let sub = self
            .handle
            .ask(|reply| Command::Watch {
                run_id: RunId(run),
                from_seq: 0,
                reply,
            })
            .await
            .unwrap()
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        for e in sub.backlog {
            tx.send(e).unwrap();
        }
        if let Some(mut live) = sub.live {
            tokio::spawn(async move {
                while let Some(e) = live.recv().await {
                    let _ = tx.send(e);
                }
            });
        }
        rx
    }

    /// Waits for the scheduler to have handled everything sent so far.
    async fn settle(&self) {
        self.handle
            .ask(|reply| Command::ListAgents { reply })
            .await
            .unwrap();
    }
}

async fn lease(a: &mut FakeAgent) -> LeaseGrant {
    match tokio::time::timeout(Duration::from_secs(30), a.rx.recv())
        .await
        .unwrap()
    {
        Some(AgentCommand::Lease(g)) => g,
        other => panic!("expected a lease, got {other:?}"),
    }
}

fn finished(g: &LeaseGrant, i: usize, status: AttemptStatus) -> FromAgent {
    let (index, attempt) = g.tests[i];
    FromAgent::Finished {
        run_id: g.run_id,
        index,
        attempt,
        lease_id: g.lease_id,
        result: result(status),
    }
}

async fn until_finished(events: &mut mpsc::UnboundedReceiver<RunEvent>) -> Vec<RunEvent> {
    let mut all = vec![];
    while let Some(e) = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .unwrap()
    {
        let done = matches!(e.kind, EventKind::RunFinished { .. });
        all.push(e);
        if done {
            break;
        }
    }
    all
}

#[tokio::test]
async fn a_parked_request_is_served_when_work_arrives_and_leases_respect_free_slots() {
    let h = Harness::new();
    let mut a = h.agent("a", 4, 1).await;
    h.from(&a, FromAgent::WorkRequest { free_slots: 3 });
    h.settle().await;
    assert!(
        a.rx.try_recv().is_err(),
        "no work yet: the request is parked"
    );
    let _events = h.submit(1, spec(100, 0)).await;
    let g = lease(&mut a).await;
    assert_eq!(g.tests.len(), 3, "capped by the free slots");
}

#[tokio::test]
async fn leases_shrink_towards_the_end_of_a_run() {
    let h = Harness::new();
    let mut a = h.agent("a", 8, 1).await;
    let mut events = h.submit(1, spec(40, 0)).await;
    let mut sizes = vec![];
    loop {
        h.from(&a, FromAgent::WorkRequest { free_slots: 8 });
        let g = lease(&mut a).await;
        sizes.push(g.tests.len());
        for i in 0..g.tests.len() {
            h.from(&a, finished(&g, i, AttemptStatus::Passed));
        }
        h.settle().await;
        if sizes.iter().sum::<usize>() == 40 {
            break;
        }
    }
    assert_eq!(sizes[0], 8, "{sizes:?}");
    assert_eq!(*sizes.last().unwrap(), 1, "{sizes:?}");
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
    let all = until_finished(&mut events).await;
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.passed == 40)
    );
}

#[tokio::test]
async fn a_retry_goes_to_another_agent_when_one_is_connected() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let mut b = h.agent("b", 1, 2).await;
    let mut events = h.submit(1, spec(1, 1)).await;
    h.from(&a, FromAgent::WorkRequest { free_slots: 1 });
    let g = lease(&mut a).await;
    h.from(&a, finished(&g, 0, AttemptStatus::Failed));
    // `a` asks again first, but the retry must wait for `b`.
    h.from(&a, FromAgent::WorkRequest { free_slots: 1 });
    h.settle().await;
    assert!(a.rx.try_recv().is_err());
    h.from(&b, FromAgent::WorkRequest { free_slots: 1 });
    let retry = lease(&mut b).await;
    assert_eq!(retry.tests, vec![(0, 2)], "attempt 2 of test 0");
    h.from(&b, finished(&retry, 0, AttemptStatus::Passed));
    let all = until_finished(&mut events).await;
    let outcome = all.iter().find_map(|e| match &e.kind {
        EventKind::TestFinished { final_outcome, .. } => *final_outcome,
        _ => None,
    });
    assert_eq!(outcome, Some(Outcome::Flaky));
}

#[tokio::test]
async fn duplicate_and_stale_results_are_ignored() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let mut events = h.submit(1, spec(2, 0)).await;
    h.from(&a, FromAgent::WorkRequest { free_slots: 1 });
    let g = lease(&mut a).await;
    h.from(&a, finished(&g, 0, AttemptStatus::Passed));
    h.from(&a, finished(&g, 0, AttemptStatus::Failed)); // a resend: ignored
    let mut wrong_attempt = finished(&g, 0, AttemptStatus::Failed);
    if let FromAgent::Finished { attempt, .. } = &mut wrong_attempt {
        *attempt = 7;
    }
    h.from(&a, wrong_attempt);
    h.from(&a, FromAgent::WorkRequest { free_slots: 1 });
    let g2 = lease(&mut a).await;
    let mut foreign = finished(&g2, 0, AttemptStatus::Failed);
    if let FromAgent::Finished { lease_id, .. } = &mut foreign {
        *lease_id = LeaseId(999);
    }
    h.from(&a, foreign);
    h.from(&a, finished(&g2, 0, AttemptStatus::Passed));
    let all = until_finished(&mut events).await;
    let finishes = all
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TestFinished { .. }))
        .count();
    assert_eq!(finishes, 2, "exactly one result per test");
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.passed == 2)
    );
}

#[tokio::test]
async fn a_lost_agent_s_tests_are_requeued_without_spending_attempts() {
    let h = Harness::new();
    let mut a = h.agent("a", 2, 1).await;
    let mut events = h.submit(1, spec(2, 0)).await;
    h.from(&a, FromAgent::WorkRequest { free_slots: 2 });
    let g = lease(&mut a).await;
    assert_eq!(
        g.tests.len(),
        1,
        "half the remaining work for the only agent"
    );
    let (index, attempt) = g.tests[0];
    h.from(
        &a,
        FromAgent::Started {
            run_id: g.run_id,
            index,
            attempt,
            lease_id: g.lease_id,
        },
    );
    h.handle
        .send(Command::AgentDisconnected {
            agent: a.id.clone(),
            conn: a.conn,
            why: "test".into(),
        })
        .unwrap();
    let mut b = h.agent("b", 2, 2).await;
    let mut seen = vec![];
    while seen.len() < 2 {
        h.from(&b, FromAgent::WorkRequest { free_slots: 2 });
        let g = lease(&mut b).await;
        for (i, t) in g.tests.iter().enumerate() {
            seen.push(*t);
            h.from(&b, finished(&g, i, AttemptStatus::Passed));
        }
    }
    seen.sort();
    assert_eq!(seen, vec![(0, 1), (1, 1)], "the lost test keeps attempt 1");
    let all = until_finished(&mut events).await;
    let infra = all
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::TestFinished { result, .. } if result.status == AttemptStatus::InfraError))
        .count();
    assert_eq!(
        infra, 1,
        "the started test's loss is recorded as an infrastructure event"
    );
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.passed == 2)
    );
    // A late result from the lost connection changes nothing.
    h.from(&a, finished(&g, 0, AttemptStatus::Failed));
    h.settle().await;
}

#[tokio::test]
async fn cancelling_a_run_revokes_its_leases() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let mut events = h.submit(1, spec(3, 0)).await;
    h.from(&a, FromAgent::WorkRequest { free_slots: 1 });
    let g = lease(&mut a).await;
    let cancelled = h
        .handle
        .ask(|reply| Command::Cancel {
            run_id: RunId(1),
            reply,
        })
        .await
        .unwrap();
    assert_eq!(cancelled, Some(true));
    match a.rx.recv().await {
        Some(AgentCommand::CancelLease(id)) => assert_eq!(id, g.lease_id),
        other => panic!("expected CancelLease, got {other:?}"),
    }
    let all = until_finished(&mut events).await;
    assert!(matches!(
        all.last().unwrap().kind,
        EventKind::RunFinished { ref summary, state: RunState::Cancelled } if summary.cancelled == 3
    ));
}
