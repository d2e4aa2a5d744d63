//! Conversions of the agent session's messages (`testfleet_model::session`) from and to the wire:
//! the only place either end of a session meets a wire type.

use std::time::Duration;

use testfleet_model::session::{
    AgentMessage, CoordinatorMessage, GroupSlot, Hello, ImagePulled, Lease, LeasedTest,
    ServiceStarted, WorkRequest,
};
use testfleet_model::{AttemptKey, Binary, IdError, LeaseId, RunId, ServiceSpec, TestSettings};

use crate::convert::{parse_run_id, required};
use crate::services::scope_from_wire;
use crate::{ConvertError, pb};

/// Images of an agent's hello the coordinator keeps; more are left out (a CI agent holds tens).
pub const MAX_HELLO_IMAGES: usize = 4096;

fn parse_lease_id(s: &str) -> Result<LeaseId, ConvertError> {
    s.parse()
        .map_err(|e: IdError| ConvertError::new("lease_id", e.to_string()))
}

impl From<AttemptKey> for pb::AttemptKey {
    fn from(k: AttemptKey) -> Self {
        pb::AttemptKey {
            run_id: k.run_id.to_string(),
            test_index: k.test_index,
            attempt: k.attempt,
            lease_id: k.lease_id.to_string(),
        }
    }
}

impl TryFrom<pb::AttemptKey> for AttemptKey {
    type Error = ConvertError;
    fn try_from(k: pb::AttemptKey) -> Result<Self, ConvertError> {
        let lease_id = parse_lease_id(&k.lease_id)?;
        Ok(AttemptKey {
            run_id: parse_run_id(&k.run_id)?,
            test_index: k.test_index,
            attempt: k.attempt,
            lease_id,
        })
    }
}

fn key_from_wire(k: Option<pb::AttemptKey>) -> Result<AttemptKey, ConvertError> {
    required(k, "key")?.try_into()
}

// --- from the agent ---------------------------------------------------------------------------

impl From<Hello> for pb::Hello {
    fn from(h: Hello) -> Self {
        pb::Hello {
            agent_id: h.agent_id.to_string(),
            slots: h.slots,
            labels: h.labels,
            docker_available: h.docker_available,
            version: h.version,
            docker_status: h.docker_status,
            held_leases: h.held_leases.iter().map(ToString::to_string).collect(),
            sandbox_status: h.sandbox_status,
            images: h.images,
        }
    }
}

impl TryFrom<pb::Hello> for Hello {
    type Error = ConvertError;
    fn try_from(h: pb::Hello) -> Result<Self, ConvertError> {
        Ok(Hello {
            agent_id: h
                .agent_id
                .parse()
                .map_err(|e: IdError| ConvertError::new("agent_id", e.to_string()))?,
            slots: h.slots,
            labels: h.labels,
            docker_available: h.docker_available,
            version: h.version,
            docker_status: h.docker_status,
            sandbox_status: h.sandbox_status,
            // A lease id that does not parse is one no coordinator handed out: left out.
            held_leases: h
                .held_leases
                .iter()
                .filter_map(|l| l.parse().ok())
                .collect(),
            // Bounded, so that a hello cannot make the coordinator hold an engine's catalogue.
            images: h.images.into_iter().take(MAX_HELLO_IMAGES).collect(),
        })
    }
}

impl From<AgentMessage> for pb::AgentMessage {
    fn from(m: AgentMessage) -> Self {
        use pb::agent_message::Kind;
        let kind = match m {
            AgentMessage::Hello(h) => Kind::Hello(h.into()),
            AgentMessage::Heartbeat => Kind::Heartbeat(pb::Heartbeat {}),
            AgentMessage::WorkRequest(w) => Kind::WorkRequest(pb::WorkRequest {
                free_slots: w.free_slots,
                queue_slots: w.queue_slots,
            }),
            AgentMessage::TestStarted(key) => Kind::TestStarted(pb::TestStarted {
                key: Some(key.into()),
            }),
            AgentMessage::TestFinished(key, result) => Kind::TestFinished(pb::TestFinished {
                key: Some(key.into()),
                result: Some((&result).into()),
            }),
            AgentMessage::ServiceStarted(s) => Kind::ServiceStarted(pb::ServiceStarted {
                run_id: s.run_id.to_string(),
                lease_id: s.lease_id.to_string(),
                service: s.service,
                scope: pb::Scope::from(s.scope) as i32,
                duration_ms: s.duration_ms,
                container_id: s.container_id,
                fingerprint: s.fingerprint,
            }),
            AgentMessage::ImagePulled(p) => Kind::ImagePulled(pb::ImagePulled {
                run_id: p.run_id.to_string(),
                lease_id: p.lease_id.to_string(),
                image: p.image,
                registry: p.registry,
                duration_ms: p.duration_ms,
                error: p.error.unwrap_or_default(),
            }),
            AgentMessage::LeaseReleased { lease_id, indices } => {
                Kind::LeaseReleased(pb::LeaseReleased {
                    lease_id: lease_id.to_string(),
                    test_indices: indices,
                })
            }
        };
        pb::AgentMessage { kind: Some(kind) }
    }
}

