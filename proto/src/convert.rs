//! Conversions between wire types and model types. Wire → model is `TryFrom` and rejects anything the
//! model would not allow, with a message saying what was wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use testfleet_model::{
    AttemptResult, AttemptStatus, Binary, CaseName, EventKind, NoticeLevel, OriginTree, Outcome,
    QuarantinePolicy, RunEvent, RunId, RunSpec, RunState, RunSummary, Runner, ServiceSpec,
    ServiceTiming, TestFinished, TestRef, TestSpec,
};

use crate::pb;

#[derive(Debug, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConvertError {
    pub field: &'static str,
    pub reason: String,
}

impl ConvertError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConvertError {
            field,
            reason: reason.into(),
        }
    }
}

impl From<ConvertError> for tonic::Status {
    fn from(e: ConvertError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

pub(crate) fn required<T>(v: Option<T>, field: &'static str) -> Result<T, ConvertError> {
    v.ok_or_else(|| ConvertError::new(field, "missing"))
}

pub fn parse_run_id(s: &str) -> Result<RunId, ConvertError> {
    s.parse()
        .map_err(|e: testfleet_model::IdError| ConvertError::new("run_id", e.to_string()))
}

// --- run specs --------------------------------------------------------------------------------

/// By value: a lease's binaries are moved onto the wire, not copied again.
impl From<Binary> for pb::Binary {
    fn from(b: Binary) -> Self {
        pb::Binary {
            runner: b.runner.kind().to_owned(),
            runner_args: match b.runner {
                Runner::Libtest => vec![],
                Runner::Junit { args, .. } => args,
            },
            binary_id: b.binary_id.to_string(),
            path: b.path,
            cwd: b.cwd,
            env: b.env.into_iter().collect(),
            services: b.services,
            path_env: b.path_env.into_iter().collect(),
            library_path: b.library_path,
        }
    }
}

impl From<&Binary> for pb::Binary {
    fn from(b: &Binary) -> Self {
        b.clone().into()
    }
}

impl From<&OriginTree> for pb::OriginTree {
    fn from(o: &OriginTree) -> Self {
        pb::OriginTree {
            bundle_dir: o.bundle_dir.clone(),
            path: o.path.clone(),
        }
    }
}

impl From<pb::OriginTree> for OriginTree {
    fn from(o: pb::OriginTree) -> Self {
        OriginTree {
            bundle_dir: o.bundle_dir,
            path: o.path,
        }
    }
}

impl TryFrom<pb::Binary> for Binary {
    type Error = ConvertError;
    fn try_from(b: pb::Binary) -> Result<Self, ConvertError> {
        let runner = Runner::from_kind(&b.runner, b.runner_args)
            .map_err(|e| ConvertError::new("binary.runner", e))?;
        Ok(Binary {
            binary_id: b.binary_id.into(),
            path: b.path,
            cwd: b.cwd,
            env: b.env.into_iter().collect(),
            services: b.services,
            runner,
            path_env: b.path_env.into_iter().collect(),
            library_path: b.library_path,
        })
    }
}

impl From<&RunSpec> for pb::RunSpec {
    fn from(s: &RunSpec) -> Self {
        pb::RunSpec {
            suite: s.suite.clone(),
            binaries: s.binaries.iter().map(Into::into).collect(),
            tests: s
                .tests
                .iter()
                .map(|t| pb::TestSpec {
                    binary: t.binary,
                    name: t.name.to_string(),
                    ignored: t.ignored(),
                    group: t.group().unwrap_or_default().to_owned(),
                    shares: t.shares().unwrap_or_default().to_owned(),
                    settings: t.settings(),
                })
                .collect::<Vec<_>>()
                // Built in place over the decoded message's vector, which grew by doubling: a
                // coordinator holds a million tests' specs, and the slack would be a third more.
                .into_boxed_slice()
                .into_vec(),
            retries: s.retries,
            test_timeout_ms: s.test_timeout.as_millis() as u64,
            kill_grace_ms: s.kill_grace.as_millis() as u64,
            output_cap_bytes: s.output_cap_bytes,
            bundle_digest: s.bundle_digest.clone().unwrap_or_default(),
            revision: s.revision.clone(),
            branch: s.branch.clone(),
            services: s.services.iter().map(Into::into).collect(),
            workspace: s.workspace.clone(),
            quarantine: Some(pb::QuarantinePolicy {
                auto: s.quarantine.auto,
                release_after: s.quarantine.release_after,
            }),
            tests_per_process: s.tests_per_process,
            origin: s.origin.iter().map(Into::into).collect(),
            pass_env: s.pass_env.clone(),
            settings: s.settings.iter().map(Into::into).collect(),
            test_groups: s.test_groups.iter().map(Into::into).collect(),
        }
    }
}

/// Converts and validates: a spec that comes out of here is one the coordinator can run.
impl TryFrom<pb::RunSpec> for RunSpec {
    type Error = ConvertError;
    fn try_from(s: pb::RunSpec) -> Result<Self, ConvertError> {
        let spec = RunSpec {
            suite: s.suite,
            binaries: s
                .binaries
                .into_iter()
                .map(Binary::try_from)
                .collect::<Result<_, _>>()?,
            tests: s
                .tests
                .into_iter()
                .map(|t| {
                    let mut spec = TestSpec::new(t.binary, t.name, t.ignored).with_mates(
                        Some(t.group).filter(|g| !g.is_empty()),
                        Some(t.shares).filter(|s| !s.is_empty()),
                    );
                    spec.set_settings(t.settings);
                    spec
                })
                .collect::<Vec<_>>()
                // Built in place over the decoded message's vector, which grew by doubling: a
                // coordinator holds a million tests' specs, and the slack would be a third more.
                .into_boxed_slice()
                .into_vec(),
            retries: s.retries,
            test_timeout: Duration::from_millis(s.test_timeout_ms),
            kill_grace: Duration::from_millis(s.kill_grace_ms),
            output_cap_bytes: s.output_cap_bytes,
            bundle_digest: Some(s.bundle_digest).filter(|d| !d.is_empty()),
            revision: s.revision,
            branch: s.branch,
            services: s
                .services
                .into_iter()
                .map(ServiceSpec::try_from)
                .collect::<Result<_, _>>()?,
            workspace: s.workspace,
            quarantine: s
                .quarantine
                .map(|q| QuarantinePolicy {
                    auto: q.auto,
                    release_after: q.release_after,
                })
                .unwrap_or_default(),
            // Older clients do not send it: a process per test.
            tests_per_process: s.tests_per_process.max(1),
            origin: s.origin.into_iter().map(Into::into).collect(),
            pass_env: s.pass_env,
            settings: s.settings.into_iter().map(Into::into).collect(),
            test_groups: s.test_groups.into_iter().map(Into::into).collect(),
        };
        spec.validate()
            .map_err(|e| ConvertError::new("run spec", e.to_string()))?;
        Ok(spec)
    }
}

// --- outcomes ---------------------------------------------------------------------------------

impl From<AttemptStatus> for pb::AttemptStatus {
    fn from(s: AttemptStatus) -> Self {
        match s {
            AttemptStatus::Passed => pb::AttemptStatus::Passed,
            AttemptStatus::Failed => pb::AttemptStatus::Failed,
            AttemptStatus::TimedOut => pb::AttemptStatus::TimedOut,
            AttemptStatus::InfraError => pb::AttemptStatus::InfraError,
            AttemptStatus::Skipped => pb::AttemptStatus::Skipped,
        }
    }
}

pub(crate) fn attempt_status_from_wire(v: i32) -> Result<AttemptStatus, ConvertError> {
    {
        match pb::AttemptStatus::try_from(v) {
            Ok(pb::AttemptStatus::Passed) => Ok(AttemptStatus::Passed),
            Ok(pb::AttemptStatus::Failed) => Ok(AttemptStatus::Failed),
            Ok(pb::AttemptStatus::TimedOut) => Ok(AttemptStatus::TimedOut),
            Ok(pb::AttemptStatus::InfraError) => Ok(AttemptStatus::InfraError),
            Ok(pb::AttemptStatus::Skipped) => Ok(AttemptStatus::Skipped),
            _ => Err(ConvertError::new(
                "attempt status",
                format!("unknown value {v}"),
            )),
        }
    }
}

impl From<Outcome> for pb::Outcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Passed => pb::Outcome::Passed,
            Outcome::Failed => pb::Outcome::Failed,
            Outcome::Flaky => pb::Outcome::Flaky,
            Outcome::TimedOut => pb::Outcome::TimedOut,
            Outcome::Skipped => pb::Outcome::Skipped,
            Outcome::InfraError => pb::Outcome::InfraError,
            Outcome::Cancelled => pb::Outcome::Cancelled,
        }
    }
}

