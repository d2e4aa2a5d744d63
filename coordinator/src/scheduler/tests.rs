//! The scheduler driven directly through its command channel, with agents as plain channels: every
//! behaviour here is deterministic because the scheduler handles one command at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use testfleet_model::session::{AgentMessage, Hello, ONLY_RUN_LABEL, ServiceStarted, WorkRequest};
use testfleet_model::{
    AgentId, AttemptResult, AttemptStatus, EventKind, LeaseId, Outcome, RunEvent, RunId, RunSpec,
    TestFinished,
};
use testfleet_model::{AttemptKey, RunState};
use tokio::sync::mpsc;

use super::*;

fn spec(n: usize, retries: u32) -> Arc<RunSpec> {
    Arc::new(RunSpec {
        retries: Some(retries),
        ..testfleet_model::test_support::spec(n)
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
        case: None,
    }
}

impl Harness {
    fn new() -> Self {
        Self::with(SchedulerConfig {
            service_grace: Duration::ZERO,
            ..SchedulerConfig::default()
        })
    }

    fn with(config: SchedulerConfig) -> Self {
        let (history_tx, history_rx) = mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = Arc::default();
        let (handle, _task) = spawn(config, history_tx, metrics, async move {
            let _ = stopped.await;
        });
        Harness {
            handle,
            _history: history_rx,
            _stop: stop,
        }
    }

    async fn agent(&self, name: &str, slots: u32, conn: ConnId) -> FakeAgent {
        self.agent_with(name, slots, conn, false).await
    }

    async fn agent_with(&self, name: &str, slots: u32, conn: ConnId, docker: bool) -> FakeAgent {
        self.connect(name, slots, conn, docker, vec![]).await
    }

    /// Connects (or reconnects) `name`, which says it still holds `held` leases.
    async fn connect(
        &self,
        name: &str,
        slots: u32,
        conn: ConnId,
        docker: bool,
        held: Vec<LeaseId>,
    ) -> FakeAgent {
        self.connect_labelled(name, slots, conn, docker, held, HashMap::new())
            .await
    }

    async fn connect_labelled(
        &self,
        name: &str,
        slots: u32,
        conn: ConnId,
        docker: bool,
        held: Vec<LeaseId>,
        labels: HashMap<String, String>,
    ) -> FakeAgent {
        let hello = Hello {
            held_leases: held,
            labels,
            ..hello(name, slots, docker)
        };
        self.connect_hello(hello, conn).await
    }

    /// An agent with Docker whose engine holds `images`.
    async fn agent_holding(
        &self,
        name: &str,
        slots: u32,
        conn: ConnId,
        images: &[&str],
    ) -> FakeAgent {
        let hello = Hello {
            images: images.iter().map(|i| i.to_string()).collect(),
            ..hello(name, slots, true)
        };
        self.connect_hello(hello, conn).await
    }

    async fn connect_hello(&self, hello: Hello, conn: ConnId) -> FakeAgent {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = hello.agent_id.clone();
        self.handle
            .send(Command::AgentConnected { hello, conn, tx })
            .unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(AgentCommand::Welcome { .. })
        ));
        FakeAgent { id, conn, rx }
    }

    fn from(&self, a: &FakeAgent, msg: AgentMessage) {
        self.handle
            .send(Command::FromAgent {
                agent: a.id.clone(),
                conn: a.conn,
                msg,
                credit: None,
            })
            .unwrap();
    }

    /// Run `run`'s events from the start, if it is in memory.
    async fn watch(&self, run: u64) -> Option<super::Subscription> {
        self.handle
            .ask(|reply| Command::Watch {
                run_id: RunId(run),
                from_seq: 0,
                passing_output: true,
                reply,
            })
            .await
            .unwrap()
    }

    async fn submit(&self, run: u64, spec: Arc<RunSpec>) -> mpsc::UnboundedReceiver<RunEvent> {
        let estimates = vec![(Duration::from_secs(1), false); spec.tests.len()];
        let quarantined = vec![false; spec.tests.len()];
        self.handle
            .ask(|reply| Command::Submit {
                run_id: RunId(run),
                spec,
                estimates,
                quarantined,
                slot: None,
                trace: crate::run_trace::RunTrace::none(),
                reply,
            })
            .await
            .unwrap();
        let sub = self.watch(run).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        for e in sub.backlog.read().unwrap().events {
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
    loop {
        match tokio::time::timeout(Duration::from_secs(30), a.rx.recv())
            .await
            .unwrap()
        {
            Some(AgentCommand::Lease(g)) => return g,
            Some(AgentCommand::Ack(..)) => continue,
            other => panic!("expected a lease, got {other:?}"),
        }
    }
}

/// A work request for `free_slots` idle slots and none to queue behind busy ones.
fn ask(free_slots: u32) -> AgentMessage {
    AgentMessage::WorkRequest(WorkRequest {
        free_slots,
        queue_slots: 0,
    })
}

/// Asserts that nothing but acknowledgements reached `a`.
fn assert_no_lease(a: &mut FakeAgent, why: &str) {
    while let Ok(cmd) = a.rx.try_recv() {
        assert!(matches!(cmd, AgentCommand::Ack(..)), "{why}: got {cmd:?}");
    }
}

/// Asks for work with `free_slots` and passes every leased test, until `n` tests have run; returns
/// their (index, attempt) pairs, sorted.
async fn pass_until(h: &Harness, a: &mut FakeAgent, free_slots: u32, n: usize) -> Vec<(u32, u32)> {
    let mut ran = vec![];
    while ran.len() < n {
        h.from(a, ask(free_slots));
        let g = lease(a).await;
        for (i, t) in g.tests.iter().enumerate() {
            ran.push(*t);
            h.from(a, finished(&g, i, AttemptStatus::Passed));
        }
    }
    ran.sort();
    ran
}

/// Lets `secs` pass on the paused clock while `alive` agents keep heartbeating.
async fn pass_time(h: &Harness, secs: u64, alive: &[&FakeAgent]) {
    for _ in 0..secs.div_ceil(5) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for a in alive {
            h.from(a, AgentMessage::Heartbeat);
        }
    }
}

fn finished(g: &LeaseGrant, i: usize, status: AttemptStatus) -> AgentMessage {
    AgentMessage::TestFinished(key_of(g, i), result(status))
}

