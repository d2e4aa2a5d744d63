//! One run's state inside the scheduler: its queue, each test's attempts, its summary and event log.
//! Cutting leases from its queue is `leasing`; what per-test settings ask of it (test groups'
//! slots, retries and their backoff) is `limits`; rebuilding it after a restart, and adopting
//! results whose lease is gone, is `resume`.

mod context;
mod footprint;
mod leasing;
mod limits;
mod log;
mod resume;
mod test_state;
mod watchers;

pub(crate) use context::{Context, Elsewhere, LeaseTally};
use log::EventLog;
pub use log::{Backlog, LogConfig, LogSnapshot};
use test_state::TestState;
pub use watchers::WATCHER_QUEUE;
use watchers::Watchers;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testfleet_model::{
    AgentId, AttemptResult, AttemptStatus, EventKind, LeaseId, NoticeLevel, Outcome, RetryDecision,
    RunEvent, RunId, RunSpec, RunState, RunSummary, Scope, TestFinished, TestRef,
    decide_after_attempt,
};
use tokio::sync::mpsc::UnboundedSender;

use super::batch::take_count;
use super::{Candidate, Subscription};
use crate::history::HistoryUpdate;
use crate::history::credits::Credit;

pub(super) struct Run {
    pub id: RunId,
    /// Held while the run is running (see [`super::RunSlot`]).
    pub slot: Option<super::RunSlot>,
    pub spec: Arc<RunSpec>,
    pub suite: Arc<str>,
    pub state: RunState,
    pub summary: RunSummary,
    pub created_unix_ms: u64,
    retries: u32,
    started: Instant,
    tests: Vec<TestState>,
    /// Test indices in dispatch order: longest estimate first, retries at the front.
    queue: VecDeque<u32>,
    queued_estimate: Duration,
    unsettled: usize,
    /// Every event so far, packed (older ones on disk past the run's share of memory). Sequence
    /// numbers of this coordinator's events for the run start at a base: each resume by a
    /// restarted coordinator is a new epoch above the last, so a watcher's position stays valid.
    log: EventLog,
    /// Live watchers, each with a queue of at most [`WATCHER_QUEUE`] events.
    watchers: Watchers,
    sinks: Sinks,
    /// Open until the run finishes.
    trace: Option<crate::run_trace::RunTrace>,
    /// Per binary: whether its tests need services (and so an agent with Docker).
    needs_docker: Vec<bool>,
    /// Per binary: fingerprints of the agent-scope services its tests need.
    agent_profile: Vec<Vec<String>>,
    /// Per binary: the registry images (`name:tag`) its tests' services run.
    images: Vec<Vec<String>>,
    /// Whether the run was told that an agent runs its tests without a sandbox (said once).
    warned_unsandboxed: bool,
    /// Per agent: what the tests of its last lease shared ([`testfleet_model::TestSpec::shares`]),
    /// whose fixtures its pytest workers may still hold.
    recent_shares: HashMap<AgentId, HashSet<String>>,
    /// Per test group ([`RunSpec::test_groups`]): which of its slots leased tests hold.
    group_held: Vec<Vec<bool>>,
    /// Queued retries that wait for their backoff.
    delayed: usize,
    /// What the spec takes in memory, counted once.
    spec_bytes: usize,
}

/// Where a run's events go besides its watchers: the history writer, the metrics, and the run's
/// log (in memory, then on disk).
#[derive(Clone)]
pub(crate) struct Sinks {
    pub history: UnboundedSender<HistoryUpdate>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub log: Arc<LogConfig>,
}

