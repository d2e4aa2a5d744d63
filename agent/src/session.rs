//! One session with the coordinator: Hello, then leases in and results out until the stream breaks
//! or the agent stops. The loop owns all of the agent's state; test processes run in their own tasks
//! and report back over a channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use testfleet_model::AttemptResult;
use testfleet_proto::pb::agent_gateway_client::AgentGatewayClient;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_proto::{MAX_MESSAGE_BYTES, pb};
use tokio::sync::{mpsc, watch};
use tonic::transport::Endpoint;

use crate::bundle_cache::BundleCache;
use crate::executor::{self, TestCommand};
use crate::runners::libtest;
use crate::{AgentConfig, AgentError};

pub enum SessionEnd {
    Shutdown,
    Refused(String),
    Broken { reason: String, was_welcomed: bool },
}

pub(crate) fn endpoint(config: &AgentConfig) -> Result<Endpoint, AgentError> {
    let bad = |reason: String| AgentError::BadUrl {
        url: config.coordinator.clone(),
        reason,
    };
    let ep = Endpoint::from_shared(config.coordinator.clone()).map_err(|e| bad(e.to_string()))?;
    Ok(ep
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// A test ready to start.
struct Job {
    key: pb::AttemptKey,
    cmd: TestCommand,
    cancel: watch::Receiver<bool>,
}

struct State {
    slots: usize,
    running: usize,
    /// Tests of leases whose bundle is still being fetched.
    preparing: usize,
    pending: VecDeque<Job>,
    requested: bool,
    /// Per lease: what cancels its running tests, and how many of its tests have not finished.
    leases: HashMap<String, (watch::Sender<bool>, usize)>,
}

impl State {
    fn free(&self) -> usize {
        self.slots
            .saturating_sub(self.running + self.preparing + self.pending.len())
    }

    fn cancel_all(&mut self) {
        for (_, (c, _)) in self.leases.drain() {
            let _ = c.send(true);
        }
        self.pending.clear();
    }

    /// Notes that one test of `lease` is done, forgetting the lease after its last one.
    fn test_done(&mut self, lease: &str) {
        if let Some((_, left)) = self.leases.get_mut(lease) {
            *left -= 1;
            if *left == 0 {
                self.leases.remove(lease);
            }
        }
    }
}

fn msg(kind: pb::agent_message::Kind) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

pub(crate) async fn run(
    config: &AgentConfig,
    endpoint: &Endpoint,
    cache: &BundleCache,
    mut stop: watch::Receiver<bool>,
) -> SessionEnd {
    let broken = |reason: String| SessionEnd::Broken {
        reason,
        was_welcomed: false,
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return broken(format!("cannot connect: {}", error_chain(&e))),
    };
    let mut gateway = AgentGatewayClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let downloads = CoordinatorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(1024);
    let hello = msg(pb::agent_message::Kind::Hello(pb::Hello {
        agent_id: config.agent_id.to_string(),
        slots: config.slots,
        labels: config.labels.clone(),
        docker_available: false,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }));
    let _ = out.send(hello).await;
    let mut inbound = match gateway
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::InvalidArgument => {
            return SessionEnd::Refused(s.message().to_owned());
        }
        Err(s) => return broken(format!("session refused: {}", s.message())),
    };
    let heartbeat_every = match inbound.message().await {
        Ok(Some(pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::Welcome(w)),
        })) => Duration::from_millis(w.heartbeat_interval_ms.max(100)),
        Ok(_) => return broken("the coordinator did not answer Hello with Welcome".into()),
        Err(s) => return broken(format!("session broken before Welcome: {}", s.message())),
    };
    tracing::info!(agent = %config.agent_id, coordinator = %config.coordinator, "connected");

    let mut st = State {
        slots: config.slots as usize,
        running: 0,
        preparing: 0,
        pending: VecDeque::new(),
        requested: false,
        leases: HashMap::new(),
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(pb::AttemptKey, AttemptResult)>();
    let (ready_tx, mut ready_rx) =
        mpsc::unbounded_channel::<(pb::Lease, Result<Option<PathBuf>, String>)>();
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    let welcomed = |reason: String| SessionEnd::Broken {
        reason,
        was_welcomed: true,
    };

    loop {
        // Start what can start, then ask for more if slots are still free.
        while st.running < st.slots {
            let Some(job) = st.pending.pop_front() else {
                break;
            };
            st.running += 1;
            let _ = out
                .send(msg(pb::agent_message::Kind::TestStarted(pb::TestStarted {
                    key: Some(job.key.clone()),
                })))
                .await;
            let done = done_tx.clone();
            tokio::spawn(async move {
                let timeout_secs = job.cmd.timeout.as_secs_f64();
                let finished = executor::run(&job.cmd, job.cancel).await;
                let _ = done.send((job.key, libtest::interpret(finished, timeout_secs)));
            });
        }
        if !st.requested && st.free() > 0 {
            st.requested = true;
            let free_slots = st.free() as u32;
            let _ = out
                .send(msg(pb::agent_message::Kind::WorkRequest(pb::WorkRequest {
                    free_slots,
                })))
                .await;
        }

        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => match m.kind {
                    Some(pb::coordinator_message::Kind::Lease(lease)) => {
                        st.requested = false;
                        st.preparing += lease.tests.len();
                        let (cancel_tx, _) = watch::channel(false);
                        st.leases.insert(lease.lease_id.clone(), (cancel_tx, lease.tests.len()));
                        let ready = ready_tx.clone();
                        let cache = cache.clone();
                        let mut client = downloads.clone();
                        tokio::spawn(async move {
                            let root = if lease.bundle_digest.is_empty() {
                                Ok(None)
                            } else {
                                cache.ensure(&lease.bundle_digest, &mut client).await.map(Some).map_err(|e| e.to_string())
                            };
                            let _ = ready.send((lease, root));
                        });
                    }
                    Some(pb::coordinator_message::Kind::CancelLease(c)) => {
                        if let Some((cancel, _)) = st.leases.remove(&c.lease_id) {
                            let _ = cancel.send(true);
                        }
                        st.pending.retain(|j| j.key.lease_id != c.lease_id);
                    }
                    _ => {}
                },
                Ok(None) => {
                    st.cancel_all();
                    return welcomed("the coordinator closed the session".into());
                }
                Err(s) => {
                    st.cancel_all();
                    return welcomed(format!("session broken: {}", s.message()));
                }
            },
            Some((lease, root)) = ready_rx.recv() => {
                st.preparing = st.preparing.saturating_sub(lease.tests.len());
                let Some(cancel) = st.leases.get(&lease.lease_id).map(|(c, _)| c.subscribe()) else {
                    continue; // cancelled while its bundle was fetched
                };
                for t in &lease.tests {
                    let key = pb::AttemptKey {
                        run_id: lease.run_id.clone(),
                        test_index: t.index,
                        attempt: t.attempt,
                        lease_id: lease.lease_id.clone(),
                    };
                    let prepared = root
                        .clone()
                        .and_then(|root| command_for(config, &lease, t, root.as_deref()));
                    match prepared {
                        Ok(cmd) => st.pending.push_back(Job { key, cmd, cancel: cancel.clone() }),
                        Err(reason) => {
                            let result = AttemptResult::infra_error(reason);
                            st.test_done(&key.lease_id);
                            let _ = out.send(finished_msg(key, &result)).await;
                        }
                    }
                }
            }
            Some((key, result)) = done_rx.recv() => {
                st.running -= 1;
                st.test_done(&key.lease_id);
                let _ = out.send(finished_msg(key, &result)).await;
            }
            _ = heartbeat.tick() => {
                let _ = out.send(msg(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {}))).await;
            }
            () = executor::cancelled(&mut stop) => {
                st.cancel_all();
                // Let the cancelled tests' process groups be killed before the agent goes.
                while st.running > 0 {
                    match tokio::time::timeout(Duration::from_secs(10), done_rx.recv()).await {
                        Ok(Some(_)) => st.running -= 1,
                        _ => break,
                    }
                }
                return SessionEnd::Shutdown;
            }
        }
    }
}