/// The attempt key of a lease's `i`th test.
fn key_of(g: &LeaseGrant, i: usize) -> AttemptKey {
    let (test_index, attempt) = g.tests[i];
    AttemptKey {
        run_id: g.run_id,
        test_index,
        attempt,
        lease_id: g.lease_id,
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
async fn a_parked_request_is_served_when_work_arrives_and_leases_are_sized_by_the_work_left() {
    let h = Harness::new();
    let mut a = h.agent("a", 4, 1).await;
    let _b = h.agent("b", 4, 2).await;
    h.from(&a, ask(3));
    h.settle().await;
    assert_no_lease(&mut a, "no work yet: the request is parked");
    let _events = h.submit(1, spec(100, 0)).await;
    let g = lease(&mut a).await;
    // Guided self-scheduling: 100 one-second estimates × a's 4 of 8 slots / 2.
    assert_eq!(
        g.tests.len(),
        25,
        "more than the free slots: they queue on the agent"
    );
    // Tests only to queue behind busy slots are leased only within the budget (a quarter of
    // what is left over a's half of the slots) and never beyond 32 per slot.
    h.from(
        &a,
        AgentMessage::WorkRequest(WorkRequest {
            free_slots: 0,
            queue_slots: 1,
        }),
    );
    assert_eq!(lease(&mut a).await.tests.len(), 18);
    h.from(
        &a,
        AgentMessage::WorkRequest(WorkRequest {
            free_slots: 0,
            queue_slots: 4,
        }),
    );
    assert_eq!(lease(&mut a).await.tests.len(), 14);
}

/// A CI job's agent works on its pipeline's run only; other agents serve every run, oldest first.
#[tokio::test]
async fn an_agent_pinned_to_a_run_is_leased_that_run_s_tests_only() {
    let h = Harness::new();
    let pin = HashMap::from([(ONLY_RUN_LABEL.to_owned(), "2".to_owned())]);
    let mut pinned = h.connect_labelled("ci-2", 1, 1, false, vec![], pin).await;
    let mut free = h.agent("free", 1, 2).await;
    let _older = h.submit(1, spec(3, 0)).await;
    h.from(&pinned, ask(1));
    h.settle().await;
    assert_no_lease(&mut pinned, "run 1 is not the pinned agent's run");
    let _pinned_run = h.submit(2, spec(3, 0)).await;
    assert_eq!(lease(&mut pinned).await.run_id, RunId(2));
    h.from(&free, ask(1));
    assert_eq!(
        lease(&mut free).await.run_id,
        RunId(1),
        "the oldest run first"
    );
}

#[tokio::test]
async fn near_the_end_nothing_is_leased_to_queue_behind_a_busy_slot() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let _b = h.agent("b", 1, 2).await;
    let _events = h.submit(1, spec(1, 0)).await;
    h.from(
        &a,
        AgentMessage::WorkRequest(WorkRequest {
            free_slots: 0,
            queue_slots: 1,
        }),
    );
    h.settle().await;
    assert_no_lease(&mut a, "the last test would wait behind a's running one");
    // The same agent with an idle slot gets it: a newer request replaces the parked one.
    h.from(&a, ask(1));
    assert_eq!(lease(&mut a).await.tests.len(), 1);
}

#[tokio::test]
async fn leases_shrink_towards_the_end_of_a_run() {
    let h = Harness::new();
    let mut a = h.agent("a", 8, 1).await;
    let mut events = h.submit(1, spec(40, 0)).await;
    let mut sizes = vec![];
    loop {
        h.from(&a, ask(8));
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
    // 40 one-second estimates over 8 slots, halved: 20.
    assert_eq!(sizes[0], 20, "{sizes:?}");
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
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    h.from(&a, finished(&g, 0, AttemptStatus::Failed));
    // `a` asks again first, but the retry must wait for `b`.
    h.from(&a, ask(1));
    h.settle().await;
    assert_no_lease(&mut a, "no lease expected");
    h.from(&b, ask(1));
    let retry = lease(&mut b).await;
    assert_eq!(retry.tests, vec![(0, 2)], "attempt 2 of test 0");
    h.from(&b, finished(&retry, 0, AttemptStatus::Passed));
    let all = until_finished(&mut events).await;
    let outcome = all.iter().find_map(|e| match &e.kind {
        EventKind::TestFinished(TestFinished { final_outcome, .. }) => *final_outcome,
        _ => None,
    });
    assert_eq!(outcome, Some(Outcome::Flaky));
}

#[tokio::test]
async fn duplicate_and_stale_results_are_ignored() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let mut events = h.submit(1, spec(2, 0)).await;
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    h.from(&a, finished(&g, 0, AttemptStatus::Passed));
    h.from(&a, finished(&g, 0, AttemptStatus::Failed)); // a resend: ignored
    let mut wrong_attempt = finished(&g, 0, AttemptStatus::Failed);
    if let AgentMessage::TestFinished(key, _) = &mut wrong_attempt {
        key.attempt = 7;
    }
    h.from(&a, wrong_attempt);
    h.from(&a, ask(1));
    let g2 = lease(&mut a).await;
    let mut foreign = finished(&g2, 0, AttemptStatus::Failed);
    if let AgentMessage::TestFinished(key, _) = &mut foreign {
        key.lease_id = LeaseId(999);
    }
    h.from(&a, foreign);
    h.from(&a, finished(&g2, 0, AttemptStatus::Passed));
    let all = until_finished(&mut events).await;
    let finishes = all
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TestFinished(..)))
        .count();
    assert_eq!(finishes, 2, "exactly one result per test");
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.passed == 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_agent_s_tests_are_requeued_without_spending_attempts() {
    let h = Harness::new();
    let mut a = h.agent("a", 2, 1).await;
    let mut events = h.submit(1, spec(2, 0)).await;
    h.from(&a, ask(2));
    let g = lease(&mut a).await;
    assert_eq!(
        g.tests.len(),
        1,
        "half the remaining work for the only agent"
    );
    h.from(&a, AgentMessage::TestStarted(key_of(&g, 0)));
    h.handle
        .send(Command::AgentDisconnected {
            agent: a.id.clone(),
            conn: a.conn,
            why: "test".into(),
        })
        .unwrap();
    // It does not come back within the lease timeout.
    tokio::time::sleep(SchedulerConfig::default().lease_timeout + Duration::from_secs(2)).await;
    let mut b = h.agent("b", 2, 2).await;
    let seen = pass_until(&h, &mut b, 2, 2).await;
    assert_eq!(seen, vec![(0, 1), (1, 1)], "the lost test keeps attempt 1");
    let all = until_finished(&mut events).await;
    let infra = all
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::TestFinished(TestFinished { result, .. }) if result.status == AttemptStatus::InfraError))
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
    h.from(&a, ask(1));
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