pub fn outcome_from_wire(v: i32) -> Result<Outcome, ConvertError> {
    Ok(match pb::Outcome::try_from(v) {
        Ok(pb::Outcome::Passed) => Outcome::Passed,
        Ok(pb::Outcome::Failed) => Outcome::Failed,
        Ok(pb::Outcome::Flaky) => Outcome::Flaky,
        Ok(pb::Outcome::TimedOut) => Outcome::TimedOut,
        Ok(pb::Outcome::Skipped) => Outcome::Skipped,
        Ok(pb::Outcome::InfraError) => Outcome::InfraError,
        Ok(pb::Outcome::Cancelled) => Outcome::Cancelled,
        _ => return Err(ConvertError::new("outcome", format!("unknown value {v}"))),
    })
}

impl From<&AttemptResult> for pb::AttemptResult {
    fn from(r: &AttemptResult) -> Self {
        pb::AttemptResult {
            status: pb::AttemptStatus::from(r.status) as i32,
            duration_ms: r.duration.as_millis() as u64,
            exit_code: r.exit_code,
            signal: r.signal,
            output: r.output.clone(),
            output_omitted_bytes: r.output_omitted_bytes,
            message: r.message.clone(),
            case: r.case.as_ref().map(|c| pb::CaseName {
                classname: c.classname.clone(),
                name: c.name.clone(),
            }),
        }
    }
}

