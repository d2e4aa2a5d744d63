//! What one attempt of a test did, what a test's final outcome is, and the rule that decides between
//! retrying and settling. The rule is pure so that the scheduler and the tests share one truth.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    Passed,
    Failed,
    TimedOut,
    /// The agent could not run the test at all (missing binary, bad bundle, lost agent).
    InfraError,
    /// The test skipped itself when it ran (pytest's `skip` and `skipif`, an expected failure that
    /// failed: `xfail`; a tool's JUnit `<skipped>`): neither a pass nor a failure.
    Skipped,
}

impl AttemptStatus {
    pub const ALL: [AttemptStatus; 5] = [
        AttemptStatus::Passed,
        AttemptStatus::Failed,
        AttemptStatus::TimedOut,
        AttemptStatus::InfraError,
        AttemptStatus::Skipped,
    ];

    /// The status as JSON reports, metrics and spans spell it (`timed_out`).
    pub fn label(self) -> &'static str {
        match self {
            AttemptStatus::Passed => "passed",
            AttemptStatus::Failed => "failed",
            AttemptStatus::TimedOut => "timed_out",
            AttemptStatus::InfraError => "infra_error",
            AttemptStatus::Skipped => "skipped",
        }
    }

    /// Whether the attempt's duration says how long the test takes: a test that skipped itself
    /// or never ran says nothing of it.
    pub fn is_timed_run(self) -> bool {
        matches!(
            self,
            AttemptStatus::Passed | AttemptStatus::Failed | AttemptStatus::TimedOut
        )
    }

    /// Whether the attempt passed or skipped itself: what no reporter prints the output of, and
    /// what a watcher may ask to get without it.
    pub fn is_pass_or_skip(self) -> bool {
        matches!(self, AttemptStatus::Passed | AttemptStatus::Skipped)
    }

    /// Whether this attempt counts against the test (infrastructure errors never do).
    pub fn is_test_failure(self) -> bool {
        matches!(self, AttemptStatus::Failed | AttemptStatus::TimedOut)
    }
}

/// A test's final outcome in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    /// Failed at least once, then passed.
    Flaky,
    TimedOut,
    /// Ignored by the test binary and never run, or skipped by the test itself when it ran.
    Skipped,
    /// Could not be run because of the infrastructure, after bounded retries.
    InfraError,
    /// The run was cancelled before the test settled.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Passed,
        Outcome::Failed,
        Outcome::Flaky,
        Outcome::TimedOut,
        Outcome::Skipped,
        Outcome::InfraError,
        Outcome::Cancelled,
    ];

    /// The outcome as JSON reports, metrics and the dashboard spell it (`timed_out`); people
    /// read [`Outcome::as_str`] (`timed out`).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Flaky => "flaky",
            Outcome::TimedOut => "timed_out",
            Outcome::Skipped => "skipped",
            Outcome::InfraError => "infra_error",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// Whether this outcome makes the run fail.
    pub fn fails_run(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::TimedOut)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Flaky => "flaky",
            Outcome::TimedOut => "timed out",
            Outcome::Skipped => "skipped",
            Outcome::InfraError => "infra error",
            Outcome::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything an agent reports about one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptResult {
    pub status: AttemptStatus,
    #[serde(with = "duration_ms")]
    pub duration: Duration,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Interleaved stdout and stderr; head and tail kept when over the cap. In JSON it is a string
    /// (invalid UTF-8 replaced), which is what every consumer of JSON output wants.
    #[serde(with = "lossy_utf8")]
    pub output: Vec<u8>,
    /// Bytes dropped from the middle of `output`.
    pub output_omitted_bytes: u64,
    /// Why it ended this way, in words.
    pub message: String,
    /// The case that reported it in its tool's own JUnit (a `command` suite's), so testfleet's
    /// JUnit can name it as the tool does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<CaseName>,
}

/// A JUnit case's own names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseName {
    pub classname: String,
    pub name: String,
}

impl AttemptResult {
    pub fn infra_error(message: impl Into<String>) -> Self {
        AttemptResult {
            status: AttemptStatus::InfraError,
            duration: Duration::ZERO,
            exit_code: None,
            signal: None,
            output: Vec::new(),
            output_omitted_bytes: 0,
            message: message.into(),
            case: None,
        }
    }
}

mod lossy_utf8 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        String::deserialize(d).map(String::into_bytes)
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// What the scheduler does after an attempt ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Run the test again. `counts_as_attempt` is false for infrastructure errors, whose retry reuses
    /// the attempt number so that the test sees the same `TESTFLEET_ATTEMPT`.
    Retry {
        counts_as_attempt: bool,
    },
    Settle(Outcome),
}

/// Infrastructure errors a single test may hit before it is settled as such.
pub const MAX_INFRA_RETRIES: usize = 3;

