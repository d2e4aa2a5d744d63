//! Conversions of history query answers between model and wire. These come from the coordinator,
//! so wire → model is lenient only where proto3 leaves fields out.

use testfleet_model::report::{
    FailureClass, FailureKind, FlakyEvidence, FlakyTest, HistoryAttempt, QuarantineInfo, Slowdown,
    SuiteTiming, TestHistory, TestName, TestTiming, Timings,
};

use crate::convert::{attempt_status_from_wire, outcome_from_wire};
use crate::{ConvertError, pb};

fn name_to_wire(t: &TestName) -> Option<pb::TestName> {
    Some(pb::TestName {
        suite: t.suite.clone(),
        binary_id: t.binary_id.clone(),
        name: t.name.clone(),
    })
}

fn name_from_wire(t: Option<pb::TestName>) -> TestName {
    let t = t.unwrap_or_default();
    TestName {
        suite: t.suite,
        binary_id: t.binary_id,
        name: t.name,
    }
}

impl From<&FlakyTest> for pb::FlakyTest {
    fn from(f: &FlakyTest) -> Self {
        pb::FlakyTest {
            test: name_to_wire(&f.test),
            attempts: f.attempts,
            failures: f.failures,
            flaky_revisions: f.flaky_revisions,
            flip_rate: f.flip_rate,
            failure_probability: f.failure_probability,
            probability_low: f.probability_low,
            probability_high: f.probability_high,
            first_flaky_ms: f.first_flaky_ms,
            last_flaky_ms: f.last_flaky_ms,
            first_seen_ms: f.first_seen_ms,
            last_seen_ms: f.last_seen_ms,
            evidence: f
                .evidence
                .iter()
                .map(|e| pb::FlakyEvidence {
                    run_id: e.run_id,
                    attempt: e.attempt,
                    revision: e.revision.clone(),
                    agent_id: e.agent_id.clone(),
                    failed: e.failed,
                })
                .collect(),
            quarantined: f.quarantined,
            excluded: f.excluded,
        }
    }
}

impl From<pb::FlakyTest> for FlakyTest {
    fn from(f: pb::FlakyTest) -> Self {
        FlakyTest {
            test: name_from_wire(f.test),
            attempts: f.attempts,
            failures: f.failures,
            flaky_revisions: f.flaky_revisions,
            flip_rate: f.flip_rate,
            failure_probability: f.failure_probability,
            probability_low: f.probability_low,
            probability_high: f.probability_high,
            first_flaky_ms: f.first_flaky_ms,
            last_flaky_ms: f.last_flaky_ms,
            first_seen_ms: f.first_seen_ms,
            last_seen_ms: f.last_seen_ms,
            evidence: f
                .evidence
                .into_iter()
                .map(|e| FlakyEvidence {
                    run_id: e.run_id,
                    attempt: e.attempt,
                    revision: e.revision,
                    agent_id: e.agent_id,
                    failed: e.failed,
                })
                .collect(),
            quarantined: f.quarantined,
            excluded: f.excluded,
        }
    }
}

impl From<&Timings> for pb::Timings {
    fn from(t: &Timings) -> Self {
        pb::Timings {
            tests: t
                .tests
                .iter()
                .map(|t| pb::TestTiming {
                    test: name_to_wire(&t.test),
                    samples: t.samples,
                    p50_ms: t.p50_ms,
                    p95_ms: t.p95_ms,
                    p99_ms: t.p99_ms,
                    slowdown: t.slowdown.as_ref().map(|s| pb::Slowdown {
                        baseline_ms: s.baseline_ms,
                        recent_ms: s.recent_ms,
                    }),
                })
                .collect(),
            suites: t
                .suites
                .iter()
                .map(|s| pb::SuiteTiming {
                    suite: s.suite.clone(),
                    tests: s.tests,
                    p50_ms: s.p50_ms,
                    p95_ms: s.p95_ms,
                    p99_ms: s.p99_ms,
                    total_p50_ms: s.total_p50_ms,
                })
                .collect(),
        }
    }
}

impl From<pb::Timings> for Timings {
    fn from(t: pb::Timings) -> Self {
        Timings {
            tests: t
                .tests
                .into_iter()
                .map(|t| TestTiming {
                    test: name_from_wire(t.test),
                    samples: t.samples,
                    p50_ms: t.p50_ms,
                    p95_ms: t.p95_ms,
                    p99_ms: t.p99_ms,
                    slowdown: t.slowdown.map(|s| Slowdown {
                        baseline_ms: s.baseline_ms,
                        recent_ms: s.recent_ms,
                    }),
                })
                .collect(),
            suites: t
                .suites
                .into_iter()
                .map(|s| SuiteTiming {
                    suite: s.suite,
                    tests: s.tests,
                    p50_ms: s.p50_ms,
                    p95_ms: s.p95_ms,
                    p99_ms: s.p99_ms,
                    total_p50_ms: s.total_p50_ms,
                })
                .collect(),
        }
    }
}