impl TryFrom<pb::AttemptResult> for AttemptResult {
    type Error = ConvertError;
    fn try_from(r: pb::AttemptResult) -> Result<Self, ConvertError> {
        Ok(AttemptResult {
            status: attempt_status_from_wire(r.status)?,
            duration: Duration::from_millis(r.duration_ms),
            exit_code: r.exit_code,
            signal: r.signal,
            output: r.output,
            output_omitted_bytes: r.output_omitted_bytes,
            message: r.message,
            case: r.case.map(|c| CaseName {
                classname: c.classname,
                name: c.name,
            }),
        })
    }
}

// --- events -----------------------------------------------------------------------------------

impl From<RunState> for pb::RunState {
    fn from(s: RunState) -> Self {
        match s {
            RunState::Running => pb::RunState::Running,
            RunState::Finished => pb::RunState::Finished,
            RunState::Cancelled => pb::RunState::Cancelled,
        }
    }
}

pub fn run_state_from_wire(v: i32) -> Result<RunState, ConvertError> {
    match pb::RunState::try_from(v) {
        Ok(pb::RunState::Running) => Ok(RunState::Running),
        Ok(pb::RunState::Finished) => Ok(RunState::Finished),
        Ok(pb::RunState::Cancelled) => Ok(RunState::Cancelled),
        _ => Err(ConvertError::new("run state", format!("unknown value {v}"))),
    }
}

fn timings_to_wire(
    m: &BTreeMap<String, ServiceTiming>,
) -> std::collections::HashMap<String, pb::ServiceTiming> {
    m.iter()
        .map(|(k, t)| {
            let t = pb::ServiceTiming {
                count: t.count,
                total_ms: t.total_ms,
                max_ms: t.max_ms,
            };
            (k.clone(), t)
        })
        .collect()
}