impl TryFrom<pb::AgentMessage> for AgentMessage {
    type Error = ConvertError;
    fn try_from(m: pb::AgentMessage) -> Result<Self, ConvertError> {
        use pb::agent_message::Kind;
        Ok(match required(m.kind, "kind")? {
            Kind::Hello(h) => AgentMessage::Hello(h.try_into()?),
            Kind::Heartbeat(_) => AgentMessage::Heartbeat,
            Kind::WorkRequest(w) => AgentMessage::WorkRequest(WorkRequest {
                free_slots: w.free_slots,
                queue_slots: w.queue_slots,
            }),
            Kind::TestStarted(s) => AgentMessage::TestStarted(key_from_wire(s.key)?),
            Kind::TestFinished(f) => AgentMessage::TestFinished(
                key_from_wire(f.key)?,
                required(f.result, "result")?.try_into()?,
            ),
            Kind::ServiceStarted(s) => AgentMessage::ServiceStarted(ServiceStarted {
                run_id: parse_run_id(&s.run_id)?,
                lease_id: parse_lease_id(&s.lease_id)?,
                service: s.service,
                scope: scope_from_wire(s.scope)?,
                duration_ms: s.duration_ms,
                container_id: s.container_id,
                fingerprint: s.fingerprint,
            }),
            Kind::ImagePulled(p) => AgentMessage::ImagePulled(ImagePulled {
                run_id: parse_run_id(&p.run_id)?,
                lease_id: parse_lease_id(&p.lease_id)?,
                image: p.image,
                registry: p.registry,
                duration_ms: p.duration_ms,
                error: (!p.error.is_empty()).then_some(p.error),
            }),
            Kind::LeaseReleased(r) => AgentMessage::LeaseReleased {
                lease_id: parse_lease_id(&r.lease_id)?,
                indices: r.test_indices,
            },
        })
    }
}

// --- from the coordinator ---------------------------------------------------------------------

/// By value: the gateway makes each lease for the wire and moves it there.
impl From<Lease> for pb::Lease {
    fn from(l: Lease) -> Self {
        pb::Lease {
            lease_id: l.lease_id.to_string(),
            run_id: l.run_id.to_string(),
            bundle_digest: l.bundle_digest.unwrap_or_default(),
            tests: l
                .tests
                .into_iter()
                .map(|t| pb::LeasedTest {
                    index: t.index,
                    attempt: t.attempt,
                    name: t.name,
                    binary: Some(t.binary.into()),
                    group: t.group.unwrap_or_default(),
                    settings: (t.settings != TestSettings::default()).then(|| (&t.settings).into()),
                    test_group: t
                        .test_group
                        .as_ref()
                        .map(|g| g.name.clone())
                        .unwrap_or_default(),
                    group_slot: t.test_group.as_ref().map_or(0, |g| g.slot),
                })
                .collect(),
            test_timeout_ms: l.test_timeout.as_millis() as u64,
            kill_grace_ms: l.kill_grace.as_millis() as u64,
            output_cap_bytes: l.output_cap_bytes,
            services: l.services.iter().map(Into::into).collect(),
            workspace: l.workspace,
            tests_per_process: l.tests_per_process,
            traceparent: l.traceparent,
            origin: l.origin.iter().map(Into::into).collect(),
            pass_env: l.pass_env,
        }
    }
}

/// Why a lease could not be read. When its ids could, the agent still knows which attempts it was
/// given, and ends each of them with the reason (rather than leaving them to time out).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Invalid(#[from] ConvertError),
    #[error("lease {lease_id} cannot be read: {error}")]
    Unreadable {
        lease_id: LeaseId,
        keys: Vec<AttemptKey>,
        error: ConvertError,
    },
}