/// Two binaries: `plain` (tests 0..n) needs nothing, `svc` (tests n..2n) needs an agent-scope service.
/// A hello of an agent that holds no lease, no label and no image.
fn hello(name: &str, slots: u32, docker: bool) -> Hello {
    Hello {
        agent_id: name.parse().unwrap(),
        slots,
        labels: HashMap::new(),
        docker_available: docker,
        version: "test".into(),
        docker_status: if docker {
            String::new()
        } else {
            format!("{name} has no Docker")
        },
        sandbox_status: String::new(),
        held_leases: vec![],
        images: vec![],
    }
}

fn service_spec(n: usize) -> Arc<RunSpec> {
    let mut spec = (*spec(2 * n, 0)).clone();
    let mut svc_binary = spec.binaries[0].clone();
    svc_binary.binary_id = "svc".into();
    svc_binary.services = vec![0];
    spec.binaries.push(svc_binary);
    for t in &mut spec.tests[n..] {
        t.binary = 1;
    }
    let manifest = "[[service]]\nname = \"db\"\nimage = \"db:1\"\n";
    spec.services = testfleet_model::Manifest::parse(manifest, std::path::Path::new("m.toml"))
        .unwrap()
        .services;
    spec.validate().unwrap();
    Arc::new(spec)
}

/// Every test of `g` is of `binary`.
fn assert_only(g: &LeaseGrant, binary: &str) {
    let all = binaries_of(g);
    assert!(all.iter().all(|b| *b == binary), "{all:?}");
}

fn binaries_of(g: &LeaseGrant) -> Vec<&str> {
    g.tests
        .iter()
        .map(|(i, _)| {
            g.spec.binaries[g.spec.tests[*i as usize].binary as usize]
                .binary_id
                .as_ref()
        })
        .collect()
}

#[tokio::test]
async fn tests_needing_services_go_only_to_agents_with_docker() {
    let h = Harness::new();
    let mut plain = h.agent_with("plain", 4, 1, false).await;
    let mut docker = h.agent_with("docker", 4, 2, true).await;
    let _events = h.submit(1, service_spec(4)).await;
    let mut seen_plain = vec![];
    loop {
        h.from(&plain, ask(4));
        let g = lease(&mut plain).await;
        seen_plain.extend(binaries_of(&g).into_iter().map(str::to_owned));
        for i in 0..g.tests.len() {
            h.from(&plain, finished(&g, i, AttemptStatus::Passed));
        }
        if seen_plain.len() == 4 {
            break;
        }
    }
    assert!(seen_plain.iter().all(|b| b == "b"), "{seen_plain:?}");
    h.from(&plain, ask(4));
    h.from(&docker, ask(4));
    let g = lease(&mut docker).await;
    assert!(binaries_of(&g).iter().all(|b| *b == "svc"));
    h.settle().await;
    assert_no_lease(
        &mut plain,
        "service tests never reach the agent without Docker",
    );
}

#[tokio::test]
async fn service_tests_no_connected_agent_can_serve_fail_at_once_and_say_why() {
    let h = Harness::new();
    let mut plain = h.agent_with("plain", 8, 1, false).await;
    let mut events = h.submit(1, service_spec(2)).await;
    let mut ran = 0;
    while ran < 2 {
        h.from(&plain, ask(8));
        let g = lease(&mut plain).await;
        assert!(binaries_of(&g).iter().all(|b| *b == "b"));
        for i in 0..g.tests.len() {
            h.from(&plain, finished(&g, i, AttemptStatus::Passed));
            ran += 1;
        }
    }
    let all = until_finished(&mut events).await;
    let infra: Vec<&str> = all
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TestFinished(TestFinished {
                result,
                final_outcome: Some(Outcome::InfraError),
                ..
            }) => Some(result.message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(infra.len(), 2);
    assert!(
        infra[0].contains("no connected agent can start services")
            && infra[0].contains("plain has no Docker"),
        "{}",
        infra[0]
    );
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.passed == 2 && summary.infra_errors == 2)
    );
}

#[tokio::test]
async fn an_agent_with_warm_containers_gets_the_tests_that_need_them_first() {
    let h = Harness::new();
    let mut a = h.agent_with("a", 1, 1, true).await;
    // Idle agents that make the fleet 4 slots, so leases are small (a quarter of an eighth).
    let _others = [
        h.agent("x", 1, 2).await,
        h.agent("y", 1, 3).await,
        h.agent("z", 1, 4).await,
    ];
    let spec = service_spec(20);
    let fingerprint = spec.services[0].fingerprint();
    let _events = h.submit(1, spec).await;
    // Cold, the queue order rules: plain tests come first.
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    assert_eq!(binaries_of(&g), ["b"; 5]);
    h.from(
        &a,
        AgentMessage::ServiceStarted(ServiceStarted {
            run_id: RunId(1),
            service: "db".into(),
            scope: testfleet_model::Scope::Agent,
            duration_ms: 700,
            container_id: "c1".into(),
            fingerprint,
            lease_id: LeaseId(1),
        }),
    );
    h.from(&a, finished(&g, 0, AttemptStatus::Passed));
    // (Work requests overtake other messages; the container's report must have been read.)
    h.settle().await;
    // Warm, the tests that need its running container come first, ahead of 15 plain ones.
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    assert_eq!(binaries_of(&g), ["svc"; 4]);
}

#[tokio::test]
async fn an_agent_whose_engine_holds_the_images_gets_the_tests_that_need_them_first() {
    let h = Harness::new();
    // `a` holds the service's image from the start (its hello); `c` holds another one.
    let mut a = h.agent_holding("a", 1, 1, &["db:1"]).await;
    let mut c = h.agent_holding("c", 1, 2, &["other:2"]).await;
    let _others = [h.agent("y", 1, 3).await, h.agent("z", 1, 4).await];
    let _events = h.submit(1, service_spec(20)).await;
    // The queue holds 20 plain tests ahead of 20 that need `db:1`: `a` gets the latter, with no
    // pull to wait for; `c` gets what comes first in the queue.
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    assert!(!g.tests.is_empty());
    assert_only(&g, "svc");
    h.from(&c, ask(1));
    let g = lease(&mut c).await;
    assert_only(&g, "b");
}