fn timings_from_wire(
    m: std::collections::HashMap<String, pb::ServiceTiming>,
) -> BTreeMap<String, ServiceTiming> {
    m.into_iter()
        .map(|(k, t)| {
            let t = ServiceTiming {
                count: t.count,
                total_ms: t.total_ms,
                max_ms: t.max_ms,
            };
            (k, t)
        })
        .collect()
}

impl From<&RunSummary> for pb::RunSummary {
    fn from(s: &RunSummary) -> Self {
        pb::RunSummary {
            passed: s.passed,
            failed: s.failed,
            flaky: s.flaky,
            timed_out: s.timed_out,
            skipped: s.skipped,
            infra_errors: s.infra_errors,
            cancelled: s.cancelled,
            wall_ms: s.wall_ms,
            attempts_per_agent: s.attempts_per_agent.clone().into_iter().collect(),
            service_starts: timings_to_wire(&s.service_starts),
            quarantined: s.quarantined,
            busy_ms: s.busy_ms,
            longest_ms: s.longest_ms,
            slots: s.slots,
            image_pulls: timings_to_wire(&s.image_pulls),
        }
    }
}

impl From<pb::RunSummary> for RunSummary {
    fn from(s: pb::RunSummary) -> Self {
        RunSummary {
            passed: s.passed,
            failed: s.failed,
            flaky: s.flaky,
            timed_out: s.timed_out,
            skipped: s.skipped,
            infra_errors: s.infra_errors,
            cancelled: s.cancelled,
            wall_ms: s.wall_ms,
            attempts_per_agent: s.attempts_per_agent.into_iter().collect::<BTreeMap<_, _>>(),
            service_starts: timings_from_wire(s.service_starts),
            quarantined: s.quarantined,
            busy_ms: s.busy_ms,
            longest_ms: s.longest_ms,
            slots: s.slots,
            image_pulls: timings_from_wire(s.image_pulls),
        }
    }
}

impl From<&TestRef> for pb::TestRef {
    fn from(t: &TestRef) -> Self {
        pb::TestRef {
            index: t.index,
            binary_id: t.binary_id.to_string(),
            name: t.name.to_string(),
        }
    }
}

impl From<pb::TestRef> for TestRef {
    fn from(t: pb::TestRef) -> Self {
        TestRef {
            index: t.index,
            binary_id: t.binary_id.into(),
            name: t.name.into(),
        }
    }
}

impl From<&TestFinished> for pb::TestFinishedEvent {
    fn from(f: &TestFinished) -> Self {
        pb::TestFinishedEvent {
            test: Some((&f.test).into()),
            attempt: f.attempt,
            agent_id: f.agent_id.clone(),
            result: Some((&f.result).into()),
            final_outcome: f.final_outcome.map(|o| pb::Outcome::from(o) as i32),
            lease_id: f.lease_id,
            quarantined: f.quarantined,
        }
    }
}

impl TryFrom<pb::TestFinishedEvent> for TestFinished {
    type Error = ConvertError;
    fn try_from(f: pb::TestFinishedEvent) -> Result<Self, ConvertError> {
        Ok(TestFinished {
            test: required(f.test, "test")?.into(),
            attempt: f.attempt,
            agent_id: f.agent_id,
            result: required(f.result, "result")?.try_into()?,
            final_outcome: f.final_outcome.map(outcome_from_wire).transpose()?,
            lease_id: f.lease_id,
            quarantined: f.quarantined,
        })
    }
}

