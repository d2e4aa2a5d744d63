//! Run events: everything the scheduler does comes out as one of these, numbered per run, and every
//! consumer (history writer, watch streams, reporters) reads only these.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{AttemptResult, Outcome, RunId, Scope};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRef {
    pub index: u32,
    /// Shared with the run's spec, as is `name`: every event of a test names it without a copy.
    pub binary_id: Arc<str>,
    pub name: Arc<str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Finished,
    Cancelled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeLevel {
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub passed: u32,
    pub failed: u32,
    pub flaky: u32,
    pub timed_out: u32,
    pub skipped: u32,
    pub infra_errors: u32,
    pub cancelled: u32,
    pub wall_ms: u64,
    pub attempts_per_agent: BTreeMap<String, u32>,
    /// Container starts per service, apart from test time.
    #[serde(default)]
    pub service_starts: BTreeMap<String, ServiceTiming>,
    /// Quarantined tests that failed or timed out: recorded, but they do not fail the run.
    #[serde(default)]
    pub quarantined: u32,
    /// Sum of the test attempts' durations, the longest one, and the most slots connected: the
    /// schedule's lower bound is `max(busy / slots, longest)`.
    #[serde(default)]
    pub busy_ms: u64,
    #[serde(default)]
    pub longest_ms: u64,
    #[serde(default)]
    pub slots: u32,
    /// Image pulls per image, apart from the containers' starts (failed pulls are not timed).
    #[serde(default)]
    pub image_pulls: BTreeMap<String, ServiceTiming>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTiming {
    pub count: u32,
    pub total_ms: u64,
    pub max_ms: u64,
}

impl ServiceTiming {
    pub fn add(&mut self, ms: u64) {
        self.count += 1;
        self.total_ms += ms;
        self.max_ms = self.max_ms.max(ms);
    }
}

impl RunSummary {
    pub fn record(&mut self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Passed => &mut self.passed,
            Outcome::Failed => &mut self.failed,
            Outcome::Flaky => &mut self.flaky,
            Outcome::TimedOut => &mut self.timed_out,
            Outcome::Skipped => &mut self.skipped,
            Outcome::InfraError => &mut self.infra_errors,
            Outcome::Cancelled => &mut self.cancelled,
        };
        *slot += 1;
    }

    /// No schedule on these slots could finish sooner: `max(Σ durations / slots, longest test)`.
    pub fn lower_bound_ms(&self) -> u64 {
        (self.busy_ms / u64::from(self.slots.max(1))).max(self.longest_ms)
    }

    pub fn total(&self) -> u32 {
        self.quarantined
            + self.passed
            + self.failed
            + self.flaky
            + self.timed_out
            + self.skipped
            + self.infra_errors
            + self.cancelled
    }

    /// The exit code a run with this summary ends with (see [`crate::exit_code`]).
    pub fn exit_code(&self) -> i32 {
        if self.failed > 0 || self.timed_out > 0 {
            crate::exit_code::TESTS_FAILED
        } else if self.infra_errors > 0 || self.cancelled > 0 {
            crate::exit_code::RUN_INCOMPLETE
        } else {
            crate::exit_code::SUCCESS
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        suite: String,
        total_tests: u32,
        skipped: Vec<TestRef>,
        /// Tests in quarantine: they run and are recorded, but their failures do not fail the run.
        #[serde(default)]
        quarantined: Vec<TestRef>,
    },
    TestStarted {
        test: TestRef,
        attempt: u32,
        agent_id: String,
    },
    TestFinished(TestFinished),
    /// Every test of a lease reported; `failed` of them failed or timed out.
    LeaseFinished {
        lease_id: u64,
        agent_id: String,
        tests: u32,
        failed: u32,
    },
    RunFinished {
        summary: RunSummary,
        state: RunState,
    },
    Notice {
        level: NoticeLevel,
        message: String,
    },
    /// An agent started a service's container (reuses are not reported).
    ServiceStarted {
        agent_id: String,
        service: String,
        scope: Scope,
        duration_ms: u64,
        container_id: String,
    },
    /// An agent pulled an image for the run, or failed to (`error`).
    ImagePulled {
        agent_id: String,
        image: String,
        registry: String,
        duration_ms: u64,
        error: Option<String>,
    },
}

/// An attempt's result as the run recorded it: what the history writer stores, the reporters
/// print and the wire carries, passed whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestFinished {
    pub test: TestRef,
    pub attempt: u32,
    pub agent_id: String,
    pub result: AttemptResult,
    /// Set when this attempt settled the test; `None` when a retry follows.
    pub final_outcome: Option<Outcome>,
    /// The lease the attempt ran in (`None` for tests settled without running).
    #[serde(default)]
    pub lease_id: Option<u64>,
    #[serde(default)]
    pub quarantined: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvent {
    /// Position in the run's event log, from 0; `WatchRun` resumes from it.
    pub seq: u64,
    pub run_id: RunId,
    pub at_unix_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl RunEvent {
    /// Whether this is the result of an attempt that passed or skipped itself: one whose output
    /// a watcher may ask not to get.
    pub fn is_passing_result(&self) -> bool {
        matches!(&self.kind, EventKind::TestFinished(f) if f.result.status.is_pass_or_skip())
    }

    /// A copy of a [passing result](Self::is_passing_result) without its output (`None` for any
    /// other event, or a result without output), made without copying the output.
    pub fn copy_without_passing_output(&mut self) -> Option<RunEvent> {
        let EventKind::TestFinished(f) = &mut self.kind else {
            return None;
        };
        if !f.result.status.is_pass_or_skip() || f.result.output.is_empty() {
            return None;
        }
        let output = std::mem::take(&mut f.result.output);
        let copy = self.clone();
        if let EventKind::TestFinished(f) = &mut self.kind {
            f.result.output = output;
        }
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AttemptStatus;

    #[test]
    fn exit_code_prefers_test_failures_over_incompleteness() {
        let mut s = RunSummary::default();
        s.record(Outcome::Passed);
        s.record(Outcome::Flaky);
        s.record(Outcome::Skipped);
        assert_eq!(s.exit_code(), crate::exit_code::SUCCESS);
        s.record(Outcome::InfraError);
        assert_eq!(s.exit_code(), crate::exit_code::RUN_INCOMPLETE);
        s.record(Outcome::TimedOut);
        assert_eq!(s.exit_code(), crate::exit_code::TESTS_FAILED);
        assert_eq!(s.total(), 5);
    }

    fn result_event(status: AttemptStatus, output: &[u8]) -> RunEvent {
        RunEvent {
            seq: 9,
            run_id: RunId(2),
            at_unix_ms: 5,
            kind: EventKind::TestFinished(TestFinished {
                test: TestRef {
                    index: 1,
                    binary_id: "b".into(),
                    name: "t".into(),
                },
                attempt: 1,
                agent_id: "a".into(),
                result: AttemptResult {
                    status,
                    output: output.to_vec(),
                    ..AttemptResult::infra_error("why")
                },
                final_outcome: Some(Outcome::Passed),
                lease_id: Some(4),
                quarantined: false,
            }),
        }
    }

    /// Passes and skips lose their output in the copy, and only there; failures, results
    /// without output and other events are not copied.
    #[test]
    fn a_copy_without_passing_output_leaves_the_event_whole() {
        for status in [AttemptStatus::Passed, AttemptStatus::Skipped] {
            let mut e = result_event(status, b"noise");
            let copy = e.copy_without_passing_output().expect("a passing output");
            assert_eq!(e, result_event(status, b"noise"));
            assert_eq!(copy, result_event(status, b""));
        }
        for status in [
            AttemptStatus::Failed,
            AttemptStatus::TimedOut,
            AttemptStatus::InfraError,
        ] {
            assert!(
                result_event(status, b"why")
                    .copy_without_passing_output()
                    .is_none()
            );
        }
        assert!(
            result_event(AttemptStatus::Passed, b"")
                .copy_without_passing_output()
                .is_none()
        );
    }

    #[test]
    fn events_serialize_as_tagged_json_lines() {
        let e = RunEvent {
            seq: 3,
            run_id: RunId(7),
            at_unix_ms: 1,
            kind: EventKind::Notice {
                level: NoticeLevel::Info,
                message: "hi".into(),
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"seq":3,"run_id":7,"at_unix_ms":1,"type":"notice","level":"info","message":"hi"}"#
        );
        assert_eq!(serde_json::from_str::<RunEvent>(&json).unwrap(), e);
    }
}
