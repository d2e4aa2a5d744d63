//! Per-test settings a suite's own runner configuration gives (cargo-nextest's profiles and
//! overrides): slots a test takes, the test group that bounds how many of its tests run at once
//! across the fleet, its retry policy, and its timeouts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What one test asks of the fleet beyond the run's defaults. Tests with the same settings share
/// one entry of [`crate::RunSpec::settings`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TestSettings {
    /// Slots the test takes on its agent; 0 takes all of them (nextest's `num-cpus` and
    /// `num-test-threads`). A test never asks for more than its agent has.
    pub threads_required: u32,
    /// Index into [`crate::RunSpec::test_groups`]: the group whose `max_threads` bounds how many of
    /// its tests run at once in the whole run; `None` is nextest's `@global`.
    pub test_group: Option<u32>,
    /// Replaces the run's retries for this test.
    pub retries: Option<RetryPolicy>,
    /// A flaky test (failed, then passed) counts as a failure (nextest's `flaky-result = "fail"`).
    pub flaky_fails: bool,
    /// Terminates the test after this long, instead of the run's timeout (`slow-timeout`'s
    /// `period` × `terminate-after`).
    pub timeout: Option<Duration>,
    /// Between the stop signal and SIGKILL at the timeout, instead of the run's (`grace-period`).
    pub kill_grace: Option<Duration>,
    /// The test is reported slow once it has run this long (`slow-timeout`'s `period`).
    pub slow_after: Option<Duration>,
    /// How long the test's leftover processes may hold its output open after it exits.
    pub leak_timeout: Option<LeakTimeout>,
}

impl Default for TestSettings {
    /// One slot, no group, the run's retries and timeouts.
    fn default() -> Self {
        TestSettings {
            threads_required: 1,
            test_group: None,
            retries: None,
            flaky_fails: false,
            timeout: None,
            kill_grace: None,
            slow_after: None,
            leak_timeout: None,
        }
    }
}

impl TestSettings {
    /// Slots the test takes on an agent with `slots` of them.
    pub fn slots_on(&self, slots: u32) -> u32 {
        match self.threads_required {
            0 => slots.max(1),
            n => n.min(slots.max(1)),
        }
    }

    /// Whether the test must run in a process of its own (never batched with others): its
    /// limits are its own.
    pub fn runs_alone(&self) -> bool {
        self.threads_required != 1
            || self.test_group.is_some()
            || self.timeout.is_some()
            || self.kill_grace.is_some()
            || self.leak_timeout.is_some()
    }
}

/// How a failed test is retried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub count: u32,
    /// Wait before the first retry.
    pub delay: Duration,
    /// Each later retry waits twice as long as the one before.
    pub exponential: bool,
    /// Each wait is shortened by a random share of up to half of it, so retries of many tests
    /// do not all come back at once.
    pub jitter: bool,
    /// No wait is longer than this.
    pub max_delay: Option<Duration>,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first), before jitter.
    pub fn delay_before(&self, retry: u32) -> Duration {
        let mut d = self.delay;
        if self.exponential {
            let doublings = retry.saturating_sub(1).min(32);
            d = d.saturating_mul(1u32 << doublings.min(31));
        }
        match self.max_delay {
            Some(max) => d.min(max),
            None => d,
        }
    }

    /// [`RetryPolicy::delay_before`] with jitter applied: `random` in [0, 1) takes up to half
    /// of the wait off.
    pub fn jittered(&self, retry: u32, random: f64) -> Duration {
        let d = self.delay_before(retry);
        if self.jitter {
            d.mul_f64(1.0 - 0.5 * random.clamp(0.0, 1.0))
        } else {
            d
        }
    }
}

/// What a test's processes may leave behind when it exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeakTimeout {
    /// How long after the test exits its output may stay open (held by processes it started).
    pub period: Duration,
    /// A test that leaks past the period fails (else it passes, with a note).
    pub fails: bool,
}

/// A named bound on how many of its tests run at once, fleet-wide (nextest's `[test-groups]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestGroup {
    pub name: String,
    pub max_threads: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_waits_double_up_to_their_cap_and_jitter_takes_at_most_half() {
        let p = RetryPolicy {
            count: 5,
            delay: Duration::from_secs(1),
            exponential: true,
            jitter: false,
            max_delay: Some(Duration::from_secs(5)),
        };
        let waits: Vec<u64> = (1..=5).map(|r| p.delay_before(r).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        let fixed = RetryPolicy {
            exponential: false,
            ..p
        };
        assert_eq!(fixed.delay_before(4), Duration::from_secs(1));
        let jittered = RetryPolicy { jitter: true, ..p };
        assert_eq!(jittered.jittered(2, 0.0), Duration::from_secs(2));
        assert_eq!(jittered.jittered(2, 0.999_999).as_millis(), 1000);
        assert_eq!(p.jittered(2, 0.9), Duration::from_secs(2));
    }

    #[test]
    fn a_test_never_takes_more_slots_than_its_agent_has() {
        let all = TestSettings {
            threads_required: 0,
            ..Default::default()
        };
        assert_eq!(all.slots_on(4), 4);
        let three = TestSettings {
            threads_required: 3,
            ..Default::default()
        };
        assert_eq!(three.slots_on(2), 2);
        assert_eq!(three.slots_on(8), 3);
        assert!(three.runs_alone());
        assert!(!TestSettings::default().runs_alone());
    }
}
