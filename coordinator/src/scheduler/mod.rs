//! The scheduler: the one task that owns run and agent state. Everything reaches it as a
//! [`Command`]; everything it does comes out as run events (to watchers and the history writer) or
//! as [`AgentCommand`]s to connected agents. Nothing else reads or writes its state.

mod agents;
mod batch;
mod connections;
mod run;
#[cfg(test)]
mod tests;

pub use agents::{
    AgentCommand, AgentHello, AgentSnapshot, ConnId, FromAgent, LeaseGrant, ONLY_RUN_LABEL,
};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use testfleet_model::{
    AgentId, LeaseId, NoticeLevel, RunEvent, RunId, RunSpec, RunState, RunSummary,
};
use tokio::sync::{mpsc, oneshot};

use crate::history::HistoryUpdate;
use crate::metrics::{Gauges, Metrics};
use agents::{Agent, Lease, WorkWanted};
pub(crate) use run::LeaseTally;
use run::Run;
pub(crate) use run::now_unix_ms;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Retries for runs that do not say.
    pub default_retries: u32,
    pub heartbeat_interval: Duration,
    /// Finished runs kept in memory for `WatchRun`; older ones are answered from history.
    pub keep_finished_runs: usize,
    /// How long tests that need services wait while no connected agent can start them (one may be
    /// reconnecting) before they end as infrastructure errors.
    pub service_grace: Duration,
    /// An agent that is disconnected, or sends nothing (heartbeats included), for this long loses
    /// its leases.
    pub lease_timeout: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            default_retries: 2,
            heartbeat_interval: Duration::from_secs(5),
            keep_finished_runs: 64,
            service_grace: Duration::from_secs(15),
            lease_timeout: Duration::from_secs(30),
        }
    }
}

/// The agent a lease is being cut for, as a run sees it.
pub(crate) struct Candidate<'a> {
    pub id: &'a AgentId,
    /// Another agent is connected, so a retry can avoid this one...
    pub others_connected: bool,
    /// ...and one with Docker, so a retry of a test needing services can.
    pub others_with_docker: bool,
    pub docker: bool,
    pub warm: &'a std::collections::HashSet<String>,
}

/// A watcher's view of a run: the events so far from the requested position, then live ones.
pub struct Subscription {
    pub backlog: Vec<RunEvent>,
    /// `None` when the run has already finished: the backlog is all there is.
    pub live: Option<mpsc::UnboundedReceiver<RunEvent>>,
}

#[derive(Clone, Debug)]
pub struct RunSnapshot {
    pub run_id: RunId,
    pub suite: String,
    pub state: RunState,
    pub total_tests: u32,
    pub summary: RunSummary,
    pub created_unix_ms: u64,
}

/// A place under the coordinator's concurrent-runs limit.
pub type RunSlot = tokio::sync::OwnedSemaphorePermit;

pub enum Command {
    Submit {
        run_id: RunId,
        spec: Arc<RunSpec>,
        estimates: Vec<(Duration, bool)>,
        /// Per test: whether it is in quarantine.
        quarantined: Vec<bool>,
        /// Its place under the concurrent-runs limit, given back when it finishes.
        slot: Option<RunSlot>,
        trace: crate::run_trace::RunTrace,
        reply: oneshot::Sender<()>,
    },
    /// A run a previous coordinator process did not finish, rebuilt from history.
    Resume {
        run_id: RunId,
        spec: Arc<RunSpec>,
        estimates: Vec<(Duration, bool)>,
        quarantined: Vec<bool>,
        records: Vec<crate::history::TestRecord>,
        resumes: u32,
        slot: Option<RunSlot>,
        reply: oneshot::Sender<()>,
    },
    Watch {
        run_id: RunId,
        from_seq: u64,
        reply: oneshot::Sender<Option<Subscription>>,
    },
    Cancel {
        run_id: RunId,
        reply: oneshot::Sender<Option<bool>>,
    },
    GetRun {
        run_id: RunId,
        reply: oneshot::Sender<Option<RunSnapshot>>,
    },
    ListAgents {
        reply: oneshot::Sender<Vec<AgentSnapshot>>,
    },
    /// What the scheduler holds now, for metrics and health checks.
    Stats { reply: oneshot::Sender<Gauges> },
    AgentConnected {
        hello: AgentHello,
        conn: ConnId,
        tx: mpsc::UnboundedSender<AgentCommand>,
    },
    FromAgent {
        agent: AgentId,
        conn: ConnId,
        msg: FromAgent,
    },
    AgentDisconnected {
        agent: AgentId,
        conn: ConnId,
        why: String,
    },
}

