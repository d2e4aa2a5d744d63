//! A run rebuilt from history after a coordinator restart, and results adopted whose lease is
//! gone (work done before a disconnect or a restart is not thrown away).

use super::*;

impl Run {
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
                None => decide_after_attempt(&statuses, self.retries_of(index)),
            };
            if let Some(pos) = self.queue.iter().position(|i| *i == index) {
                self.queue.remove(pos);
                self.queued_estimate = self
                    .queued_estimate
                    .saturating_sub(self.tests[index as usize].estimate());
            }
            let t = &mut self.tests[index as usize];
            t.set_statuses(statuses);
            match decision {
                RetryDecision::Settle(o) => {
                    t.outcome = Some(o);
                    settled += 1;
                    self.settle(index, o);
                }
                RetryDecision::Retry { counts_as_attempt } => {
                    let last = r.attempts.last().expect("retries follow attempts");
                    t.set_attempt(last.attempt + u32::from(counts_as_attempt));
                    t.set_avoid(last.agent_id.parse().ok());
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
        credit: Option<Credit>,
    ) -> bool {
        let Some(t) = self.tests.get(index as usize) else {
            return false;
        };
        if t.outcome.is_some() || t.leased().is_some() || t.attempt() != attempt {
            return false;
        }
        let Some(pos) = self.queue.iter().position(|i| *i == index) else {
            return false;
        };
        self.queue.remove(pos);
        self.queued_estimate = self.queued_estimate.saturating_sub(t.estimate());
        if self.tests[index as usize].take_not_before().is_some() {
            self.delayed -= 1;
        }
        self.tests[index as usize].set_leased(Some(lease));
        let context = Context {
            credit,
            ..Context::ASSUMED
        };
        self.on_finished(index, attempt, agent, lease, result, context);
        true
    }
}