#[tokio::test]
async fn an_image_pulled_counts_as_held_by_its_agent() {
    let h = Harness::new();
    let mut a = h.agent_with("a", 1, 1, true).await;
    let _others = [
        h.agent("x", 1, 2).await,
        h.agent("y", 1, 3).await,
        h.agent("z", 1, 4).await,
    ];
    let _events = h.submit(1, service_spec(20)).await;
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    assert_eq!(binaries_of(&g), ["b"; 5], "cold: queue order");
    h.from(
        &a,
        AgentMessage::ImagePulled(testfleet_model::session::ImagePulled {
            run_id: RunId(1),
            lease_id: LeaseId(1),
            image: "db:1".into(),
            registry: "docker.io".into(),
            duration_ms: 900,
            error: None,
        }),
    );
    h.from(&a, finished(&g, 0, AttemptStatus::Passed));
    h.settle().await;
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    assert_only(&g, "svc");
}

#[tokio::test]
async fn a_retry_returns_to_the_only_agent_that_can_run_it() {
    let h = Harness::new();
    let mut docker = h.agent_with("docker", 1, 1, true).await;
    let mut plain = h.agent_with("plain", 1, 2, false).await;
    let spec = service_spec(1);
    let mut events = h.submit(1, spec).await;
    // The plain test goes anywhere; the service test only to `docker`.
    h.from(&plain, ask(1));
    let g = lease(&mut plain).await;
    h.from(&plain, finished(&g, 0, AttemptStatus::Passed));
    h.from(&docker, ask(1));
    let g = lease(&mut docker).await;
    assert_eq!(binaries_of(&g), ["svc"]);
    // Its container would not start: an infrastructure error. The retry may not avoid `docker`:
    // no other agent can run it.
    let (index, attempt) = g.tests[0];
    h.from(
        &docker,
        AgentMessage::TestFinished(key_of(&g, 0), AttemptResult::infra_error("image missing")),
    );
    h.from(&docker, ask(1));
    let retry = lease(&mut docker).await;
    assert_eq!(
        retry.tests,
        vec![(index, attempt)],
        "same attempt number after an infrastructure error"
    );
    h.from(&docker, finished(&retry, 0, AttemptStatus::Passed));
    let all = until_finished(&mut events).await;
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.passed == 2)
    );
}

/// Where no other agent can take it, the same infrastructure error twice on one agent settles the
/// test, saying why, rather than failing it the same way until the retries run out.
#[tokio::test]
async fn the_same_infrastructure_error_twice_on_the_only_capable_agent_settles_the_test() {
    let h = Harness::new();
    let mut docker = h.agent_with("docker", 1, 1, true).await;
    let mut plain = h.agent_with("plain", 1, 2, false).await;
    let mut events = h.submit(1, service_spec(1)).await;
    h.from(&plain, ask(1));
    let g = lease(&mut plain).await;
    h.from(&plain, finished(&g, 0, AttemptStatus::Passed));
    for round in 0..2 {
        h.from(&docker, ask(1));
        let g = lease(&mut docker).await;
        assert_eq!(g.tests.len(), 1, "round {round}");
        h.from(
            &docker,
            AgentMessage::TestFinished(key_of(&g, 0), AttemptResult::infra_error("image missing")),
        );
    }
    let all = until_finished(&mut events).await;
    let finished: Vec<&TestFinished> = all
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TestFinished(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), 3, "one retry, then settled: {finished:?}");
    assert_eq!(finished[1].final_outcome, None);
    assert_eq!(finished[2].final_outcome, Some(Outcome::InfraError));
    assert!(
        finished[2]
            .result
            .message
            .starts_with("image missing; the same error twice on docker")
            && finished[2]
                .result
                .message
                .contains("no other connected agent with Docker"),
        "{}",
        finished[2].result.message
    );
}

#[tokio::test]
async fn an_infrastructure_error_is_retried_on_another_capable_agent() {
    let h = Harness::new();
    let mut a = h.agent_with("a", 1, 1, true).await;
    let mut b = h.agent_with("b", 1, 2, true).await;
    let _events = h.submit(1, spec(1, 0)).await;
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    let (index, attempt) = g.tests[0];
    h.from(
        &a,
        AgentMessage::TestFinished(key_of(&g, 0), AttemptResult::infra_error("bundle unusable")),
    );
    h.from(&a, ask(1));
    h.settle().await;
    assert_no_lease(&mut a, "not back to the agent that failed it");
    h.from(&b, ask(1));
    assert_eq!(lease(&mut b).await.tests, vec![(index, attempt)]);
}

#[tokio::test(start_paused = true)]
async fn service_tests_wait_out_the_grace_for_a_capable_agent() {
    let h = Harness::with(SchedulerConfig {
        service_grace: Duration::from_secs(10),
        ..SchedulerConfig::default()
    });
    let _plain = h.agent_with("plain", 1, 1, false).await;
    let mut events = h.submit(1, service_spec(1)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.settle().await;
    // Within the grace a Docker agent arrives and takes the test.
    let mut docker = h.agent_with("docker", 1, 2, true).await;
    let mut ran = vec![];
    while ran.len() < 2 {
        h.from(&docker, ask(1));
        let g = lease(&mut docker).await;
        ran.extend(binaries_of(&g).into_iter().map(str::to_owned));
        h.from(&docker, finished(&g, 0, AttemptStatus::Passed));
    }
    assert!(ran.contains(&"svc".to_owned()));
    let all = until_finished(&mut events).await;
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.passed == 2 && summary.infra_errors == 0)
    );
}

#[tokio::test(start_paused = true)]
async fn after_the_grace_service_tests_end_as_infrastructure_errors() {
    let h = Harness::with(SchedulerConfig {
        service_grace: Duration::from_secs(10),
        ..SchedulerConfig::default()
    });
    let mut plain = h.agent_with("plain", 1, 1, false).await;
    let mut events = h.submit(1, service_spec(1)).await;
    h.from(&plain, ask(1));
    let g = lease(&mut plain).await;
    h.from(&plain, finished(&g, 0, AttemptStatus::Passed));
    h.settle().await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let all = until_finished(&mut events).await;
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.infra_errors == 1)
    );
}