/// A cheap, cloneable way to talk to the scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
    /// Work requests (and the hellos they depend on) jump the queue: an idle agent gets its lease
    /// at once even while thousands of results wait to be counted. Nothing else may overtake:
    /// results, releases and disconnects keep their order.
    priority: mpsc::UnboundedSender<Command>,
}

#[derive(Debug, thiserror::Error)]
#[error("the scheduler has stopped")]
pub struct SchedulerGone;

impl SchedulerHandle {
    pub fn send(&self, cmd: Command) -> Result<(), SchedulerGone> {
        let urgent = matches!(
            cmd,
            Command::AgentConnected { .. }
                | Command::FromAgent {
                    msg: FromAgent::WorkRequest { .. },
                    ..
                }
        );
        let tx = if urgent { &self.priority } else { &self.tx };
        tx.send(cmd).map_err(|_| SchedulerGone)
    }

    /// Sends a command built around a reply channel and waits for the reply.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SchedulerGone> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| SchedulerGone)
    }
}

/// Starts the scheduler task. It stops when `shutdown` resolves, dropping every agent and watch
/// stream (which lets the gRPC server finish), or when every handle is gone.
pub fn spawn(
    config: SchedulerConfig,
    history: mpsc::UnboundedSender<HistoryUpdate>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (SchedulerHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (priority, mut priority_rx) = mpsc::unbounded_channel();
    let mut s = Scheduler {
        config,
        history,
        metrics,
        runs: BTreeMap::new(),
        finished: VecDeque::new(),
        agents: HashMap::new(),
        waiting: BTreeSet::new(),
        fleet: None,
        leases: HashMap::new(),
        // Lease ids must not repeat across coordinator restarts: agents may still hold old ones.
        next_lease: now_unix_ms() * 1000,
        first_lease: 0,
        lost_leases: HashMap::new(),
        unservable_since: None,
    };
    s.first_lease = s.next_lease;
    let task = tokio::spawn(async move {
        tokio::pin!(shutdown);
        // Conditions that last (a grace period running out) are checked on a tick.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                // In this order, so neither the tick nor a shutdown starves under load.
                () = &mut shutdown => break,
                _ = tick.tick() => {
                    s.expire_agents();
                    s.dispatch();
                }
                Some(cmd) = priority_rx.recv() => s.handle(cmd),
                cmd = rx.recv() => match cmd {
                    Some(cmd) => s.handle(cmd),
                    None => break,
                },
            }
        }
        tracing::debug!("scheduler stopped");
    });
    (SchedulerHandle { tx, priority }, task)
}

struct Scheduler {
    config: SchedulerConfig,
    history: mpsc::UnboundedSender<HistoryUpdate>,
    metrics: Arc<Metrics>,
    /// Ordered by id, so the oldest run is served first.
    runs: BTreeMap<RunId, Run>,
    finished: VecDeque<RunId>,
    agents: HashMap<AgentId, Agent>,
    /// Agents with a parked work request, in id order (the order they are served in).
    waiting: BTreeSet<AgentId>,
    /// Connected agents in sums, recomputed only after an agent came or went: dispatch runs on
    /// every result and must not walk a thousand agents each time.
    fleet: Option<Fleet>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: u64,
    /// The first lease id of this process: lower ids were issued before a restart.
    first_lease: u64,
    /// Leases this process took back from their agent (lost or timed out), by agent: a result the
    /// agent brings back later may still be adopted.
    lost_leases: HashMap<LeaseId, AgentId>,
    /// Since when tests that need services have had no connected agent able to run them (tokio's
    /// clock, so tests can pause it).
    unservable_since: Option<tokio::time::Instant>,
}