impl TryFrom<pb::Lease> for Lease {
    type Error = LeaseError;
    fn try_from(l: pb::Lease) -> Result<Self, LeaseError> {
        let lease_id = parse_lease_id(&l.lease_id)?;
        let run_id: RunId = parse_run_id(&l.run_id)?;
        let keys = l
            .tests
            .iter()
            .map(|t| AttemptKey {
                run_id,
                test_index: t.index,
                attempt: t.attempt,
                lease_id,
            })
            .collect();
        let rest = || -> Result<(Vec<LeasedTest>, Vec<ServiceSpec>), ConvertError> {
            let tests = l
                .tests
                .iter()
                .map(|t| {
                    Ok(LeasedTest {
                        index: t.index,
                        attempt: t.attempt,
                        name: t.name.clone(),
                        binary: Binary::try_from(required(t.binary.clone(), "binary")?)?,
                        group: Some(t.group.clone()).filter(|g| !g.is_empty()),
                        settings: t.settings.map(Into::into).unwrap_or_default(),
                        test_group: (!t.test_group.is_empty()).then(|| GroupSlot {
                            name: t.test_group.clone(),
                            slot: t.group_slot,
                        }),
                    })
                })
                .collect::<Result<_, ConvertError>>()?;
            let services = l
                .services
                .iter()
                .cloned()
                .map(ServiceSpec::try_from)
                .collect::<Result<_, _>>()?;
            Ok((tests, services))
        };
        let (tests, services) = rest().map_err(|error| LeaseError::Unreadable {
            lease_id,
            keys,
            error,
        })?;
        Ok(Lease {
            lease_id,
            run_id,
            bundle_digest: Some(l.bundle_digest).filter(|d| !d.is_empty()),
            tests,
            test_timeout: Duration::from_millis(l.test_timeout_ms),
            kill_grace: Duration::from_millis(l.kill_grace_ms),
            output_cap_bytes: l.output_cap_bytes,
            services,
            workspace: l.workspace,
            tests_per_process: l.tests_per_process.max(1),
            traceparent: l.traceparent,
            origin: l.origin.into_iter().map(Into::into).collect(),
            pass_env: l.pass_env,
        })
    }
}

impl From<CoordinatorMessage> for pb::CoordinatorMessage {
    fn from(c: CoordinatorMessage) -> Self {
        use pb::coordinator_message::Kind;
        let kind = match c {
            CoordinatorMessage::Welcome {
                agent_id,
                heartbeat_interval,
            } => Kind::Welcome(pb::Welcome {
                agent_id: agent_id.to_string(),
                heartbeat_interval_ms: heartbeat_interval.as_millis() as u64,
            }),
            CoordinatorMessage::Lease(l) => Kind::Lease(l.into()),
            CoordinatorMessage::CancelLease(id) => Kind::CancelLease(pb::CancelLease {
                lease_id: id.to_string(),
            }),
            CoordinatorMessage::Ack(key) => Kind::Ack(pb::Ack {
                key: Some(key.into()),
            }),
        };
        pb::CoordinatorMessage { kind: Some(kind) }
    }
}