fn disconnect(h: &Harness, a: &FakeAgent) {
    h.handle
        .send(Command::AgentDisconnected {
            agent: a.id.clone(),
            conn: a.conn,
            why: "stream cut".into(),
        })
        .unwrap();
}

/// Drains the fake agent's channel, returning the acknowledged (index, attempt) pairs.
fn acks(a: &mut FakeAgent) -> Vec<(u32, u32)> {
    let mut out = vec![];
    while let Ok(cmd) = a.rx.try_recv() {
        if let AgentCommand::Ack(key) = cmd {
            out.push((key.test_index, key.attempt));
        }
    }
    out
}

fn finished_count(events: &[RunEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TestFinished(..)))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_silent_agent_loses_its_lease_after_the_timeout() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let _events = h.submit(1, spec(1, 0)).await;
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    let mut b = h.agent("b", 1, 2).await;
    h.from(&b, ask(1));
    // `b` heartbeats; `a` says nothing at all.
    pass_time(
        &h,
        SchedulerConfig::default().lease_timeout.as_secs() + 5,
        &[&b],
    )
    .await;
    let retry = lease(&mut b).await;
    assert_eq!(
        retry.tests, g.tests,
        "the silent agent's test went to the other one"
    );
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_reconnects_in_time_keeps_its_lease_and_its_result_counts_once() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let mut events = h.submit(1, spec(1, 0)).await;
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    disconnect(&h, &a);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut a2 = h.connect("a", 1, 2, false, vec![g.lease_id]).await;
    // The result produced while away is resent, twice even (a second reconnect): counted once.
    h.from(&a2, finished(&g, 0, AttemptStatus::Passed));
    h.from(&a2, finished(&g, 0, AttemptStatus::Passed));
    let all = until_finished(&mut events).await;
    assert_eq!(finished_count(&all), 1);
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.passed == 1)
    );
    h.settle().await;
    assert_eq!(
        acks(&mut a2),
        vec![(0, 1), (0, 1)],
        "every copy is acknowledged, so resending stops"
    );
    assert_no_lease(&mut a, "nothing goes to the dead connection");
}

#[tokio::test(start_paused = true)]
async fn a_late_result_for_a_test_run_elsewhere_is_ignored_and_acknowledged() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let mut b = h.agent("b", 1, 2).await;
    let mut events = h.submit(1, spec(1, 0)).await;
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    h.from(
        &a,
        AgentMessage::TestStarted(AttemptKey {
            run_id: g.run_id,
            test_index: 0,
            attempt: 1,
            lease_id: g.lease_id,
        }),
    );
    disconnect(&h, &a);
    h.from(&b, ask(1));
    pass_time(
        &h,
        SchedulerConfig::default().lease_timeout.as_secs() + 5,
        &[&b],
    )
    .await;
    let retry = lease(&mut b).await;
    assert_eq!(
        retry.tests,
        vec![(0, 1)],
        "same attempt number: the loss was the infrastructure's"
    );
    // `a` comes back after all and sends its old result, while `b` runs the test.
    let mut a2 = h.connect("a", 1, 3, false, vec![g.lease_id]).await;
    h.from(&a2, finished(&g, 0, AttemptStatus::Failed));
    h.settle().await;
    assert_eq!(acks(&mut a2), vec![(0, 1)]);
    h.from(&b, finished(&retry, 0, AttemptStatus::Passed));
    let all = until_finished(&mut events).await;
    let real: Vec<_> = all
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TestFinished(TestFinished {
                result, agent_id, ..
            }) => Some((agent_id.clone(), result.status)),
            _ => None,
        })
        .collect();
    assert_eq!(
        real,
        vec![
            ("a".to_owned(), AttemptStatus::InfraError),
            ("b".to_owned(), AttemptStatus::Passed)
        ],
        "the late failure was not counted"
    );
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.passed == 1 && summary.failed == 0)
    );
}

#[tokio::test]
async fn a_restarted_agent_loses_the_leases_it_no_longer_holds_at_once() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let _events = h.submit(1, spec(1, 0)).await;
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    disconnect(&h, &a);
    // The same agent, restarted: it holds nothing, and says so.
    let mut again = h.connect("a", 1, 2, false, vec![]).await;
    h.from(&again, ask(1));
    assert_eq!(lease(&mut again).await.tests, g.tests);
}

#[tokio::test]
async fn leases_an_agent_holds_but_the_coordinator_does_not_know_are_cancelled() {
    let h = Harness::new();
    let mut a = h.connect("a", 1, 1, false, vec![LeaseId(77)]).await;
    match a.rx.recv().await {
        Some(AgentCommand::CancelLease(LeaseId(77))) => {}
        other => panic!("expected CancelLease(77), got {other:?}"),
    }
}

#[tokio::test]
async fn a_result_for_a_lease_never_issued_settles_nothing() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let mut events = h.submit(1, spec(2, 0)).await;
    // Before any lease: a "result" for test 1 under an invented lease id of this epoch.
    h.from(
        &a,
        AgentMessage::TestFinished(
            AttemptKey {
                run_id: RunId(1),
                test_index: 1,
                attempt: 1,
                lease_id: LeaseId(u64::MAX - 1),
            },
            result(AttemptStatus::Passed),
        ),
    );
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    let mut run = g.tests.clone();
    h.from(&a, finished(&g, 0, AttemptStatus::Failed));
    while run.len() < 2 {
        h.from(&a, ask(1));
        let g2 = lease(&mut a).await;
        run.extend(g2.tests.iter().copied());
        h.from(&a, finished(&g2, 0, AttemptStatus::Failed));
    }
    let all = until_finished(&mut events).await;
    assert_eq!(finished_count(&all), 2);
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.failed == 2 && summary.passed == 0),
        "the invented pass was not counted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_resent_result_is_adopted_when_its_test_still_waits_for_it() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let mut events = h.submit(1, spec(1, 0)).await;
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    disconnect(&h, &a);
    tokio::time::sleep(SchedulerConfig::default().lease_timeout + Duration::from_secs(2)).await;
    // Requeued (not started, so no infrastructure event); nobody has taken it yet when `a`
    // returns with the result: the work is not thrown away.
    let a2 = h.connect("a", 1, 2, false, vec![g.lease_id]).await;
    h.from(&a2, finished(&g, 0, AttemptStatus::Passed));
    let all = until_finished(&mut events).await;
    assert_eq!(finished_count(&all), 1);
    assert!(
        matches!(all.last().unwrap().kind, EventKind::RunFinished { ref summary, .. } if summary.passed == 1)
    );
}

