//! The scheduler's task: it takes commands one at a time (work requests first), and keeps the
//! runs it holds: adding, resuming, cancelling and closing them, and the fleet's sums.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use testfleet_model::{AgentId, LeaseId, NoticeLevel, RunId, RunSpec};
use tokio::sync::mpsc;

use super::agents::{Agent, AgentCommand, AgentSnapshot};
use super::handle::{Command, RunSlot, RunSnapshot, SchedulerHandle};
use super::run::{self, Run};
use super::{Fleet, Scheduler, SchedulerConfig, now_unix_ms};
use crate::history::HistoryUpdate;
use crate::metrics::{Gauges, Metrics};

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
            // A retry that waits for its backoff is leased as soon as its wait is over.
            let wake = s.next_delayed_retry();
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
                // Last: a wake-up never keeps commands waiting.
                () = sleep_until_some(wake) => s.dispatch(),
            }
        }
        tracing::debug!("scheduler stopped");
    });
    (SchedulerHandle { tx, priority }, task)
}

/// Sleeps until `at`; forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Scheduler {
    /// When the first retry waiting for its backoff may be leased, in any running run.
    fn next_delayed_retry(&self) -> Option<tokio::time::Instant> {
        self.runs.values().filter_map(|r| r.next_delayed()).min()
    }

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
            Command::MakeRoom { bytes, reply } => {
                let _ = reply.send(self.make_room(bytes));
            }
            Command::Watch {
                run_id,
                from_seq,
                passing_output,
                reply,
            } => {
                let sub = self
                    .runs
                    .get_mut(&run_id)
                    .map(|r| r.subscribe(from_seq, passing_output));
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
            Command::FromAgent {
                agent,
                conn,
                msg,
                credit,
            } => self.on_agent_message(agent, conn, msg, credit),
            Command::AgentDisconnected { agent, conn, why } => {
                self.on_disconnected(&agent, conn, &why);
            }
        }
    }

    /// Starts a run, or (with `records` and `resumes`) resumes one from history.
    /// A running run keeps its place under the limit until it finishes; one that finished at once
    /// (nothing to run) gives it back now.
    pub(super) fn hold_slot(&mut self, run_id: RunId, slot: Option<RunSlot>) {
        if let Some(run) = self.runs.get_mut(&run_id).filter(|r| r.is_running()) {
            run.slot = slot;
        }
    }

    pub(super) fn add_run(
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
                log: self.config.log.clone(),
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

    pub(super) fn revoke_leases_of(&mut self, run_id: RunId) {
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
    pub(super) fn on_run_closed(&mut self, run_id: RunId) {
        self.finished.push_back(run_id);
        while self.finished.len() > self.config.keep_finished_runs {
            if let Some(old) = self.finished.pop_front() {
                self.runs.remove(&old);
            }
        }
    }

    pub(super) fn gauges(&mut self) -> Gauges {
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
    pub(super) fn fleet(&mut self) -> Fleet {
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
    pub(super) fn agent_changed(&mut self, id: &AgentId) {
        self.fleet = None;
        self.waiting.remove(id);
    }
}
