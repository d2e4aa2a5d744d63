//! One run's state inside the scheduler: its queue, each test's attempts, its summary and event log.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testfleet_model::{
    AgentId, AttemptResult, AttemptStatus, EventKind, LeaseId, NoticeLevel, Outcome, RetryDecision,
    RunEvent, RunId, RunSpec, RunState, RunSummary, TestRef, decide_after_attempt,
};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::Subscription;
use super::batch::take_count;
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
}

pub(super) struct Run {
    pub id: RunId,
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
    watchers: Vec<UnboundedSender<RunEvent>>,
    history: UnboundedSender<HistoryUpdate>,
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Run {
    /// `estimates[i]` is test i's estimate and whether it came from its own history.
    pub fn new(
        id: RunId,
        spec: Arc<RunSpec>,
        estimates: Vec<(Duration, bool)>,
        retries: u32,
        history: UnboundedSender<HistoryUpdate>,
    ) -> Self {
        let tests: Vec<TestState> = estimates
            .iter()
            .map(|(e, _)| TestState {
                estimate: *e,
                statuses: vec![],
                attempt: 1,
                avoid: None,
                leased: None,
                outcome: None,
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
            watchers: vec![],
            history,
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
        run.emit(EventKind::RunStarted {
            suite: run.spec.suite.clone(),
            total_tests: run.spec.tests.len() as u32,
            skipped,
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

    pub fn emit(&mut self, kind: EventKind) {
        let event = RunEvent {
            seq: self.events.len() as u64,
            run_id: self.id,
            at_unix_ms: now_unix_ms(),
            kind,
        };
        self.watchers.retain(|w| w.send(event.clone()).is_ok());
        let _ = self.history.send(HistoryUpdate::Event {
            suite: self.suite.clone(),
            event: event.clone(),
        });
        self.events.push(event);
    }

    pub fn notice(&mut self, level: NoticeLevel, message: String) {
        self.emit(EventKind::Notice { level, message });
    }

    pub fn subscribe(&mut self, from_seq: u64) -> Subscription {
        let backlog = self
            .events
            .iter()
            .skip(from_seq as usize)
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

    /// Takes the next batch for `agent` out of the queue, marking each test as leased.
    pub fn take_batch(
        &mut self,
        agent: &AgentId,
        others_connected: bool,
        max_tests: usize,
        budget: Duration,
        lease: LeaseId,
    ) -> Vec<(u32, u32)> {
        let eligible: Vec<usize> = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, i)| {
                !others_connected || self.tests[**i as usize].avoid.as_ref() != Some(agent)
            })
            .map(|(pos, _)| pos)
            .take(max_tests)
            .collect();
        let n = take_count(
            eligible
                .iter()
                .map(|p| self.tests[self.queue[*p] as usize].estimate),
            budget,
            max_tests,
        );
        let mut batch = Vec::with_capacity(n);
        for pos in eligible[..n].iter().rev() {
            let index = self
                .queue
                .remove(*pos)
                .expect("position came from the queue");
            let t = &mut self.tests[index as usize];
            t.leased = Some(lease);
            self.queued_estimate = self.queued_estimate.saturating_sub(t.estimate);
            batch.push((index, t.attempt));
        }
        batch.reverse();
        batch
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

    /// Applies a finished attempt: settles the test or requeues it at the front.
    pub fn on_finished(
        &mut self,
        index: u32,
        attempt: u32,
        agent: &AgentId,
        result: AttemptResult,
    ) {
        *self
            .summary
            .attempts_per_agent
            .entry(agent.to_string())
            .or_default() += 1;
        let retries = self.retries;
        let t = &mut self.tests[index as usize];
        t.leased = None;
        t.statuses.push(result.status);
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
        });
        if requeued {
            self.requeue_front(index);
        } else if let Some(o) = final_outcome {
            self.settle(o);
        }
    }

    /// A leased test whose agent went away: an infrastructure event if it had started, otherwise it
    /// simply goes back to the front of the queue.
    pub fn on_lost(&mut self, index: u32, started: bool, agent: &AgentId, why: &str) {
        if !self.is_current_lease_holder(index) {
            return;
        }
        if started {
            let attempt = self.tests[index as usize].attempt;
            let result = AttemptResult::infra_error(format!(
                "agent {agent} was lost while running the test: {why}"
            ));
            self.on_finished(index, attempt, agent, result);
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

    fn settle(&mut self, outcome: Outcome) {
        self.summary.record(outcome);
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
        self.summary.wall_ms = self.started.elapsed().as_millis() as u64;
        let summary = self.summary.clone();
        self.emit(EventKind::RunFinished { summary, state });
        // Watch streams end here: dropping the senders closes them after the last event.
        self.watchers.clear();
    }
}