#[tokio::test]
async fn a_resumed_run_continues_from_its_records() {
    use crate::history::{AttemptRecord, TestRecord};
    let h = Harness::new();
    let mut a = h.agent("a", 4, 1).await;
    let record = |index: u32, statuses: &[AttemptStatus], outcome: Option<Outcome>| TestRecord {
        index,
        binary_id: "b".into(),
        name: format!("t{index}"),
        attempts: statuses
            .iter()
            .enumerate()
            .map(|(i, s)| AttemptRecord {
                attempt: i as u32 + 1,
                agent_id: "old".into(),
                status: *s,
                duration_ms: 5,
                exit_code: None,
                signal: None,
                message: String::new(),
                output_excerpt: String::new(),
            })
            .collect(),
        outcome,
        quarantined: false,
    };
    // t0 passed before the restart; t1 failed once and has a retry left; t2 never reported.
    let records = vec![
        record(0, &[AttemptStatus::Passed], Some(Outcome::Passed)),
        record(1, &[AttemptStatus::Failed], None),
    ];
    let spec = spec(3, 1);
    h.handle
        .ask(|reply| Command::Resume {
            run_id: RunId(9),
            estimates: vec![(Duration::from_secs(1), false); 3],
            quarantined: vec![false; 3],
            spec,
            records,
            resumes: 1,
            slot: None,
            reply,
        })
        .await
        .unwrap();
    let sub = h.watch(9).await.unwrap();
    assert!(
        sub.backlog
            .read()
            .unwrap()
            .events
            .iter()
            .all(|e| e.seq >= 1 << 40),
        "a resumed run's events are a new epoch"
    );
    let leased = pass_until(&h, &mut a, 4, 2).await;
    assert_eq!(
        leased,
        vec![(1, 2), (2, 1)],
        "t1 is retried as attempt 2, t2 runs as attempt 1, t0 not again"
    );
    let mut live = sub.live.unwrap();
    let finished = loop {
        let e = live.recv().await.unwrap();
        if let EventKind::RunFinished { summary, .. } = e.kind {
            break summary;
        }
    };
    assert_eq!((finished.passed, finished.flaky), (2, 1));
}

/// A group's tests (pytest's `xdist_group`, or its `dist` mode) are leased together, however
/// small the lease would be otherwise.
#[tokio::test(start_paused = true)]
async fn a_group_s_tests_are_leased_together() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let _b = h.agent("b", 1, 2).await;
    let mut s = testfleet_model::test_support::spec(40);
    for i in [3, 17, 39] {
        s.tests[i].set_group(Some("db".into()));
    }
    let _events = h.submit(1, Arc::new(s)).await;
    let mut seen = vec![];
    while seen.len() < 40 {
        h.from(&a, ask(1));
        let g = lease(&mut a).await;
        let indices: Vec<u32> = g.tests.iter().map(|(i, _)| *i).collect();
        let grouped = indices.iter().filter(|i| [3, 17, 39].contains(i)).count();
        assert!(
            grouped == 0 || grouped == 3,
            "a lease with part of the group: {indices:?}"
        );
        for i in 0..g.tests.len() {
            h.from(&a, finished(&g, i, AttemptStatus::Passed));
        }
        seen.extend(indices);
    }
}

/// Tests that share a module's fixtures fill a lease before other tests, but never make it
/// bigger: parallelism comes first.
#[tokio::test(start_paused = true)]
async fn a_lease_is_filled_with_tests_that_share_fixtures_but_not_made_bigger() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let _b = h.agent("b", 1, 2).await;
    // Modules interleave in queue order (t0 m0, t1 m1, t2 m2, t3 m0, ...), as estimates would
    // sort them; the last ten share nothing.
    let mut s = testfleet_model::test_support::spec(40);
    for (i, t) in s.tests.iter_mut().enumerate().take(30) {
        t.set_shares(Some(format!("tests/test_m{}.py", i % 3)));
    }
    let _events = h.submit(1, Arc::new(s)).await;
    let mut leases = vec![];
    let mut seen = 0;
    while seen < 40 {
        h.from(&a, ask(1));
        let g = lease(&mut a).await;
        let indices: Vec<u32> = g.tests.iter().map(|(i, _)| *i).collect();
        for i in 0..g.tests.len() {
            h.from(&a, finished(&g, i, AttemptStatus::Passed));
        }
        seen += indices.len();
        leases.push(indices);
    }
    let first = &leases[0];
    assert!(first.len() > 1, "{leases:?}");
    assert_eq!(first[0], 0, "the head of the queue still comes first");
    assert!(
        first.iter().all(|i| i % 3 == 0 && *i < 30),
        "the first lease holds module 0's tests only: {first:?}"
    );
    // The same sizes as without sharing: guided self-scheduling decides them, not the modules.
    let mut plain = testfleet_model::test_support::spec(40);
    plain.tests.iter_mut().for_each(|t| t.set_shares(None));
    let h2 = Harness::new();
    let mut a2 = h2.agent("a", 1, 1).await;
    let _b2 = h2.agent("b", 1, 2).await;
    let _events2 = h2.submit(1, Arc::new(plain)).await;
    let mut sizes = vec![];
    let mut seen = 0;
    while seen < 40 {
        h2.from(&a2, ask(1));
        let g = lease(&mut a2).await;
        for i in 0..g.tests.len() {
            h2.from(&a2, finished(&g, i, AttemptStatus::Passed));
        }
        seen += g.tests.len();
        sizes.push(g.tests.len());
    }
    assert_eq!(
        leases.iter().map(Vec::len).collect::<Vec<_>>(),
        sizes,
        "{leases:?}"
    );
}

