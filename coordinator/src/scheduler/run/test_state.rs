//! One test's state within a run, packed small: a coordinator holding runs of a million tests holds
//! a million of these, and most tests pass at their first attempt, outside any test group. What
//! only retried or grouped tests need lives apart, allocated for them alone.

use std::time::Duration;

use testfleet_model::{AgentId, AttemptStatus, LeaseId, Outcome};

pub(super) struct TestState {
    /// The estimate in microseconds, at most `u32::MAX` (71 minutes: enough to order tests by).
    estimate_us: u32,
    /// The attempt number the next (or current) execution carries, from 1: at most
    /// `RunSpec::MAX_RETRIES + 1` (21), so a byte holds it.
    attempt: u8,
    pub outcome: Option<Outcome>,
    pub quarantined: bool,
    /// The first attempt's status; the others' are in `rare` with it.
    first_status: Option<AttemptStatus>,
    /// The lease holding it, 0 for none (this coordinator's lease ids start at its start time in
    /// microseconds since the epoch, and resumed ones are an earlier coordinator's).
    leased: u64,
    rare: Option<Box<Rare>>,
}

#[derive(Default)]
struct Rare {
    /// Every attempt's status, once there are two.
    statuses: Vec<AttemptStatus>,
    /// The agent that failed the last attempt: the retry goes elsewhere when it can.
    avoid: Option<AgentId>,
    /// The agent and cause of the last infrastructure error, to see the same one again.
    last_infra: Option<(AgentId, String)>,
    /// The slot of its test group the current lease holds.
    group_slot: Option<u32>,
    /// A retry with a backoff waits in the queue until then (on the runtime's clock, which the
    /// scheduler's timers follow).
    not_before: Option<tokio::time::Instant>,
}

impl TestState {
    pub fn new(estimate: Duration, quarantined: bool) -> Self {
        TestState {
            estimate_us: u32::try_from(estimate.as_micros()).unwrap_or(u32::MAX),
            leased: 0,
            attempt: 1,
            outcome: None,
            quarantined,
            first_status: None,
            rare: None,
        }
    }

    pub fn attempt(&self) -> u32 {
        u32::from(self.attempt)
    }

    /// Sets the attempt number (saturating at 255, which no run's retries reach).
    pub fn set_attempt(&mut self, attempt: u32) {
        self.attempt = u8::try_from(attempt).unwrap_or(u8::MAX);
    }

    pub fn estimate(&self) -> Duration {
        Duration::from_micros(u64::from(self.estimate_us))
    }

    pub fn leased(&self) -> Option<LeaseId> {
        (self.leased != 0).then_some(LeaseId(self.leased))
    }

    pub fn set_leased(&mut self, lease: Option<LeaseId>) {
        debug_assert_ne!(lease, Some(LeaseId(0)), "lease ids are never 0");
        self.leased = lease.map_or(0, |l| l.0);
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Every attempt's status so far, oldest first.
    pub fn statuses(&self) -> &[AttemptStatus] {
        match (&self.rare, &self.first_status) {
            (Some(r), _) if !r.statuses.is_empty() => &r.statuses,
            (_, Some(first)) => std::slice::from_ref(first),
            _ => &[],
        }
    }

    pub fn push_status(&mut self, status: AttemptStatus) {
        match self.first_status {
            None => self.first_status = Some(status),
            Some(first) => {
                let rare = self.rare.get_or_insert_with(Box::default);
                if rare.statuses.is_empty() {
                    rare.statuses.push(first);
                }
                rare.statuses.push(status);
            }
        }
    }

    pub fn set_statuses(&mut self, statuses: Vec<AttemptStatus>) {
        self.first_status = statuses.first().copied();
        if statuses.len() > 1 {
            self.rare_mut().statuses = statuses;
        } else if let Some(r) = &mut self.rare {
            r.statuses.clear();
        }
    }

    pub fn avoid(&self) -> Option<&AgentId> {
        self.rare.as_ref().and_then(|r| r.avoid.as_ref())
    }

    pub fn set_avoid(&mut self, agent: Option<AgentId>) {
        if agent.is_some() || self.rare.is_some() {
            self.rare_mut().avoid = agent;
        }
    }

    pub fn last_infra(&self) -> Option<&(AgentId, String)> {
        self.rare.as_ref().and_then(|r| r.last_infra.as_ref())
    }

    pub fn set_last_infra(&mut self, infra: (AgentId, String)) {
        self.rare_mut().last_infra = Some(infra);
    }

    pub fn group_slot(&self) -> Option<u32> {
        self.rare.as_ref().and_then(|r| r.group_slot)
    }

    pub fn set_group_slot(&mut self, slot: u32) {
        self.rare_mut().group_slot = Some(slot);
    }

    pub fn take_group_slot(&mut self) -> Option<u32> {
        self.rare.as_mut().and_then(|r| r.group_slot.take())
    }

    pub fn not_before(&self) -> Option<tokio::time::Instant> {
        self.rare.as_ref().and_then(|r| r.not_before)
    }

    pub fn set_not_before(&mut self, at: tokio::time::Instant) {
        self.rare_mut().not_before = Some(at);
    }

    pub fn take_not_before(&mut self) -> Option<tokio::time::Instant> {
        self.rare.as_mut().and_then(|r| r.not_before.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_enough_for_millions() {
        // A coordinator holds one per test of every run in memory.
        assert!(std::mem::size_of::<TestState>() <= 24);
    }

    #[test]
    fn statuses_in_order_across_the_inline_and_the_rare() {
        let mut t = TestState::new(Duration::ZERO, false);
        assert!(t.statuses().is_empty());
        t.push_status(AttemptStatus::Failed);
        assert_eq!(t.statuses(), [AttemptStatus::Failed]);
        assert!(t.rare.is_none(), "a single attempt allocates nothing");
        t.push_status(AttemptStatus::InfraError);
        t.push_status(AttemptStatus::Passed);
        assert_eq!(
            t.statuses(),
            [
                AttemptStatus::Failed,
                AttemptStatus::InfraError,
                AttemptStatus::Passed
            ]
        );
        t.set_statuses(vec![AttemptStatus::Passed]);
        assert_eq!(t.statuses(), [AttemptStatus::Passed]);
        t.set_avoid(None);
        assert_eq!(t.avoid(), None);
    }
}