impl From<&RunEvent> for pb::RunEvent {
    fn from(e: &RunEvent) -> Self {
        use pb::run_event::Kind;
        let kind = match &e.kind {
            EventKind::RunStarted {
                suite,
                total_tests,
                skipped,
                quarantined,
            } => Kind::RunStarted(pb::RunStarted {
                suite: suite.clone(),
                total_tests: *total_tests,
                skipped: skipped.len() as u32,
                skipped_tests: skipped.iter().map(Into::into).collect(),
                quarantined_tests: quarantined.iter().map(Into::into).collect(),
            }),
            EventKind::TestStarted {
                test,
                attempt,
                agent_id,
            } => Kind::TestStarted(pb::TestStartedEvent {
                test: Some(test.into()),
                attempt: *attempt,
                agent_id: agent_id.clone(),
            }),
            EventKind::TestFinished(f) => Kind::TestFinished(f.into()),
            EventKind::LeaseFinished {
                lease_id,
                agent_id,
                tests,
                failed,
            } => Kind::LeaseFinished(pb::LeaseFinishedEvent {
                lease_id: *lease_id,
                agent_id: agent_id.clone(),
                tests: *tests,
                failed: *failed,
            }),
            EventKind::RunFinished { summary, state } => Kind::RunFinished(pb::RunFinished {
                summary: Some(summary.into()),
                state: pb::RunState::from(*state) as i32,
            }),
            EventKind::Notice { level, message } => Kind::Notice(pb::Notice {
                level: match level {
                    NoticeLevel::Info => pb::notice::Level::Info,
                    NoticeLevel::Warning => pb::notice::Level::Warning,
                    NoticeLevel::Error => pb::notice::Level::Error,
                } as i32,
                message: message.clone(),
            }),
            EventKind::ServiceStarted {
                agent_id,
                service,
                scope,
                duration_ms,
                container_id,
            } => Kind::ServiceStarted(pb::ServiceStartedEvent {
                agent_id: agent_id.clone(),
                service: service.clone(),
                scope: pb::Scope::from(*scope) as i32,
                duration_ms: *duration_ms,
                container_id: container_id.clone(),
            }),
            EventKind::ImagePulled {
                agent_id,
                image,
                registry,
                duration_ms,
                error,
            } => Kind::ImagePulled(pb::ImagePulledEvent {
                agent_id: agent_id.clone(),
                image: image.clone(),
                registry: registry.clone(),
                duration_ms: *duration_ms,
                error: error.clone().unwrap_or_default(),
            }),
        };
        pb::RunEvent {
            seq: e.seq,
            run_id: e.run_id.to_string(),
            at_unix_ms: e.at_unix_ms,
            kind: Some(kind),
        }
    }
}