/// Decides after the last entry of `statuses` (all attempts so far, oldest first).
///
/// A pass settles the test (flaky when any earlier attempt failed); a failure is retried until
/// `1 + retries` real attempts were made; infrastructure errors are retried up to
/// [`MAX_INFRA_RETRIES`] times and never count as attempts. A skip settles the test as skipped,
/// unless an earlier attempt failed: a test that failed and never passed has failed.
pub fn decide_after_attempt(statuses: &[AttemptStatus], retries: u32) -> RetryDecision {
    let Some(&last) = statuses.last() else {
        return RetryDecision::Retry {
            counts_as_attempt: false,
        };
    };
    let failures = statuses.iter().filter(|s| s.is_test_failure()).count();
    let real_attempts = failures
        + statuses
            .iter()
            .filter(|s| **s == AttemptStatus::Passed)
            .count();
    match last {
        AttemptStatus::Passed if failures > 0 => RetryDecision::Settle(Outcome::Flaky),
        AttemptStatus::Passed => RetryDecision::Settle(Outcome::Passed),
        AttemptStatus::Failed | AttemptStatus::TimedOut => {
            if real_attempts < 1 + retries as usize {
                RetryDecision::Retry {
                    counts_as_attempt: true,
                }
            } else if last == AttemptStatus::TimedOut {
                RetryDecision::Settle(Outcome::TimedOut)
            } else {
                RetryDecision::Settle(Outcome::Failed)
            }
        }
        AttemptStatus::Skipped if failures > 0 => RetryDecision::Settle(Outcome::Failed),
        AttemptStatus::Skipped => RetryDecision::Settle(Outcome::Skipped),
        AttemptStatus::InfraError => {
            let infra = statuses.len() - real_attempts;
            if infra <= MAX_INFRA_RETRIES {
                RetryDecision::Retry {
                    counts_as_attempt: false,
                }
            } else {
                RetryDecision::Settle(Outcome::InfraError)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AttemptStatus::*;
    use super::*;

    fn settle(o: Outcome) -> RetryDecision {
        RetryDecision::Settle(o)
    }
    const RETRY: RetryDecision = RetryDecision::Retry {
        counts_as_attempt: true,
    };
    const INFRA_RETRY: RetryDecision = RetryDecision::Retry {
        counts_as_attempt: false,
    };

    #[test]
    fn pass_settles_and_fail_then_pass_is_flaky() {
        assert_eq!(decide_after_attempt(&[Passed], 0), settle(Outcome::Passed));
        assert_eq!(
            decide_after_attempt(&[Failed, Passed], 2),
            settle(Outcome::Flaky)
        );
        assert_eq!(
            decide_after_attempt(&[TimedOut, Passed], 1),
            settle(Outcome::Flaky)
        );
    }

    #[test]
    fn failures_retry_until_the_budget_is_spent() {
        assert_eq!(decide_after_attempt(&[Failed], 0), settle(Outcome::Failed));
        assert_eq!(decide_after_attempt(&[Failed], 2), RETRY);
        assert_eq!(decide_after_attempt(&[Failed, Failed], 2), RETRY);
        assert_eq!(
            decide_after_attempt(&[Failed, Failed, Failed], 2),
            settle(Outcome::Failed)
        );
        assert_eq!(
            decide_after_attempt(&[Failed, TimedOut], 1),
            settle(Outcome::TimedOut)
        );
    }

    #[test]
    fn infra_errors_are_bounded_and_never_count_as_attempts() {
        assert_eq!(decide_after_attempt(&[InfraError], 0), INFRA_RETRY);
        assert_eq!(decide_after_attempt(&[InfraError, Failed], 1), RETRY);
        assert_eq!(
            decide_after_attempt(&[InfraError, Passed], 0),
            settle(Outcome::Passed)
        );
        let many = [InfraError; MAX_INFRA_RETRIES + 1];
        assert_eq!(decide_after_attempt(&many, 5), settle(Outcome::InfraError));
        assert_eq!(
            decide_after_attempt(&many[..MAX_INFRA_RETRIES], 0),
            INFRA_RETRY
        );
    }

    #[test]
    fn a_skip_settles_as_skipped_unless_the_test_failed_before() {
        assert_eq!(
            decide_after_attempt(&[Skipped], 2),
            settle(Outcome::Skipped)
        );
        assert_eq!(
            decide_after_attempt(&[InfraError, Skipped], 2),
            settle(Outcome::Skipped)
        );
        assert_eq!(
            decide_after_attempt(&[Failed, Skipped], 2),
            settle(Outcome::Failed)
        );
        assert!(!Skipped.is_test_failure() && !Skipped.is_timed_run());
    }

    #[test]
    fn labels_are_the_json_names() {
        for o in Outcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.label());
        }
        for s in AttemptStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.label());
        }
    }

    #[test]
    fn only_failed_and_timed_out_fail_a_run() {
        let failing: Vec<Outcome> = Outcome::ALL.into_iter().filter(|o| o.fails_run()).collect();
        assert_eq!(failing, vec![Outcome::Failed, Outcome::TimedOut]);
    }
}