/// An agent's next lease goes on with the module its workers ran last (and may still hold the
/// fixtures of), even when another module's test heads the queue.
#[tokio::test(start_paused = true)]
async fn an_agent_goes_on_with_the_module_it_ran_last() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let _b = h.agent("b", 1, 2).await;
    let mut s = testfleet_model::test_support::spec(60);
    for (i, t) in s.tests.iter_mut().enumerate() {
        t.set_shares(Some(format!("tests/test_m{}.py", i % 2)));
    }
    let _events = h.submit(1, Arc::new(s)).await;
    h.from(&a, ask(1));
    let first: Vec<u32> = lease(&mut a).await.tests.iter().map(|(i, _)| *i).collect();
    assert!(first.iter().all(|i| i % 2 == 0), "module 0: {first:?}");
    // Test 1 (module 1) heads the queue now; module 0 still has tests left.
    assert!(first.len() < 30, "{first:?}");
    h.from(&a, ask(1));
    let second: Vec<u32> = lease(&mut a).await.tests.iter().map(|(i, _)| *i).collect();
    assert!(
        !second.is_empty() && second.iter().all(|i| i % 2 == 0),
        "the agent goes on with module 0: {second:?}"
    );
}

/// `n` tests; those in `grouped` are in test group `serial` (max-threads `max`), those in `heavy`
/// take two slots.
fn settings_spec(n: usize, grouped: &[u32], max: u32, heavy: &[u32]) -> Arc<RunSpec> {
    use testfleet_model::{TestGroup, TestSettings};
    let mut s = testfleet_model::test_support::spec(n);
    s.test_groups = vec![TestGroup {
        name: "serial".into(),
        max_threads: max,
    }];
    s.settings = vec![
        TestSettings {
            test_group: Some(0),
            ..Default::default()
        },
        TestSettings {
            threads_required: 2,
            ..Default::default()
        },
    ];
    for i in grouped {
        s.tests[*i as usize].set_settings(Some(0));
    }
    for i in heavy {
        s.tests[*i as usize].set_settings(Some(1));
    }
    Arc::new(s)
}

/// A test group's bound holds across agents: never more of its tests leased at once than its
/// max-threads, each holding a slot of its own, and the next one leased once one finishes.
#[tokio::test(start_paused = true)]
async fn a_test_group_s_bound_holds_across_the_fleet() {
    let h = Harness::new();
    let mut a = h.agent("a", 2, 1).await;
    let mut b = h.agent("b", 2, 2).await;
    let grouped = [0u32, 2, 4, 6, 8];
    let mut events = h.submit(1, settings_spec(10, &grouped, 2, &[])).await;
    let mut open: Vec<(LeaseGrant, usize, char)> = vec![];
    let mut finished_tests = 0;
    let mut max_open_grouped = 0;
    while finished_tests < 10 {
        for (agent, name) in [(&mut a, 'a'), (&mut b, 'b')] {
            h.from(agent, ask(2));
            h.settle().await;
            while let Ok(cmd) = agent.rx.try_recv() {
                if let AgentCommand::Lease(g) = cmd {
                    for i in 0..g.tests.len() {
                        open.push((g.clone(), i, name));
                    }
                }
            }
        }
        let grouped_open: Vec<u32> = open
            .iter()
            .filter(|(g, i, _)| grouped.contains(&g.tests[*i].0))
            .map(|(g, i, _)| g.group_slots[&g.tests[*i].0])
            .collect();
        max_open_grouped = max_open_grouped.max(grouped_open.len());
        assert!(grouped_open.len() <= 2, "{grouped_open:?}");
        let mut slots = grouped_open.clone();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), grouped_open.len(), "two tests hold one slot");
        assert!(slots.iter().all(|s| *s < 2));
        // Finish the oldest open test.
        let (g, i, name) = open.remove(0);
        let agent = if name == 'a' { &a } else { &b };
        h.from(agent, finished(&g, i, AttemptStatus::Passed));
        finished_tests += 1;
    }
    assert_eq!(max_open_grouped, 2, "the group ran two at a time");
    let all = until_finished(&mut events).await;
    assert!(matches!(
        all.last().unwrap().kind,
        EventKind::RunFinished { ref summary, .. } if summary.passed == 10
    ));
}

/// A test that takes two slots is leased only to an agent with two idle ones.
#[tokio::test(start_paused = true)]
async fn a_test_that_takes_two_slots_waits_for_two_idle_ones() {
    let h = Harness::new();
    let mut a = h.agent("a", 2, 1).await;
    let _events = h.submit(1, settings_spec(1, &[], 1, &[0])).await;
    h.from(&a, ask(1));
    h.settle().await;
    assert_no_lease(&mut a, "one idle slot is not enough");
    h.from(&a, ask(2));
    let g = lease(&mut a).await;
    assert_eq!(g.tests, vec![(0, 1)]);
}

/// One test retried once after a fixed backoff of `secs`; `flaky_fails`: its flaky-result is
/// "fail".
fn one_test_retried_after(secs: u64, flaky_fails: bool) -> Arc<RunSpec> {
    use testfleet_model::{RetryPolicy, TestSettings};
    let mut s = testfleet_model::test_support::spec(1);
    s.settings = vec![TestSettings {
        retries: Some(RetryPolicy {
            count: 1,
            delay: Duration::from_secs(secs),
            ..Default::default()
        }),
        flaky_fails,
        ..Default::default()
    }];
    s.tests[0].set_settings(Some(0));
    Arc::new(s)
}

/// A retry with a backoff is not leased before its wait is over, and is leased when it is.
#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_its_backoff() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let mut events = h.submit(1, one_test_retried_after(10, true)).await;
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    let failed_at = tokio::time::Instant::now();
    h.from(&a, finished(&g, 0, AttemptStatus::Failed));
    h.from(&a, ask(1));
    let retry = lease(&mut a).await;
    assert_eq!(retry.tests, vec![(0, 2)]);
    assert!(failed_at.elapsed() >= Duration::from_secs(10));
    h.from(&a, finished(&retry, 0, AttemptStatus::Passed));
    let all = until_finished(&mut events).await;
    // Its flaky-result is "fail": a flaky test fails the run.
    let outcome = all.iter().find_map(|e| match &e.kind {
        EventKind::TestFinished(TestFinished { final_outcome, .. }) => *final_outcome,
        _ => None,
    });
    assert_eq!(outcome, Some(Outcome::Failed));
}