impl TryFrom<pb::RunEvent> for RunEvent {
    type Error = ConvertError;
    fn try_from(e: pb::RunEvent) -> Result<Self, ConvertError> {
        use pb::run_event::Kind;
        let kind = match required(e.kind, "event kind")? {
            Kind::RunStarted(s) => EventKind::RunStarted {
                suite: s.suite,
                total_tests: s.total_tests,
                skipped: s.skipped_tests.into_iter().map(Into::into).collect(),
                quarantined: s.quarantined_tests.into_iter().map(Into::into).collect(),
            },
            Kind::TestStarted(s) => EventKind::TestStarted {
                test: required(s.test, "test")?.into(),
                attempt: s.attempt,
                agent_id: s.agent_id,
            },
            Kind::TestFinished(f) => EventKind::TestFinished(f.try_into()?),
            Kind::LeaseFinished(l) => EventKind::LeaseFinished {
                lease_id: l.lease_id,
                agent_id: l.agent_id,
                tests: l.tests,
                failed: l.failed,
            },
            Kind::RunFinished(f) => EventKind::RunFinished {
                summary: required(f.summary, "summary")?.into(),
                state: run_state_from_wire(f.state)?,
            },
            Kind::Notice(n) => EventKind::Notice {
                level: match pb::notice::Level::try_from(n.level) {
                    Ok(pb::notice::Level::Warning) => NoticeLevel::Warning,
                    Ok(pb::notice::Level::Error) => NoticeLevel::Error,
                    _ => NoticeLevel::Info,
                },
                message: n.message,
            },
            Kind::ServiceStarted(s) => EventKind::ServiceStarted {
                agent_id: s.agent_id,
                service: s.service,
                scope: crate::services::scope_from_wire(s.scope)?,
                duration_ms: s.duration_ms,
                container_id: s.container_id,
            },
            Kind::ImagePulled(p) => EventKind::ImagePulled {
                agent_id: p.agent_id,
                image: p.image,
                registry: p.registry,
                duration_ms: p.duration_ms,
                error: (!p.error.is_empty()).then_some(p.error),
            },
        };
        Ok(RunEvent {
            seq: e.seq,
            run_id: parse_run_id(&e.run_id)?,
            at_unix_ms: e.at_unix_ms,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> AttemptResult {
        AttemptResult {
            status: AttemptStatus::TimedOut,
            duration: Duration::from_millis(1500),
            exit_code: None,
            signal: Some(9),
            output: b"partial".to_vec(),
            output_omitted_bytes: 10,
            message: "timed out".into(),
            case: None,
        }
    }

    #[test]
    fn events_round_trip_through_the_wire() {
        let test = TestRef {
            index: 2,
            binary_id: "b".into(),
            name: "t".into(),
        };
        let kinds = vec![
            EventKind::RunStarted {
                suite: "s".into(),
                total_tests: 3,
                skipped: vec![test.clone()],
                quarantined: vec![test.clone()],
            },
            EventKind::TestStarted {
                test: test.clone(),
                attempt: 1,
                agent_id: "a".into(),
            },
            EventKind::TestFinished(TestFinished {
                test,
                attempt: 2,
                agent_id: "a".into(),
                result: result(),
                final_outcome: Some(Outcome::TimedOut),
                lease_id: Some(4),
                quarantined: true,
            }),
            EventKind::LeaseFinished {
                lease_id: 4,
                agent_id: "a".into(),
                tests: 3,
                failed: 1,
            },
            EventKind::RunFinished {
                summary: RunSummary {
                    passed: 1,
                    attempts_per_agent: [("a".to_string(), 2)].into(),
                    quarantined: 1,
                    busy_ms: 10,
                    longest_ms: 7,
                    slots: 3,
                    image_pulls: [(
                        "db:1".to_string(),
                        ServiceTiming {
                            count: 1,
                            total_ms: 80,
                            max_ms: 80,
                        },
                    )]
                    .into(),
                    ..Default::default()
                },
                state: RunState::Finished,
            },
            EventKind::Notice {
                level: NoticeLevel::Warning,
                message: "m".into(),
            },
            EventKind::ServiceStarted {
                agent_id: "a".into(),
                service: "db".into(),
                scope: testfleet_model::Scope::Lease,
                duration_ms: 321,
                container_id: "c0ffee".into(),
            },
            EventKind::ImagePulled {
                agent_id: "a".into(),
                image: "127.0.0.1:5000/db:1".into(),
                registry: "127.0.0.1:5000".into(),
                duration_ms: 80,
                error: None,
            },
            EventKind::ImagePulled {
                agent_id: "a".into(),
                image: "db:2".into(),
                registry: "docker.io".into(),
                duration_ms: 3,
                error: Some("manifest unknown".into()),
            },
        ];
        for (seq, kind) in kinds.into_iter().enumerate() {
            let e = RunEvent {
                seq: seq as u64,
                run_id: RunId(9),
                at_unix_ms: 5,
                kind,
            };
            let back = RunEvent::try_from(pb::RunEvent::from(&e)).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn garbage_on_the_wire_is_rejected_with_a_reason() {
        let mut r = pb::AttemptResult::from(&result());
        r.status = 99;
        let err = AttemptResult::try_from(r).unwrap_err();
        assert_eq!(err.to_string(), "invalid attempt status: unknown value 99");

        let err = RunSpec::try_from(pb::RunSpec::default()).unwrap_err();
        assert_eq!(err.to_string(), "invalid run spec: the run has no test");

        let err = testfleet_model::AttemptKey::try_from(pb::AttemptKey {
            run_id: "x".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("lease"), "{err}");
    }
}
