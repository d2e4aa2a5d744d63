//! What history queries answer: flaky tests with their evidence, durations, a test's attempt log,
//! quarantine entries and runs. These are the shapes of `--json` output.

use serde::{Deserialize, Serialize};

use crate::{AttemptStatus, Outcome, RunState, RunSummary};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestName {
    pub suite: String,
    pub binary_id: String,
    pub name: String,
}

/// An attempt on a revision where the test both passed and failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlakyEvidence {
    pub run_id: u64,
    pub attempt: u32,
    pub revision: String,
    pub agent_id: String,
    pub failed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlakyTest {
    #[serde(flatten)]
    pub test: TestName,
    pub attempts: u64,
    pub failures: u64,
    /// Revisions (in the kept window) on which it both passed and failed.
    pub flaky_revisions: u32,
    /// Exponentially decayed rate of outcome flips between consecutive attempts.
    pub flip_rate: f64,
    /// Failure probability on code where it also passes, with its 95% Wilson interval.
    pub failure_probability: f64,
    pub probability_low: f64,
    pub probability_high: f64,
    pub first_flaky_ms: Option<u64>,
    pub last_flaky_ms: Option<u64>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub evidence: Vec<FlakyEvidence>,
    pub quarantined: bool,
    /// Attempts left out because their lease failed almost as a whole.
    pub excluded: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slowdown {
    pub baseline_ms: u64,
    pub recent_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestTiming {
    #[serde(flatten)]
    pub test: TestName,
    /// Passing durations the percentiles are computed over.
    pub samples: u32,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub slowdown: Option<Slowdown>,
}

/// Durations across a suite: percentiles of its tests' p50s, and what one pass of it costs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuiteTiming {
    pub suite: String,
    pub tests: u32,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    /// Sum of the tests' p50: the suite's serial cost.
    pub total_p50_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub tests: Vec<TestTiming>,
    pub suites: Vec<SuiteTiming>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryAttempt {
    pub run_id: u64,
    pub attempt: u32,
    pub revision: String,
    pub status: AttemptStatus,
    pub duration_ms: u64,
    pub agent_id: String,
    pub at_unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestHistory {
    #[serde(flatten)]
    pub test: TestName,
    pub runs: u64,
    pub attempts: u64,
    pub failures: u64,
    pub last_outcome: Option<Outcome>,
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    /// Set when the test is flaky.
    pub flaky: Option<FlakyTest>,
    pub quarantine: Option<QuarantineInfo>,
    /// Oldest first.
    pub log: Vec<HistoryAttempt>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineInfo {
    pub suite: String,
    pub binary_id: String,
    pub name: String,
    pub since_ms: u64,
    /// `manual` or `auto`.
    pub by: String,
    pub reason: String,
    pub clean_streak: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOverview {
    pub run_id: u64,
    pub suite: String,
    pub revision: String,
    pub branch: String,
    pub created_unix_ms: u64,
    pub state: RunState,
    pub total_tests: u32,
    pub summary: Option<RunSummary>,
}

/// What history says of a test that failed a run, for the run's summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FailureKind {
    /// Nothing in history explains it: most likely the change under test.
    New,
    /// The test is known to be flaky (it passed and failed on one revision before).
    Flaky,
    /// The test is quarantined: its failure does not fail the run.
    Quarantined,
    /// It failed too in the last run on the default branch that ran it.
    FailingOnDefault { branch: String, run_id: u64 },
}

/// One failed test of a run and what history says of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureClass {
    pub binary_id: String,
    pub name: String,
    pub kind: FailureKind,
}
