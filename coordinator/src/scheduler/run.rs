//! One run's state inside the scheduler: its queue, each test's attempts, its summary and event log.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testfleet_model::{
    AgentId, AttemptResult, AttemptStatus, EventKind, LeaseId, NoticeLevel, Outcome, RetryDecision,
    RunEvent, RunId, RunSpec, RunState, RunSummary, Scope, TestRef, decide_after_attempt,
};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::batch::take_count;
use super::{Candidate, Subscription};
use crate::history::HistoryUpdate;

pub(super) struct TestState {
    estimate: Duration,
    statuses: Vec<AttemptStatus>,
    /// The attempt number the next (or current) execution carries, from 1.
    attempt: u32,
    /// The agent that failed the last attempt: the retry goes elsewhere when it can.
    avoid: Option<AgentId>,
    leased: Option<LeaseId>,
    outcome: Option<Outcome>,
    quarantined: bool,
}

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
    events: Vec<RunEvent>,
    /// Sequence numbers of this coordinator's events for the run start here: each resume by a
    /// restarted coordinator is a new epoch above the last, so a watcher's position stays valid.
    seq_base: u64,
    watchers: Vec<UnboundedSender<RunEvent>>,
    sinks: Sinks,
    /// Open until the run finishes.
    trace: Option<crate::run_trace::RunTrace>,
    /// Per binary: whether its tests need services (and so an agent with Docker).
    needs_docker: Vec<bool>,
    /// Per binary: fingerprints of the agent-scope services its tests need.
    agent_profile: Vec<Vec<String>>,
    /// Whether the run was told that an agent runs its tests without a sandbox (said once).
    warned_unsandboxed: bool,
}

/// Where a run's events go besides its watchers: the history writer and the metrics.
#[derive(Clone)]
pub(crate) struct Sinks {
    pub history: UnboundedSender<HistoryUpdate>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// A lease's results once all are in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseTally {
    pub tests: u32,
    pub failed: u32,
}

