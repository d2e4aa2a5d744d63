//! The `AgentGateway` service: one long-lived session per agent. The first message must be `Hello`;
//! after that, messages are converted and handed to the scheduler, and the scheduler's commands are
//! converted back onto the response stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use testfleet_model::session::UNACKED_RESULTS_LIMIT;
use testfleet_model::session::{AgentMessage, Hello};
use testfleet_proto::pb::agent_gateway_server::AgentGateway;
use testfleet_proto::{ConvertError, pb};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::history::credits::Credits;
use crate::limits::{Limit, Limits, exceeded};
use crate::scheduler::{AgentCommand, Command, SchedulerHandle};

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
    /// The budget of results between sessions and the disk.
    pub(crate) credits: Credits,
}

/// Messages a session reads ahead of the scheduler while its results wait for credits. An agent
/// stops asking for work at [`UNACKED_RESULTS_LIMIT`] unacknowledged results, and so never fills
/// it (a result and its start are two messages); one that does not stop is no longer read from
/// until the scheduler has taken what is queued, so it cannot fill the coordinator's memory.
const IN_ORDER_MESSAGES: usize = 4 * UNACKED_RESULTS_LIMIT;

/// What a session hands on in the order the agent said it.
enum InOrder {
    Message(AgentMessage),
    Ended(String),
}

/// Hands a session's messages to the scheduler in order, each result once it has its credits
/// (which may take a while when the history writer is behind); the session's end comes last, so
/// no result arrives after it.
async fn forward_in_order(
    mut rx: tokio::sync::mpsc::Receiver<InOrder>,
    scheduler: SchedulerHandle,
    credits: Credits,
    agent: testfleet_model::AgentId,
    conn: u64,
) {
    while let Some(next) = rx.recv().await {
        let msg = match next {
            InOrder::Message(msg) => msg,
            InOrder::Ended(why) => {
                let _ = scheduler.send(Command::AgentDisconnected { agent, conn, why });
                return;
            }
        };
        let credit = match &msg {
            // The result's size as it will sit in memory: its output and a little for the rest.
            AgentMessage::TestFinished(_, r) => {
                Some(credits.take(r.output.len() + r.message.len() + 512).await)
            }
            _ => None,
        };
        let cmd = Command::FromAgent {
            agent: agent.clone(),
            conn,
            msg,
            credit,
        };
        if scheduler.send(cmd).is_err() {
            return;
        }
    }
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

/// A hello the coordinator accepts: its agent id parsed, its slots within bounds.
fn hello_from_wire(h: pb::Hello) -> Result<Hello, Status> {
    let hello = Hello::try_from(h)?;
    if hello.slots == 0 || hello.slots > MAX_SLOTS {
        return Err(Status::invalid_argument(format!(
            "agent {} offers {} slots; between 1 and {MAX_SLOTS} are allowed",
            hello.agent_id, hello.slots
        )));
    }
    Ok(hello)
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

/// A message after the hello, converted and with its output bounded; `None` for a second hello or
/// an empty message (a newer agent's kind this coordinator does not know).
fn message_from_wire(
    m: pb::AgentMessage,
    limits: &Limits,
) -> Result<Option<AgentMessage>, ConvertError> {
    if m.kind.is_none() {
        return Ok(None);
    }
    Ok(match AgentMessage::try_from(m)? {
        AgentMessage::Hello(_) => None,
        AgentMessage::TestFinished(key, result) => Some(AgentMessage::TestFinished(
            key,
            bounded(result, limits.max_output_bytes),
        )),
        other => Some(other),
    })
}

/// A command for the agent on the wire; a lease is expanded here, in the session's task.
fn command_to_wire(c: AgentCommand) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage::from(c.map_lease(|g| g.to_lease()))
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
        let (in_order, ordered) = tokio::sync::mpsc::channel(IN_ORDER_MESSAGES);
        tokio::spawn(forward_in_order(
            ordered,
            scheduler.clone(),
            self.credits.clone(),
            agent.clone(),
            conn,
        ));
        tokio::spawn(async move {
            let _slot = slot;
            let why = loop {
                match inbound.next().await {
                    None => break "the agent closed its session".to_owned(),
                    Some(Err(status)) => break format!("session broken: {}", status.message()),
                    Some(Ok(m)) => match message_from_wire(m, &limits) {
                        // That the agent is alive, and wants work, never waits behind results
                        // waiting for credits.
                        Ok(Some(
                            msg @ (AgentMessage::Heartbeat | AgentMessage::WorkRequest(_)),
                        )) => {
                            let cmd = Command::FromAgent {
                                agent: agent.clone(),
                                conn,
                                msg,
                                credit: None,
                            };
                            if scheduler.send(cmd).is_err() {
                                return;
                            }
                        }
                        Ok(Some(msg)) => {
                            if in_order.send(InOrder::Message(msg)).await.is_err() {
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
            let _ = in_order.send(InOrder::Ended(why)).await;
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