/// How far down the queue a lease looks for tests whose services (or fixtures) are already warm on
/// the agent.
const AFFINITY_WINDOW: usize = 4096;

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Run {
    /// `plan.estimates[i]` is test i's estimate and whether it came from its own history.
    pub fn new(
        id: RunId,
        spec: Arc<RunSpec>,
        plan: crate::history::Plan,
        retries: u32,
        sinks: Sinks,
        resumes: u32,
        trace: crate::run_trace::RunTrace,
    ) -> Self {
        let crate::history::Plan {
            estimates,
            quarantined,
        } = plan;
        let tests: Vec<TestState> = estimates
            .iter()
            .enumerate()
            .map(|(i, (e, _))| TestState::new(*e, quarantined.get(i).copied().unwrap_or(false)))
            .collect();
        let mut order: Vec<u32> = (0..spec.tests.len() as u32)
            .filter(|i| !spec.tests[*i as usize].ignored())
            .collect();
        // Longest first; among equals, tests without history first (their cost is a guess).
        order.sort_by(|a, b| {
            let (ea, ka) = estimates[*a as usize];
            let (eb, kb) = estimates[*b as usize];
            eb.cmp(&ea).then(ka.cmp(&kb)).then(a.cmp(b))
        });
        let mut run = Run {
            id,
            slot: None,
            suite: Arc::from(spec.suite.as_str()),
            state: RunState::Running,
            summary: RunSummary::default(),
            created_unix_ms: now_unix_ms(),
            retries,
            started: Instant::now(),
            queued_estimate: order.iter().map(|i| tests[*i as usize].estimate()).sum(),
            unsettled: order.len(),
            queue: order.into(),
            tests,
            log: EventLog::new(id, u64::from(resumes) << 40, sinks.log.clone()),
            spec_bytes: footprint::spec_bytes(&spec),
            watchers: Watchers::default(),
            sinks,
            trace: Some(trace),
            warned_unsandboxed: false,
            recent_shares: HashMap::new(),
            group_held: spec
                .test_groups
                .iter()
                .map(|g| vec![false; g.max_threads as usize])
                .collect(),
            delayed: 0,
            needs_docker: spec
                .binaries
                .iter()
                .map(|b| !b.services.is_empty())
                .collect(),
            agent_profile: spec
                .binaries
                .iter()
                .map(|b| {
                    let mut fps: Vec<String> = b
                        .services
                        .iter()
                        .map(|i| &spec.services[*i as usize])
                        .filter(|s| s.scope == Scope::Agent)
                        .map(|s| s.fingerprint())
                        .collect();
                    fps.sort();
                    fps
                })
                .collect(),
            images: spec
                .binaries
                .iter()
                .map(|b| {
                    let mut images: Vec<String> = b
                        .services
                        .iter()
                        .filter_map(|i| match &spec.services[*i as usize].source {
                            testfleet_model::ImageSource::Image { name, tag } => {
                                Some(format!("{name}:{tag}"))
                            }
                            // Built here, or a stack whose images only its files name.
                            testfleet_model::ImageSource::Build { .. }
                            | testfleet_model::ImageSource::Compose { .. } => None,
                        })
                        .collect();
                    images.sort();
                    images.dedup();
                    images
                })
                .collect(),
            spec,
        };
        let skipped: Vec<TestRef> = (0..run.spec.tests.len() as u32)
            .filter(|i| run.spec.tests[*i as usize].ignored())
            .map(|i| run.test_ref(i))
            .collect();
        for t in &skipped {
            run.tests[t.index as usize].outcome = Some(Outcome::Skipped);
            run.summary.record(Outcome::Skipped);
        }
        let quarantined: Vec<TestRef> = (0..run.spec.tests.len() as u32)
            .filter(|i| run.tests[*i as usize].quarantined)
            .map(|i| run.test_ref(i))
            .collect();
        run.emit(EventKind::RunStarted {
            suite: run.spec.suite.clone(),
            total_tests: run.spec.tests.len() as u32,
            skipped,
            quarantined,
        });
        run.finish_if_done();
        run
    }

    pub fn test_ref(&self, index: u32) -> TestRef {
        self.spec.test_ref(index)
    }

    pub fn is_running(&self) -> bool {
        self.state == RunState::Running
    }

    pub fn has_queued(&self) -> bool {
        self.is_running() && !self.queue.is_empty()
    }

    pub fn queued_estimate(&self) -> Duration {
        self.queued_estimate
    }

    /// The run's trace context, for leases.
    pub fn traceparent(&self) -> &str {
        self.trace.as_ref().map_or("", |t| t.traceparent.as_str())
    }

    /// Tests waiting for an agent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn emit(&mut self, kind: EventKind) {
        self.emit_with(kind, None);
    }

    /// Emits an event that records an agent's result, whose credits go with it to the history
    /// writer.
    fn emit_with(&mut self, kind: EventKind, credit: Option<Credit>) {
        let mut event = RunEvent {
            seq: self.log.next_seq(),
            run_id: self.id,
            at_unix_ms: now_unix_ms(),
            kind,
        };
        self.sinks.metrics.observe(&event.kind);
        if let EventKind::RunFinished { summary, .. } = &event.kind
            && let Some(trace) = self.trace.take()
        {
            trace.finish(summary);
        }
        // A watcher let go catches up from the log, which has every event (see
        // `api/client/follow.rs`).
        self.watchers.send(&mut event);
        // The log keeps a result without its output, which the history writer keeps on disk: a
        // run's memory does not grow with what its tests print.
        self.log.push(&event);
        let _ = self.sinks.history.send(HistoryUpdate::Event {
            suite: self.suite.clone(),
            event: Box::new(event),
            credit,
        });
    }

    pub fn notice(&mut self, level: NoticeLevel, message: String) {
        self.emit(EventKind::Notice { level, message });
    }

    /// Warns, once per run, that a bundled run's tests go to an agent without a sandbox
    /// (`why`: the agent's reason), where its paths do not hold and its files are not hidden.
    pub fn warn_if_unsandboxed(&mut self, agent: &AgentId, why: &str) {
        if why.is_empty() || self.spec.origin.is_empty() || self.warned_unsandboxed {
            return;
        }
        self.warned_unsandboxed = true;
        self.notice(
            NoticeLevel::Warning,
            format!(
                "agent {agent} runs tests without a sandbox ({why}): paths compiled into them \
                 (env!(\"CARGO_MANIFEST_DIR\"), env!(\"CARGO_BIN_EXE_…\")) do not hold there, \
                 and they can see the agent's files"
            ),
        );
    }

    /// A watcher's events from `from_seq`; `passing_output`: whether it wants the output of
    /// attempts that passed or skipped themselves.
    pub fn subscribe(&mut self, from_seq: u64, passing_output: bool) -> Subscription {
        let backlog = self.log.snapshot(from_seq, self.spec.clone());
        let live = self.is_running().then(|| self.watchers.add(passing_output));
        Subscription { backlog, live }
    }

    pub fn on_service_started(
        &mut self,
        agent: &AgentId,
        service: String,
        scope: Scope,
        duration_ms: u64,
        container_id: String,
    ) {
        self.summary
            .service_starts
            .entry(service.clone())
            .or_default()
            .add(duration_ms);
        self.emit(EventKind::ServiceStarted {
            agent_id: agent.to_string(),
            service,
            scope,
            duration_ms,
            container_id,
        });
    }

    pub fn on_image_pulled(&mut self, agent: &AgentId, p: testfleet_model::session::ImagePulled) {
        if p.error.is_none() {
            self.summary
                .image_pulls
                .entry(p.image.clone())
                .or_default()
                .add(p.duration_ms);
        }
        self.emit(EventKind::ImagePulled {
            agent_id: agent.to_string(),
            image: p.image,
            registry: p.registry,
            duration_ms: p.duration_ms,
            error: p.error,
        });
    }

    /// Whether a message about (index, attempt, lease) refers to the test's current execution.
    pub fn is_current(&self, index: u32, attempt: u32, lease: LeaseId) -> bool {
        self.tests.get(index as usize).is_some_and(|t| {
            t.leased() == Some(lease) && t.attempt() == attempt && t.outcome.is_none()
        })
    }

    pub fn on_started(&mut self, index: u32, attempt: u32, agent: &AgentId) {
        let test = self.test_ref(index);
        self.emit(EventKind::TestStarted {
            test,
            attempt,
            agent_id: agent.to_string(),
        });
    }

    /// Applies a finished attempt: settles the test or requeues it at the front.
    pub fn on_finished(
        &mut self,
        index: u32,
        attempt: u32,
        agent: &AgentId,
        lease: LeaseId,
        mut result: AttemptResult,
        Context {
            tally,
            elsewhere,
            credit,
        }: Context,
    ) {
        // Looked up before inserting: the key is copied only for an agent's first attempt.
        match self.summary.attempts_per_agent.get_mut(agent.as_str()) {
            Some(n) => *n += 1,
            None => {
                self.summary.attempts_per_agent.insert(agent.to_string(), 1);
            }
        }
        if result.status.is_timed_run() {
            let ms = result.duration.as_millis() as u64;
            self.summary.busy_ms += ms;
            self.summary.longest_ms = self.summary.longest_ms.max(ms);
        }
        let retries = self.retries_of(index);
        let settings = self.settings_of(index).cloned();
        let needs_docker = self.needs_docker(index);
        self.unlease(index);
        let t = &mut self.tests[index as usize];
        t.push_status(result.status);
        let quarantined = t.quarantined;
        let only_here = !(if needs_docker {
            elsewhere.with_docker
        } else {
            elsewhere.connected
        });
        let infra = (result.status == AttemptStatus::InfraError)
            .then(|| (agent.clone(), result.message.clone()));
        let again = infra.is_some() && t.last_infra() == infra.as_ref();
        let decision = match decide_after_attempt(t.statuses(), retries) {
            RetryDecision::Retry {
                counts_as_attempt: false,
            } if only_here && again => {
                result.message = format!(
                    "{}; the same error twice on {agent}, and no other connected agent{} can take \
                     this test, so it is not retried again",
                    result.message,
                    if needs_docker { " with Docker" } else { "" }
                );
                RetryDecision::Settle(Outcome::InfraError)
            }
            RetryDecision::Settle(Outcome::Flaky)
                if settings.as_ref().is_some_and(|s| s.flaky_fails) =>
            {
                let why = "flaky (it failed, then passed), and its flaky-result is \"fail\"";
                result.message = if result.message.is_empty() {
                    why.to_owned()
                } else {
                    format!("{}; {why}", result.message)
                };
                RetryDecision::Settle(Outcome::Failed)
            }
            d => d,
        };
        if let Some(infra) = infra {
            t.set_last_infra(infra);
        }
        let (final_outcome, requeued) = match decision {
            RetryDecision::Settle(o) => {
                t.outcome = Some(o);
                (Some(o), false)
            }
            RetryDecision::Retry { counts_as_attempt } => {
                if counts_as_attempt {
                    t.set_attempt(t.attempt() + 1);
                    // A retry with a backoff waits; an infrastructure error's retry never does.
                    let wait = settings
                        .as_ref()
                        .and_then(|s| s.retries)
                        .map(|p| p.jittered(t.attempt() - 1, fastrand::f64()))
                        .filter(|d| !d.is_zero());
                    if let Some(wait) = wait {
                        t.set_not_before(tokio::time::Instant::now() + wait);
                        self.delayed += 1;
                    }
                }
                t.set_avoid(Some(agent.clone()));
                (None, true)
            }
        };
        let test = self.test_ref(index);
        self.emit_with(
            EventKind::TestFinished(TestFinished {
                test,
                attempt,
                agent_id: agent.to_string(),
                result,
                final_outcome,
                lease_id: Some(lease.0),
                quarantined,
            }),
            credit,
        );
        // Before the run can close, so the history writer sees the lease whole.
        if let Some(t) = tally {
            self.emit(EventKind::LeaseFinished {
                lease_id: lease.0,
                agent_id: agent.to_string(),
                tests: t.tests,
                failed: t.failed,
            });
        }
        if requeued {
            self.requeue_front(index);
        } else if let Some(o) = final_outcome {
            self.settle(index, o);
        }
    }

    /// The most slots that served this run, for its lower bound.
    pub fn note_slots(&mut self, slots: u32) {
        self.summary.slots = self.summary.slots.max(slots);
    }

    /// A leased test whose agent went away: an infrastructure event if it had started, otherwise it
    /// simply goes back to the front of the queue.
    pub fn on_lost(&mut self, index: u32, started: bool, agent: &AgentId, why: &str) {
        if !self.is_current_lease_holder(index) {
            return;
        }
        if started {
            let t = &self.tests[index as usize];
            let (attempt, lease) = (t.attempt(), t.leased().expect("checked above"));
            let result = AttemptResult::infra_error(format!(
                "agent {agent} was lost while running the test: {why}"
            ));
            self.on_finished(index, attempt, agent, lease, result, Context::ASSUMED);
        } else {
            self.unlease(index);
            self.requeue_front(index);
        }
    }

    fn is_current_lease_holder(&self, index: u32) -> bool {
        self.tests
            .get(index as usize)
            .is_some_and(|t| t.leased().is_some() && t.outcome.is_none())
    }

    fn requeue_front(&mut self, index: u32) {
        self.queued_estimate += self.tests[index as usize].estimate();
        self.queue.push_front(index);
    }

    fn settle(&mut self, index: u32, outcome: Outcome) {
        if self.tests[index as usize].quarantined && outcome.fails_run() {
            self.summary.quarantined += 1;
        } else {
            self.summary.record(outcome);
        }
        self.unsettled -= 1;
        self.finish_if_done();
    }

    fn finish_if_done(&mut self) {
        if self.unsettled == 0 && self.is_running() {
            self.close(RunState::Finished);
        }
    }

    /// Settles every open test as cancelled and closes the run.
    pub fn cancel(&mut self) {
        if !self.is_running() {
            return;
        }
        for t in &mut self.tests {
            if t.outcome.is_none() {
                t.outcome = Some(Outcome::Cancelled);
                t.set_leased(None);
                t.take_group_slot();
                self.summary.record(Outcome::Cancelled);
            }
        }
        for held in &mut self.group_held {
            held.fill(false);
        }
        self.queue.clear();
        self.queued_estimate = Duration::ZERO;
        self.unsettled = 0;
        self.close(RunState::Cancelled);
    }

    fn close(&mut self, state: RunState) {
        self.state = state;
        // Finished runs stay for watchers, but no longer count against the limit.
        self.slot = None;
        self.summary.wall_ms = self.started.elapsed().as_millis() as u64;
        let summary = self.summary.clone();
        self.emit(EventKind::RunFinished { summary, state });
        // Watch streams end here: dropping the senders closes them after the last event.
        self.watchers.clear();
    }
}