/// How far down the queue a lease looks for tests whose services are already warm on the agent.
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
            .map(|(i, (e, _))| TestState {
                estimate: *e,
                statuses: vec![],
                attempt: 1,
                avoid: None,
                leased: None,
                outcome: None,
                quarantined: quarantined.get(i).copied().unwrap_or(false),
            })
            .collect();
        let mut order: Vec<u32> = (0..spec.tests.len() as u32)
            .filter(|i| !spec.tests[*i as usize].ignored)
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
            queued_estimate: order.iter().map(|i| tests[*i as usize].estimate).sum(),
            unsettled: order.len(),
            queue: order.into(),
            tests,
            events: vec![],
            seq_base: u64::from(resumes) << 40,
            watchers: vec![],
            sinks,
            trace: Some(trace),
            warned_unsandboxed: false,
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
            spec,
        };
        let skipped: Vec<TestRef> = (0..run.spec.tests.len() as u32)
            .filter(|i| run.spec.tests[*i as usize].ignored)
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
        let t = &self.spec.tests[index as usize];
        TestRef {
            index,
            binary_id: self.spec.binaries[t.binary as usize].binary_id.clone(),
            name: t.name.clone(),
        }
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
        let event = RunEvent {
            seq: self.seq_base + self.events.len() as u64,
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
        self.watchers.retain(|w| w.send(event.clone()).is_ok());
        let _ = self.sinks.history.send(HistoryUpdate::Event {
            suite: self.suite.clone(),
            event: event.clone(),
        });
        self.events.push(event);
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

    pub fn subscribe(&mut self, from_seq: u64) -> Subscription {
        let backlog = self
            .events
            .iter()
            .filter(|e| e.seq >= from_seq)
            .cloned()
            .collect();
        let live = if self.is_running() {
            let (tx, rx) = unbounded_channel();
            self.watchers.push(tx);
            Some(rx)
        } else {
            None
        };
        Subscription { backlog, live }
    }

    fn binary_of(&self, index: u32) -> usize {
        self.spec.tests[index as usize].binary as usize
    }

    /// Whether test `index` needs services.
    fn needs_docker(&self, index: u32) -> bool {
        self.needs_docker[self.binary_of(index)]
    }

    /// Whether any queued test needs services.
    pub fn queued_need_docker(&self) -> bool {
        // Asked on every dispatch: a run without services answers without a scan of its queue.
        self.is_running()
            && self.needs_docker.contains(&true)
            && self.queue.iter().any(|i| self.needs_docker(*i))
    }

    /// Takes the next batch for `agent` out of the queue, marking each test as leased. Tests that
    /// need services go only to an agent with Docker, and tests whose agent-scope services are
    /// already running on this agent (`warm`) come first.
    pub fn take_batch(
        &mut self,
        agent: &Candidate<'_>,
        max_tests: usize,
        budget: Duration,
        at_least_one: bool,
        lease: LeaseId,
    ) -> Vec<(u32, u32)> {
        // A retry avoids the agent that failed it only when another agent could run it: without
        // that, a test needing services whose only other agent lacks Docker would wait forever.
        let eligible = |i: u32| {
            let needs_docker = self.needs_docker(i);
            let others = if needs_docker {
                agent.others_with_docker
            } else {
                agent.others_connected
            };
            (!others || self.tests[i as usize].avoid.as_ref() != Some(agent.id))
                && (agent.docker || !needs_docker)
        };
        let warm = |i: u32| {
            let profile = &self.agent_profile[self.binary_of(i)];
            !profile.is_empty() && profile.iter().all(|f| agent.warm.contains(f))
        };
        let affinity = !agent.warm.is_empty();
        let window = if affinity { AFFINITY_WINDOW } else { max_tests };
        let mut chosen: Vec<usize> = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, i)| eligible(**i))
            .map(|(pos, _)| pos)
            .take(window.max(max_tests))
            .collect();
        if affinity {
            // Stable: queue order is kept within the warm tests and within the rest.
            chosen.sort_by_key(|p| !warm(self.queue[*p]));
        }
        chosen.truncate(max_tests);
        let n = take_count(
            chosen
                .iter()
                .map(|p| self.tests[self.queue[*p] as usize].estimate),
            budget,
            max_tests,
            at_least_one,
        );
        chosen.truncate(n);
        let batch: Vec<(u32, u32)> = chosen
            .iter()
            .map(|p| {
                let index = self.queue[*p];
                (index, self.tests[index as usize].attempt)
            })
            .collect();
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        for pos in chosen {
            let index = self
                .queue
                .remove(pos)
                .expect("position came from the queue");
            let t = &mut self.tests[index as usize];
            t.leased = Some(lease);
            self.queued_estimate = self.queued_estimate.saturating_sub(t.estimate);
        }
        batch
    }

    /// Settles every queued test that needs services as an infrastructure error: no connected
    /// agent can start them.
    pub fn fail_unservable(&mut self, why: &str) {
        let needs = self.needs_docker.clone();
        let spec = self.spec.clone();
        let (unservable, rest): (Vec<u32>, Vec<u32>) = self
            .queue
            .drain(..)
            .partition(|i| needs[spec.tests[*i as usize].binary as usize]);
        self.queue = rest.into();
        let message = format!("{} test(s) cannot run: {why}", unservable.len());
        self.notice(NoticeLevel::Error, message);
        for index in unservable {
            let t = &mut self.tests[index as usize];
            self.queued_estimate = self.queued_estimate.saturating_sub(t.estimate);
            t.outcome = Some(Outcome::InfraError);
            let (attempt, quarantined) = (t.attempt, t.quarantined);
            let test = self.test_ref(index);
            self.emit(EventKind::TestFinished {
                test,
                attempt,
                agent_id: String::new(),
                result: AttemptResult::infra_error(why),
                final_outcome: Some(Outcome::InfraError),
                lease_id: None,
                quarantined,
            });
            self.settle(index, Outcome::InfraError);
        }
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

    /// Brings a resumed run to where its records say it was: settled tests stay settled, tests
    /// that failed and await a retry keep their attempt count, everything else (including what
    /// was running when the coordinator stopped) is queued again.
    pub fn restore(&mut self, records: &[crate::history::TestRecord]) {
        let (mut settled, mut retried) = (0, 0);
        for r in records {
            let index = r.index;
            let Some(t) = self.tests.get(index as usize) else {
                continue;
            };
            if t.outcome.is_some() || r.attempts.is_empty() && r.outcome.is_none() {
                continue;
            }
            for a in &r.attempts {
                *self
                    .summary
                    .attempts_per_agent
                    .entry(a.agent_id.clone())
                    .or_default() += 1;
                if a.status != AttemptStatus::InfraError {
                    self.summary.busy_ms += a.duration_ms;
                    self.summary.longest_ms = self.summary.longest_ms.max(a.duration_ms);
                }
            }
            let statuses: Vec<AttemptStatus> = r.attempts.iter().map(|a| a.status).collect();
            let decision = match r.outcome {
                Some(o) => RetryDecision::Settle(o),
                None => decide_after_attempt(&statuses, self.retries),
            };
            if let Some(pos) = self.queue.iter().position(|i| *i == index) {
                self.queue.remove(pos);
                self.queued_estimate = self
                    .queued_estimate
                    .saturating_sub(self.tests[index as usize].estimate);
            }
            let t = &mut self.tests[index as usize];
            t.statuses = statuses;
            match decision {
                RetryDecision::Settle(o) => {
                    t.outcome = Some(o);
                    settled += 1;
                    self.settle(index, o);
                }
                RetryDecision::Retry { counts_as_attempt } => {
                    let last = r.attempts.last().expect("retries follow attempts");
                    t.attempt = last.attempt + u32::from(counts_as_attempt);
                    t.avoid = last.agent_id.parse().ok();
                    retried += 1;
                    self.requeue_front(index);
                }
            }
        }
        if self.is_running() {
            self.notice(
                NoticeLevel::Warning,
                format!(
                    "resumed after a coordinator restart: {settled} test(s) had settled, {retried} await a retry, {} queued",
                    self.queue.len()
                ),
            );
        }
    }

    /// Takes a result whose lease is gone, if its test is still queued (not leased anew) for
    /// exactly this attempt: work done before a disconnect or a coordinator restart is not thrown
    /// away. Returns whether it was taken.
    pub fn adopt(
        &mut self,
        index: u32,
        attempt: u32,
        agent: &AgentId,
        lease: LeaseId,
        result: AttemptResult,
    ) -> bool {
        let Some(t) = self.tests.get(index as usize) else {
            return false;
        };
        if t.outcome.is_some() || t.leased.is_some() || t.attempt != attempt {
            return false;
        }
        let Some(pos) = self.queue.iter().position(|i| *i == index) else {
            return false;
        };
        self.queue.remove(pos);
        self.queued_estimate = self.queued_estimate.saturating_sub(t.estimate);
        self.tests[index as usize].leased = Some(lease);
        self.on_finished(index, attempt, agent, lease, result, None);
        true
    }

    /// Whether a message about (index, attempt, lease) refers to the test's current execution.
    pub fn is_current(&self, index: u32, attempt: u32, lease: LeaseId) -> bool {
        self.tests
            .get(index as usize)
            .is_some_and(|t| t.leased == Some(lease) && t.attempt == attempt && t.outcome.is_none())
    }

    pub fn on_started(&mut self, index: u32, attempt: u32, agent: &AgentId) {
        let test = self.test_ref(index);
        self.emit(EventKind::TestStarted {
            test,
            attempt,
            agent_id: agent.to_string(),
        });
    }

    /// Applies a finished attempt: settles the test or requeues it at the front. `tally` is set when
    /// this was the last result of its lease.
    pub fn on_finished(
        &mut self,
        index: u32,
        attempt: u32,
        agent: &AgentId,
        lease: LeaseId,
        result: AttemptResult,
        tally: Option<LeaseTally>,
    ) {
        *self
            .summary
            .attempts_per_agent
            .entry(agent.to_string())
            .or_default() += 1;
        if result.status != AttemptStatus::InfraError {
            let ms = result.duration.as_millis() as u64;
            self.summary.busy_ms += ms;
            self.summary.longest_ms = self.summary.longest_ms.max(ms);
        }
        let retries = self.retries;
        let t = &mut self.tests[index as usize];
        t.leased = None;
        t.statuses.push(result.status);
        let quarantined = t.quarantined;
        let decision = decide_after_attempt(&t.statuses, retries);
        let (final_outcome, requeued) = match decision {
            RetryDecision::Settle(o) => {
                t.outcome = Some(o);
                (Some(o), false)
            }
            RetryDecision::Retry { counts_as_attempt } => {
                if counts_as_attempt {
                    t.attempt += 1;
                }
                t.avoid = Some(agent.clone());
                (None, true)
            }
        };
        let test = self.test_ref(index);
        self.emit(EventKind::TestFinished {
            test,
            attempt,
            agent_id: agent.to_string(),
            result,
            final_outcome,
            lease_id: Some(lease.0),
            quarantined,
        });
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
            let (attempt, lease) = (t.attempt, t.leased.expect("checked above"));
            let result = AttemptResult::infra_error(format!(
                "agent {agent} was lost while running the test: {why}"
            ));
            self.on_finished(index, attempt, agent, lease, result, None);
        } else {
            self.tests[index as usize].leased = None;
            self.requeue_front(index);
        }
    }

    fn is_current_lease_holder(&self, index: u32) -> bool {
        self.tests
            .get(index as usize)
            .is_some_and(|t| t.leased.is_some() && t.outcome.is_none())
    }

    fn requeue_front(&mut self, index: u32) {
        self.queued_estimate += self.tests[index as usize].estimate;
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
                t.leased = None;
                self.summary.record(Outcome::Cancelled);
            }
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