/// A message from the coordinator, as an agent reads it; `None` for kinds this agent does not act
/// on (an empty message, or `Drain`, which coordinators do not send yet).
pub fn coordinator_message_from_wire(
    m: pb::CoordinatorMessage,
) -> Result<Option<CoordinatorMessage>, LeaseError> {
    use pb::coordinator_message::Kind;
    Ok(Some(match m.kind {
        None | Some(Kind::Drain(_)) => return Ok(None),
        Some(Kind::Welcome(w)) => CoordinatorMessage::Welcome {
            agent_id: w
                .agent_id
                .parse()
                .map_err(|e: IdError| ConvertError::new("agent_id", e.to_string()))?,
            heartbeat_interval: Duration::from_millis(w.heartbeat_interval_ms),
        },
        Some(Kind::Lease(l)) => CoordinatorMessage::Lease(l.try_into()?),
        Some(Kind::CancelLease(c)) => CoordinatorMessage::CancelLease(parse_lease_id(&c.lease_id)?),
        Some(Kind::Ack(a)) => CoordinatorMessage::Ack(key_from_wire(a.key)?),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use testfleet_model::{AttemptResult, Runner, Scope};

    use super::*;

    fn key() -> AttemptKey {
        AttemptKey {
            run_id: RunId(3),
            test_index: 7,
            attempt: 2,
            lease_id: LeaseId(11),
        }
    }

    fn lease() -> Lease {
        Lease {
            lease_id: LeaseId(11),
            run_id: RunId(3),
            bundle_digest: Some("ab".into()),
            tests: vec![LeasedTest {
                index: 7,
                attempt: 2,
                name: "t".into(),
                binary: Binary {
                    binary_id: "b".into(),
                    path: "target/b".into(),
                    cwd: "ws".into(),
                    env: Default::default(),
                    services: vec![],
                    runner: Runner::Libtest,
                    path_env: Default::default(),
                    library_path: vec![],
                },
                group: Some("g".into()),
                settings: TestSettings {
                    threads_required: 2,
                    ..Default::default()
                },
                test_group: Some(GroupSlot {
                    name: "serial".into(),
                    slot: 0,
                }),
            }],
            test_timeout: Duration::from_secs(3),
            kill_grace: Duration::from_millis(500),
            output_cap_bytes: 4096,
            services: vec![],
            workspace: "ws".into(),
            tests_per_process: 4,
            traceparent: String::new(),
            origin: vec![],
            pass_env: vec!["X_*".into()],
        }
    }

    #[test]
    fn every_agent_message_comes_back_as_it_was_sent() {
        let messages = [
            AgentMessage::Hello(Hello {
                agent_id: "a1".parse().unwrap(),
                slots: 2,
                labels: HashMap::from([("k".into(), "v".into())]),
                docker_available: true,
                version: "1".into(),
                docker_status: String::new(),
                sandbox_status: "no".into(),
                held_leases: vec![LeaseId(4)],
                images: vec!["postgres:16".into()],
            }),
            AgentMessage::Heartbeat,
            AgentMessage::WorkRequest(WorkRequest {
                free_slots: 1,
                queue_slots: 2,
            }),
            AgentMessage::TestStarted(key()),
            AgentMessage::TestFinished(key(), AttemptResult::infra_error("why")),
            AgentMessage::ServiceStarted(ServiceStarted {
                run_id: RunId(3),
                lease_id: LeaseId(11),
                service: "pg".into(),
                scope: Scope::Lease,
                duration_ms: 9,
                container_id: "c".into(),
                fingerprint: "f".into(),
            }),
            AgentMessage::ImagePulled(ImagePulled {
                run_id: RunId(3),
                lease_id: LeaseId(11),
                image: "127.0.0.1:5000/team/db:1".into(),
                registry: "127.0.0.1:5000".into(),
                duration_ms: 40,
                error: None,
            }),
            AgentMessage::ImagePulled(ImagePulled {
                run_id: RunId(3),
                lease_id: LeaseId(12),
                image: "db:2".into(),
                registry: "docker.io".into(),
                duration_ms: 7,
                error: Some("manifest unknown".into()),
            }),
            AgentMessage::LeaseReleased {
                lease_id: LeaseId(11),
                indices: vec![1, 2],
            },
        ];
        for m in messages {
            let wire = pb::AgentMessage::from(m.clone());
            assert_eq!(AgentMessage::try_from(wire).unwrap(), m);
        }
    }

    #[test]
    fn every_coordinator_message_comes_back_as_it_was_sent() {
        let messages = [
            CoordinatorMessage::Welcome {
                agent_id: "a1".parse().unwrap(),
                heartbeat_interval: Duration::from_secs(5),
            },
            CoordinatorMessage::Lease(lease()),
            CoordinatorMessage::CancelLease(LeaseId(4)),
            CoordinatorMessage::Ack(key()),
        ];
        for m in messages {
            let wire = pb::CoordinatorMessage::from(m.clone());
            assert_eq!(coordinator_message_from_wire(wire).unwrap(), Some(m));
        }
    }

    #[test]
    fn a_bad_attempt_key_names_the_field() {
        let mut wire = pb::AttemptKey::from(key());
        wire.lease_id = "x".into();
        let err = AttemptKey::try_from(wire).unwrap_err();
        assert_eq!(err.field, "lease_id");
    }

    #[test]
    fn a_lease_with_an_unknown_runner_still_names_its_attempts() {
        let mut wire = pb::Lease::from(lease());
        wire.tests[0].binary.as_mut().unwrap().runner = "mystery".into();
        match Lease::try_from(wire) {
            Err(LeaseError::Unreadable { lease_id, keys, .. }) => {
                assert_eq!(lease_id, LeaseId(11));
                assert_eq!(keys, vec![key()]);
            }
            other => panic!("expected an unreadable lease, got {other:?}"),
        }
    }
}
