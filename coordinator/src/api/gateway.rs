//! The `AgentGateway` service: one long-lived session per agent. The first message must be `Hello`;
//! after that, messages are converted and handed to the scheduler, and the scheduler's commands are
//! converted back onto the response stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use testfleet_model::AgentId;
use testfleet_proto::pb::agent_gateway_server::AgentGateway;
use testfleet_proto::{ConvertError, parse_attempt_key, pb};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::limits::{Limit, Limits, exceeded};
use crate::scheduler::{AgentCommand, AgentHello, Command, FromAgent, LeaseGrant, SchedulerHandle};

/// An agent that connects must say hello within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_SLOTS: u32 = 4096;

pub struct Gateway {
    pub(crate) scheduler: SchedulerHandle,
    pub(crate) next_conn: AtomicU64,
    /// One permit per open agent session (the agent-connections limit), held as long as the
    /// session lasts; the same mechanism as the concurrent-runs limit.
    pub(crate) sessions: Arc<tokio::sync::Semaphore>,
    pub(crate) limits: Limits,
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

fn hello_from_wire(h: pb::Hello) -> Result<AgentHello, Status> {
    let agent_id: AgentId = h
        .agent_id
        .parse()
        .map_err(|e: testfleet_model::IdError| Status::invalid_argument(e.to_string()))?;
    if h.slots == 0 || h.slots > MAX_SLOTS {
        return Err(Status::invalid_argument(format!(
            "agent {agent_id} offers {} slots; between 1 and {MAX_SLOTS} are allowed",
            h.slots
        )));
    }
    Ok(AgentHello {
        agent_id,
        slots: h.slots,
        labels: h.labels,
        docker_available: h.docker_available,
        version: h.version,
        docker_status: h.docker_status,
        sandbox_status: h.sandbox_status,
        // A lease id it cannot parse is one this coordinator never handed out: ignored.
        held_leases: h
            .held_leases
            .iter()
            .filter_map(|l| l.parse().ok())
            .collect(),
    })
}

/// Cuts a result's output to what the coordinator keeps at most, whatever the agent sent.
fn bounded(mut result: testfleet_model::AttemptResult, max: u64) -> testfleet_model::AttemptResult {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if result.output.len() > max {
        result.output.truncate(max);
        result.output.extend_from_slice(
            format!("\n[output cut by the coordinator at {max} bytes: --max-output-bytes]\n")
                .as_bytes(),
        );
    }
    result
}

fn message_from_wire(
    m: pb::AgentMessage,
    limits: &Limits,
) -> Result<Option<FromAgent>, ConvertError> {
    use pb::agent_message::Kind;
    Ok(Some(match m.kind {
        None | Some(Kind::Hello(_)) => return Ok(None),
        Some(Kind::Heartbeat(_)) => FromAgent::Heartbeat,
        Some(Kind::WorkRequest(w)) => FromAgent::WorkRequest {
            free_slots: w.free_slots,
            queue_slots: w.queue_slots,
        },
        Some(Kind::TestStarted(s)) => {
            let (run_id, index, attempt, lease_id) = parse_attempt_key(s.key)?;
            FromAgent::Started {
                run_id,
                index,
                attempt,
                lease_id,
            }
        }
        Some(Kind::TestFinished(f)) => {
            let (run_id, index, attempt, lease_id) = parse_attempt_key(f.key)?;
            let result = f
                .result
                .ok_or_else(|| ConvertError {
                    field: "result",
                    reason: "missing".into(),
                })?
                .try_into()?;
            FromAgent::Finished {
                run_id,
                index,
                attempt,
                lease_id,
                result: bounded(result, limits.max_output_bytes),
            }
        }
        Some(Kind::ServiceStarted(s)) => FromAgent::ServiceStarted {
            run_id: testfleet_proto::parse_run_id(&s.run_id)?,
            service: s.service,
            scope: testfleet_proto::scope_from_wire(s.scope)?,
            duration_ms: s.duration_ms,
            container_id: s.container_id,
            fingerprint: s.fingerprint,
        },
        Some(Kind::LeaseReleased(r)) => FromAgent::LeaseReleased {
            lease_id: r
                .lease_id
                .parse()
                .map_err(|e: testfleet_model::IdError| ConvertError {
                    field: "lease_id",
                    reason: e.to_string(),
                })?,
            indices: r.test_indices,
        },
    }))
}

fn lease_to_wire(g: &LeaseGrant) -> pb::Lease {
    let spec = &g.spec;
    pb::Lease {
        lease_id: g.lease_id.to_string(),
        run_id: g.run_id.to_string(),
        bundle_digest: spec.bundle_digest.clone().unwrap_or_default(),
        tests: g
            .tests
            .iter()
            .map(|(index, attempt)| {
                let t = &spec.tests[*index as usize];
                pb::LeasedTest {
                    index: *index,
                    attempt: *attempt,
                    name: t.name.clone(),
                    binary: Some((&spec.binaries[t.binary as usize]).into()),
                }
            })
            .collect(),
        test_timeout_ms: spec.test_timeout.as_millis() as u64,
        kill_grace_ms: spec.kill_grace.as_millis() as u64,
        output_cap_bytes: spec.output_cap_bytes,
        services: spec.services.iter().map(Into::into).collect(),
        workspace: spec.workspace.clone(),
        tests_per_process: spec.tests_per_process,
        traceparent: g.traceparent.clone(),
        origin: spec.origin.iter().map(Into::into).collect(),
        pass_env: spec.pass_env.clone(),
    }
}

fn command_to_wire(c: AgentCommand) -> pb::CoordinatorMessage {
    use pb::coordinator_message::Kind;
    let kind = match c {
        AgentCommand::Welcome {
            agent_id,
            heartbeat_interval,
        } => Kind::Welcome(pb::Welcome {
            agent_id: agent_id.to_string(),
            heartbeat_interval_ms: heartbeat_interval.as_millis() as u64,
        }),
        AgentCommand::Lease(g) => Kind::Lease(lease_to_wire(&g)),
        AgentCommand::CancelLease(id) => Kind::CancelLease(pb::CancelLease {
            lease_id: id.to_string(),
        }),
        AgentCommand::Ack(run, index, attempt, lease) => Kind::Ack(pb::Ack {
            key: Some(testfleet_proto::attempt_key(run, index, attempt, lease)),
        }),
    };
    pb::CoordinatorMessage { kind: Some(kind) }
}

#[tonic::async_trait]
impl AgentGateway for Gateway {
    type SessionStream = CommandStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<CommandStream>, Status> {
        let Ok(slot) = self.sessions.clone().try_acquire_owned() else {
            return Err(exceeded(
                Limit::Agents,
                format!(
                    "{} agents are connected already; this one is refused",
                    self.limits.max_agents
                ),
            ));
        };
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s of connecting"))??;
        let hello = match first.and_then(|m| m.kind) {
            Some(pb::agent_message::Kind::Hello(h)) => hello_from_wire(h)?,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Hello",
                ));
            }
        };
        let agent = hello.agent_id.clone();
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.scheduler
            .send(Command::AgentConnected { hello, conn, tx })?;

        let scheduler = self.scheduler.clone();
        let limits = self.limits.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let why = loop {
                match inbound.next().await {
                    None => break "the agent closed its session".to_owned(),
                    Some(Err(status)) => break format!("session broken: {}", status.message()),
                    Some(Ok(m)) => match message_from_wire(m, &limits) {
                        Ok(Some(msg)) => {
                            let cmd = Command::FromAgent {
                                agent: agent.clone(),
                                conn,
                                msg,
                            };
                            if scheduler.send(cmd).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            // One malformed message does not end the session; it is logged and dropped.
                            tracing::warn!(agent = %agent, error = %e, "dropping an invalid agent message");
                        }
                    },
                }
            };
            let _ = scheduler.send(Command::AgentDisconnected { agent, conn, why });
        });
        let out = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|c| Ok(command_to_wire(c)));
        Ok(Response::new(Box::pin(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_s_output_is_cut_to_the_coordinator_s_limit_and_says_so() {
        let mut r = testfleet_model::AttemptResult::infra_error("");
        r.output = vec![b'x'; 5000];
        let cut = bounded(r.clone(), 1024);
        assert!(cut.output.starts_with(&[b'x'; 1024]));
        assert_eq!(cut.output[1024], b'\n');
        assert!(String::from_utf8_lossy(&cut.output).contains("--max-output-bytes"));
        assert_eq!(
            bounded(r.clone(), 5000).output,
            r.output,
            "within the limit: untouched"
        );
    }
}