impl Scheduler {
    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit {
                run_id,
                spec,
                estimates,
                quarantined,
                slot,
                trace,
                reply,
            } => {
                let plan = crate::history::Plan {
                    estimates,
                    quarantined,
                };
                self.add_run(run_id, spec, plan, &[], 0, trace);
                self.hold_slot(run_id, slot);
                let _ = reply.send(());
            }
            Command::Resume {
                run_id,
                spec,
                estimates,
                quarantined,
                records,
                resumes,
                slot,
                reply,
            } => {
                let trace = crate::run_trace::RunTrace::start(
                    run_id,
                    &spec.suite,
                    spec.tests.len(),
                    opentelemetry::Context::new(),
                );
                let plan = crate::history::Plan {
                    estimates,
                    quarantined,
                };
                self.add_run(run_id, spec, plan, &records, resumes, trace);
                self.hold_slot(run_id, slot);
                let _ = reply.send(());
            }
            Command::Watch {
                run_id,
                from_seq,
                reply,
            } => {
                let sub = self.runs.get_mut(&run_id).map(|r| r.subscribe(from_seq));
                let _ = reply.send(sub);
            }
            Command::Cancel { run_id, reply } => {
                let result = match self.runs.get_mut(&run_id) {
                    None => None,
                    Some(run) if !run.is_running() => Some(false),
                    Some(run) => {
                        run.notice(NoticeLevel::Warning, "run cancelled".into());
                        run.cancel();
                        self.revoke_leases_of(run_id);
                        self.on_run_closed(run_id);
                        Some(true)
                    }
                };
                let _ = reply.send(result);
                self.dispatch();
            }
            Command::GetRun { run_id, reply } => {
                let _ = reply.send(self.runs.get(&run_id).map(|r| RunSnapshot {
                    run_id,
                    suite: r.spec.suite.clone(),
                    state: r.state,
                    total_tests: r.spec.tests.len() as u32,
                    summary: r.summary.clone(),
                    created_unix_ms: r.created_unix_ms,
                }));
            }
            Command::ListAgents { reply } => {
                let mut list: Vec<AgentSnapshot> = self
                    .agents
                    .values()
                    .filter(|a| a.is_connected())
                    .map(Agent::snapshot)
                    .collect();
                list.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
                let _ = reply.send(list);
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.gauges());
            }
            Command::AgentConnected { hello, conn, tx } => self.on_connected(hello, conn, tx),
            Command::FromAgent { agent, conn, msg } => self.on_agent_message(agent, conn, msg),
            Command::AgentDisconnected { agent, conn, why } => {
                self.on_disconnected(&agent, conn, &why);
            }
        }
    }

    /// Starts a run, or (with `records` and `resumes`) resumes one from history.
    /// A running run keeps its place under the limit until it finishes; one that finished at once
    /// (nothing to run) gives it back now.
    fn hold_slot(&mut self, run_id: RunId, slot: Option<RunSlot>) {
        if let Some(run) = self.runs.get_mut(&run_id).filter(|r| r.is_running()) {
            run.slot = slot;
        }
    }

    fn add_run(
        &mut self,
        run_id: RunId,
        spec: Arc<RunSpec>,
        plan: crate::history::Plan,
        records: &[crate::history::TestRecord],
        resumes: u32,
        trace: crate::run_trace::RunTrace,
    ) {
        let retries = spec.retries.unwrap_or(self.config.default_retries);
        let mut run = Run::new(
            run_id,
            spec,
            plan,
            retries,
            run::Sinks {
                history: self.history.clone(),
                metrics: self.metrics.clone(),
            },
            resumes,
            trace,
        );
        if resumes > 0 {
            run.restore(records);
        }
        let done = !run.is_running();
        self.runs.insert(run_id, run);
        if done {
            self.on_run_closed(run_id);
        }
        self.dispatch();
    }

    fn on_agent_message(&mut self, agent_id: AgentId, conn: ConnId, msg: FromAgent) {
        let Some(agent) = self
            .agents
            .get_mut(&agent_id)
            .filter(|a| a.conn == conn && a.is_connected())
        else {
            return; // a stale connection's last words
        };
        agent.last_seen = tokio::time::Instant::now();
        match msg {
            FromAgent::Heartbeat => {}
            FromAgent::WorkRequest {
                free_slots,
                queue_slots,
            } => {
                let slots = agent.hello.slots;
                let wanted = WorkWanted {
                    free: free_slots.min(slots),
                    queue: queue_slots.min(slots),
                };
                agent.pending_request = (wanted.free + wanted.queue > 0).then_some(wanted);
                if agent.pending_request.is_some() {
                    self.waiting.insert(agent_id);
                } else {
                    self.waiting.remove(&agent_id);
                }
                self.dispatch();
            }
            FromAgent::Started {
                run_id,
                index,
                attempt,
                lease_id,
            } => {
                let Some(lease) = self
                    .leases
                    .get_mut(&lease_id)
                    .filter(|l| l.agent == agent_id)
                else {
                    return;
                };
                let Some(run) = self.runs.get_mut(&run_id).filter(|r| r.is_running()) else {
                    return;
                };
                if run.is_current(index, attempt, lease_id)
                    && let Some(started) = lease.outstanding.get_mut(&index)
                {
                    *started = true;
                    run.on_started(index, attempt, &agent_id);
                }
            }
            FromAgent::Finished {
                run_id,
                index,
                attempt,
                lease_id,
                result,
            } => {
                // Whatever becomes of it, the agent can stop resending it.
                agent.send(AgentCommand::Ack(run_id, index, attempt, lease_id));
                let Some(lease) = self
                    .leases
                    .get_mut(&lease_id)
                    .filter(|l| l.agent == agent_id && l.run == run_id)
                else {
                    // A lease this coordinator no longer has (requeued after a long disconnect, or
                    // lost in a restart). The result still counts if its test waits, unleased, for
                    // exactly this attempt; otherwise it is late and ignored. Only a lease that
                    // existed and was this agent's can be adopted: an agent cannot settle tests
                    // nobody gave it by inventing lease ids.
                    let issued_to_it = lease_id.0 < self.first_lease
                        || self.lost_leases.get(&lease_id) == Some(&agent_id);
                    if issued_to_it
                        && let Some(run) = self.runs.get_mut(&run_id).filter(|r| r.is_running())
                        && run.adopt(index, attempt, &agent_id, lease_id, result)
                    {
                        if !run.is_running() {
                            self.on_run_closed(run_id);
                        }
                        self.dispatch();
                    }
                    return;
                };
                if lease.outstanding.remove(&index).is_none() {
                    tracing::debug!(%lease_id, index, "ignoring a duplicate result");
                    return;
                }
                lease.failed += u32::from(result.status.is_test_failure());
                let tally = lease.outstanding.is_empty().then_some(LeaseTally {
                    tests: lease.tests,
                    failed: lease.failed,
                });
                if tally.is_some() {
                    self.leases.remove(&lease_id);
                }
                agent.busy = agent.busy.saturating_sub(1);
                let Some(run) = self.runs.get_mut(&run_id).filter(|r| r.is_running()) else {
                    return;
                };
                if !run.is_current(index, attempt, lease_id) {
                    return;
                }
                run.on_finished(index, attempt, &agent_id, lease_id, result, tally);
                if !run.is_running() {
                    self.on_run_closed(run_id);
                }
                self.dispatch();
            }
            FromAgent::ServiceStarted {
                run_id,
                service,
                scope,
                duration_ms,
                container_id,
                fingerprint,
            } => {
                if scope == testfleet_model::Scope::Agent {
                    agent.warm.insert(fingerprint);
                }
                if let Some(run) = self.runs.get_mut(&run_id).filter(|r| r.is_running()) {
                    run.on_service_started(&agent_id, service, scope, duration_ms, container_id);
                }
            }
            FromAgent::LeaseReleased { lease_id, indices } => {
                // The agent gives back what it has not started (it is draining).
                let Some(lease) = self
                    .leases
                    .get_mut(&lease_id)
                    .filter(|l| l.agent == agent_id)
                else {
                    return;
                };
                let given: Vec<(u32, bool)> = lease
                    .outstanding
                    .iter()
                    .filter(|(i, _)| indices.is_empty() || indices.contains(i))
                    .map(|(i, s)| (*i, *s))
                    .collect();
                for (i, _) in &given {
                    lease.outstanding.remove(i);
                }
                let (run_id, empty) = (lease.run, lease.outstanding.is_empty());
                if empty {
                    self.leases.remove(&lease_id);
                }
                agent.busy = agent.busy.saturating_sub(given.len() as u32);
                if let Some(run) = self.runs.get_mut(&run_id) {
                    for (index, started) in given {
                        run.on_lost(index, started, &agent_id, "given back by a draining agent");
                    }
                }
                self.dispatch();
            }
        }
    }

    fn revoke_leases_of(&mut self, run_id: RunId) {
        let ids: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.run == run_id)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let lease = self.leases.remove(&id).expect("id came from the map");
            if let Some(agent) = self.agents.get_mut(&lease.agent) {
                agent.busy = agent.busy.saturating_sub(lease.outstanding.len() as u32);
                agent.send(AgentCommand::CancelLease(id));
            }
        }
    }

    /// Keeps a bounded number of finished runs in memory.
    fn on_run_closed(&mut self, run_id: RunId) {
        self.finished.push_back(run_id);
        while self.finished.len() > self.config.keep_finished_runs {
            if let Some(old) = self.finished.pop_front() {
                self.runs.remove(&old);
            }
        }
    }

    /// Settles the service tests of runs that no connected agent can serve. With no agent
    /// connected at all, tests wait: agents may still come.
    fn fail_unservable(&mut self) {
        let fleet = self.fleet();
        let stuck = fleet.connected > 0
            && fleet.docker == 0
            && self.runs.values().any(Run::queued_need_docker);
        if !stuck {
            self.unservable_since = None;
            return;
        }
        let since = *self
            .unservable_since
            .get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < self.config.service_grace {
            return;
        }
        self.unservable_since = None;
        let mut reasons: Vec<String> = self
            .agents
            .values()
            .filter(|a| a.is_connected())
            .map(|a| format!("{}: {}", a.hello.agent_id, a.hello.docker_status))
            .collect();
        reasons.sort();
        let why = format!(
            "no connected agent can start services (Docker unavailable on {})",
            reasons.join("; ")
        );
        let mut closed = vec![];
        for run in self.runs.values_mut().filter(|r| r.queued_need_docker()) {
            run.fail_unservable(&why);
            if !run.is_running() {
                closed.push(run.id);
            }
        }
        for id in closed {
            self.on_run_closed(id);
        }
    }

    /// Serves parked work requests from the queues of running runs, oldest run first.
    fn dispatch(&mut self) {
        self.fail_unservable();
        if !self.runs.values().any(Run::has_queued) {
            return;
        }
        if self.waiting.is_empty() {
            return;
        }
        // Only connected agents can take work; one that is away may still come back to finish its
        // leases, but plans are made with those present.
        let Fleet {
            connected,
            docker: docker_agents,
            slots: total_slots,
        } = self.fleet();
        let multiple_agents = connected > 1;
        let mut served = vec![];
        for agent_id in &self.waiting {
            let Some(agent) = self.agents.get_mut(agent_id) else {
                served.push(agent_id.clone());
                continue;
            };
            let Some(wanted) = agent.pending_request else {
                continue;
            };
            let slots = (wanted.free + wanted.queue) as usize;
            let only = agent.hello.only_run();
            for run in self
                .runs
                .values_mut()
                .filter(|r| r.has_queued() && only.is_none_or(|id| id == r.id))
            {
                let budget =
                    batch::lease_budget(run.queued_estimate(), agent.hello.slots, total_slots);
                let lease_id = LeaseId(self.next_lease);
                let candidate = Candidate {
                    id: agent_id,
                    others_connected: multiple_agents,
                    others_with_docker: docker_agents > usize::from(agent.hello.docker_available),
                    docker: agent.hello.docker_available,
                    warm: &agent.warm,
                };
                // In batch mode a slot runs a whole process's worth of tests at a time.
                let per_slot = batch::TESTS_PER_SLOT.max(run.spec.tests_per_process as usize);
                let max_tests = slots * per_slot;
                let tests =
                    run.take_batch(&candidate, max_tests, budget, wanted.free > 0, lease_id);
                if tests.is_empty() {
                    continue;
                }
                run.note_slots(total_slots);
                run.warn_if_unsandboxed(agent_id, &agent.hello.sandbox_status);
                self.metrics.lease_granted();
                self.next_lease += 1;
                agent.pending_request = None;
                served.push(agent_id.clone());
                agent.busy += tests.len() as u32;
                self.leases.insert(
                    lease_id,
                    Lease {
                        run: run.id,
                        agent: agent_id.clone(),
                        outstanding: tests.iter().map(|(i, _)| (*i, false)).collect(),
                        tests: tests.len() as u32,
                        failed: 0,
                    },
                );
                agent.send(AgentCommand::Lease(LeaseGrant {
                    lease_id,
                    run_id: run.id,
                    spec: run.spec.clone(),
                    tests,
                    traceparent: run.traceparent().to_owned(),
                }));
                break;
            }
        }
        for id in served {
            self.waiting.remove(&id);
        }
    }

    fn gauges(&mut self) -> Gauges {
        let fleet = self.fleet();
        let running = self.runs.values().filter(|r| r.is_running());
        Gauges {
            runs_running: running.clone().count() as u64,
            tests_queued: running.map(|r| r.queued() as u64).sum(),
            leases_active: self.leases.len() as u64,
            agents_connected: fleet.connected as u64,
            slots_total: u64::from(fleet.slots),
            slots_busy: self
                .agents
                .values()
                .filter(|a| a.is_connected())
                .map(|a| u64::from(a.busy))
                .sum(),
        }
    }

    /// The connected agents in sums (cached until an agent comes or goes).
    fn fleet(&mut self) -> Fleet {
        *self.fleet.get_or_insert_with(|| {
            let connected = self.agents.values().filter(|a| a.is_connected());
            let mut f = Fleet::default();
            for a in connected {
                f.connected += 1;
                f.docker += usize::from(a.hello.docker_available);
                f.slots += a.hello.slots;
            }
            f
        })
    }

    /// An agent came, went, or changed: the cached sums and its parked request are stale.
    fn agent_changed(&mut self, id: &AgentId) {
        self.fleet = None;
        self.waiting.remove(id);
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Fleet {
    connected: usize,
    docker: usize,
    slots: u32,
}