/// A retry whose backoff runs out while no agent asks for work waits like any queued test: the
/// scheduler goes on answering (it once woke for it again and again, and answered nothing else),
/// and the next request gets it.
#[tokio::test(start_paused = true)]
async fn a_retry_whose_backoff_ran_out_unasked_is_leased_at_the_next_request() {
    let h = Harness::new();
    let mut a = h.agent("a", 1, 1).await;
    let _events = h.submit(1, one_test_retried_after(5, false)).await;
    h.from(&a, ask(1));
    let g = lease(&mut a).await;
    h.from(&a, finished(&g, 0, AttemptStatus::Failed));
    h.settle().await;
    // The backoff runs out with no request parked.
    tokio::time::advance(Duration::from_secs(10)).await;
    h.settle().await;
    h.from(&a, ask(1));
    let retry = lease(&mut a).await;
    assert_eq!(retry.tests, vec![(0, 2)]);
}

async fn make_room(h: &Harness, bytes: usize) -> Result<(), super::RoomRefused> {
    h.handle
        .ask(|reply| Command::MakeRoom { bytes, reply })
        .await
        .unwrap()
}

#[tokio::test]
async fn the_memory_budget_drops_finished_runs_first_then_refuses_while_runs_run() {
    let one = spec(200, 0);
    let needed = super::memory_of(&one);
    // Room for two such runs, not three.
    let h = Harness::with(SchedulerConfig {
        memory_budget: needed * 5 / 2,
        service_grace: Duration::ZERO,
        ..SchedulerConfig::default()
    });
    let mut a = h.agent("a", 200, 1).await;
    let mut first = h.submit(1, one.clone()).await;
    pass_until(&h, &mut a, 200, 200).await;
    until_finished(&mut first).await;
    let _second = h.submit(2, one.clone()).await;
    // A third fits once the finished first run leaves memory.
    make_room(&h, needed)
        .await
        .expect("the finished run makes room");
    assert!(h.watch(1).await.is_none(), "the finished run left memory");
    let _third = h.submit(3, one.clone()).await;
    // A fourth does not: both runs in memory are running.
    let refused = make_room(&h, needed).await.unwrap_err();
    assert_eq!(refused.running, 2);
    assert_eq!(refused.needed, needed);
    assert!(refused.held >= 2 * needed);
    let said = refused.to_string();
    assert!(
        said.contains("2 running run(s)") && said.contains("submit again"),
        "{said}"
    );
    // A run larger than the whole budget is told so.
    let alone = make_room(&h, needed * 3).await.unwrap_err().to_string();
    assert!(alone.contains("more than the"), "{alone}");
}

/// A watcher that does not keep up is let go once its queue is full (the scheduler never queues
/// for it without bound), before the run's last event; watching again from the first event it
/// has not had gives the rest from the run's log, none missing, none twice.
#[tokio::test(start_paused = true)]
async fn a_watcher_that_falls_behind_is_let_go_and_catches_up_from_the_log() {
    let h = Harness::new();
    let mut a = h.agent("a", 64, 1).await;
    let n = super::WATCHER_QUEUE * 2;
    let _rx = h
        .submit(1, Arc::new(testfleet_model::test_support::spec(n)))
        .await;
    // Subscribed and never read while the whole run goes by.
    let slow = h.watch(1).await.unwrap();
    pass_until(&h, &mut a, 64, n).await;
    h.settle().await;
    let mut seqs: Vec<u64> = slow
        .backlog
        .read()
        .unwrap()
        .events
        .iter()
        .map(|e| e.seq)
        .collect();
    let mut live = slow.live.expect("the run was running");
    let mut queued = 0;
    while let Some(e) = live.recv().await {
        assert!(!matches!(e.kind, EventKind::RunFinished { .. }));
        seqs.push(e.seq);
        queued += 1;
    }
    assert_eq!(
        queued,
        super::WATCHER_QUEUE,
        "let go once its queue was full"
    );
    let next = seqs.last().unwrap() + 1;
    let rest = h
        .handle
        .ask(|reply| Command::Watch {
            run_id: RunId(1),
            from_seq: next,
            passing_output: true,
            reply,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(rest.live.is_none(), "the run has finished");
    let rest = rest.backlog.read().unwrap().events;
    assert!(matches!(
        rest.last().map(|e| &e.kind),
        Some(EventKind::RunFinished { .. })
    ));
    seqs.extend(rest.iter().map(|e| e.seq));
    let all: Vec<u64> = (seqs[0]..seqs[0] + seqs.len() as u64).collect();
    assert_eq!(seqs, all, "every event once, in order");
    let finished = rest
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TestFinished(_)))
        .count();
    assert!(finished > 0);
}

/// A watcher that asked for no output of passing attempts gets their results without it, and
/// every other result whole; one that asked for everything gets everything.
#[tokio::test(start_paused = true)]
async fn a_watcher_may_leave_out_the_output_of_passing_attempts() {
    let h = Harness::new();
    let mut a = h.agent("a", 4, 1).await;
    let _rx = h.submit(1, spec(3, 0)).await;
    let mut watchers = vec![];
    for passing_output in [false, true] {
        let sub = h
            .handle
            .ask(|reply| Command::Watch {
                run_id: RunId(1),
                from_seq: 0,
                passing_output,
                reply,
            })
            .await
            .unwrap()
            .unwrap();
        watchers.push(sub.live.expect("the run is running"));
    }
    let statuses = [
        AttemptStatus::Passed,
        AttemptStatus::Skipped,
        AttemptStatus::Failed,
    ];
    let mut sent = 0;
    while sent < statuses.len() {
        h.from(&a, ask(4));
        let g = lease(&mut a).await;
        for i in 0..g.tests.len().min(statuses.len() - sent) {
            let mut r = result(statuses[sent]);
            r.output = format!("output {sent}").into_bytes();
            h.from(&a, AgentMessage::TestFinished(key_of(&g, i), r));
            sent += 1;
        }
    }
    h.settle().await;
    let results = |rx: &mut mpsc::Receiver<RunEvent>| {
        let mut seen = vec![];
        while let Ok(e) = rx.try_recv() {
            if let EventKind::TestFinished(f) = e.kind {
                seen.push((f.result.status, String::from_utf8(f.result.output).unwrap()));
            }
        }
        seen
    };
    let [lean, full] = &mut watchers[..] else {
        unreachable!()
    };
    let expected = |passing: bool| -> Vec<(AttemptStatus, String)> {
        statuses
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let shown = passing || !s.is_pass_or_skip();
                (
                    *s,
                    if shown {
                        format!("output {i}")
                    } else {
                        String::new()
                    },
                )
            })
            .collect()
    };
    assert_eq!(results(lean), expected(false));
    assert_eq!(results(full), expected(true));
}