impl From<&QuarantineInfo> for pb::QuarantineInfo {
    fn from(q: &QuarantineInfo) -> Self {
        pb::QuarantineInfo {
            test: Some(pb::TestName {
                suite: q.suite.clone(),
                binary_id: q.binary_id.clone(),
                name: q.name.clone(),
            }),
            since_ms: q.since_ms,
            by: q.by.clone(),
            reason: q.reason.clone(),
            clean_streak: q.clean_streak,
        }
    }
}

impl From<pb::QuarantineInfo> for QuarantineInfo {
    fn from(q: pb::QuarantineInfo) -> Self {
        let t = name_from_wire(q.test);
        QuarantineInfo {
            suite: t.suite,
            binary_id: t.binary_id,
            name: t.name,
            since_ms: q.since_ms,
            by: q.by,
            reason: q.reason,
            clean_streak: q.clean_streak,
        }
    }
}

impl From<&TestHistory> for pb::TestHistory {
    fn from(h: &TestHistory) -> Self {
        pb::TestHistory {
            test: name_to_wire(&h.test),
            runs: h.runs,
            attempts: h.attempts,
            failures: h.failures,
            last_outcome: h.last_outcome.map(|o| pb::Outcome::from(o) as i32),
            p50_ms: h.p50_ms,
            p95_ms: h.p95_ms,
            p99_ms: h.p99_ms,
            flaky: h.flaky.as_ref().map(Into::into),
            quarantine: h.quarantine.as_ref().map(Into::into),
            log: h
                .log
                .iter()
                .map(|a| pb::HistoryAttempt {
                    run_id: a.run_id,
                    attempt: a.attempt,
                    revision: a.revision.clone(),
                    status: pb::AttemptStatus::from(a.status) as i32,
                    duration_ms: a.duration_ms,
                    agent_id: a.agent_id.clone(),
                    at_unix_ms: a.at_unix_ms,
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::TestHistory> for TestHistory {
    type Error = ConvertError;
    fn try_from(h: pb::TestHistory) -> Result<Self, ConvertError> {
        Ok(TestHistory {
            test: name_from_wire(h.test),
            runs: h.runs,
            attempts: h.attempts,
            failures: h.failures,
            last_outcome: h.last_outcome.map(outcome_from_wire).transpose()?,
            p50_ms: h.p50_ms,
            p95_ms: h.p95_ms,
            p99_ms: h.p99_ms,
            flaky: h.flaky.map(Into::into),
            quarantine: h.quarantine.map(Into::into),
            log: h
                .log
                .into_iter()
                .map(|a| {
                    Ok(HistoryAttempt {
                        run_id: a.run_id,
                        attempt: a.attempt,
                        revision: a.revision,
                        status: attempt_status_from_wire(a.status)?,
                        duration_ms: a.duration_ms,
                        agent_id: a.agent_id,
                        at_unix_ms: a.at_unix_ms,
                    })
                })
                .collect::<Result<_, ConvertError>>()?,
        })
    }
}

impl From<&FailureClass> for pb::FailureClass {
    fn from(c: &FailureClass) -> Self {
        use pb::failure_class::Kind;
        let (kind, branch, run_id) = match &c.kind {
            FailureKind::New => (Kind::New, String::new(), String::new()),
            FailureKind::Flaky => (Kind::Flaky, String::new(), String::new()),
            FailureKind::Quarantined => (Kind::Quarantined, String::new(), String::new()),
            FailureKind::FailingOnDefault { branch, run_id } => {
                (Kind::FailingOnDefault, branch.clone(), run_id.to_string())
            }
        };
        pb::FailureClass {
            binary_id: c.binary_id.clone(),
            name: c.name.clone(),
            kind: kind.into(),
            branch,
            run_id,
        }
    }
}

/// An unknown kind (a newer coordinator's) reads as no class at all.
impl TryFrom<pb::FailureClass> for FailureClass {
    type Error = ConvertError;
    fn try_from(c: pb::FailureClass) -> Result<Self, ConvertError> {
        use pb::failure_class::Kind;
        let kind = match Kind::try_from(c.kind) {
            Ok(Kind::New) => FailureKind::New,
            Ok(Kind::Flaky) => FailureKind::Flaky,
            Ok(Kind::Quarantined) => FailureKind::Quarantined,
            Ok(Kind::FailingOnDefault) => FailureKind::FailingOnDefault {
                run_id: c
                    .run_id
                    .parse()
                    .map_err(|_| ConvertError::new("failure class", "a bad run id"))?,
                branch: c.branch,
            },
            _ => {
                return Err(ConvertError::new(
                    "failure class",
                    format!("unknown kind {}", c.kind),
                ));
            }
        };
        Ok(FailureClass {
            binary_id: c.binary_id,
            name: c.name,
            kind,
        })
    }
}