fn finished_msg(key: pb::AttemptKey, result: &AttemptResult) -> pb::AgentMessage {
    msg(pb::agent_message::Kind::TestFinished(pb::TestFinished {
        key: Some(key),
        result: Some(result.into()),
    }))
}

/// Resolves a leased test into a command. Bundle paths are resolved under the bundle root and must
/// stay inside it: the agent does not trust the lease more than the coordinator trusted the spec.
fn command_for(
    config: &AgentConfig,
    lease: &pb::Lease,
    t: &pb::LeasedTest,
    root: Option<&Path>,
) -> Result<TestCommand, String> {
    let binary = t.binary.as_ref().ok_or("lease without a binary")?;
    let resolve = |p: &str| -> Result<PathBuf, String> {
        match root {
            None => Ok(PathBuf::from(p)),
            Some(root) => {
                let rel = Path::new(p);
                if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir))
                {
                    return Err(format!("path `{p}` would leave the bundle"));
                }
                Ok(root.join(rel))
            }
        }
    };
    let program = resolve(&binary.path)?;
    let cwd = resolve(&binary.cwd)?;
    if root.is_some() {
        // Bundles carry only files; a package dir without included files exists only as a cwd.
        std::fs::create_dir_all(&cwd)
            .map_err(|e| format!("cannot create `{}`: {e}", cwd.display()))?;
    }
    let mut env: BTreeMap<String, String> = binary.env.clone().into_iter().collect();
    env.insert("CARGO_MANIFEST_DIR".into(), cwd.display().to_string());
    env.insert("TESTFLEET_ATTEMPT".into(), t.attempt.to_string());
    env.insert("TESTFLEET_RUN_ID".into(), lease.run_id.clone());
    env.insert("TESTFLEET_AGENT_ID".into(), config.agent_id.to_string());
    Ok(TestCommand {
        program,
        args: libtest::args(&t.name),
        cwd,
        env,
        timeout: Duration::from_millis(lease.test_timeout_ms.max(1)),
        kill_grace: Duration::from_millis(lease.kill_grace_ms),
        output_cap: lease.output_cap_bytes.clamp(1024, 64 << 20) as usize,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
