//! One session with the coordinator: Hello, then leases in and results out until the stream breaks
//! or the agent stops. The loop owns all of the agent's state; test processes run in their own tasks
//! and report back over a channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use testfleet_model::AttemptResult;
use testfleet_proto::pb::agent_gateway_client::AgentGatewayClient;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_proto::{MAX_MESSAGE_BYTES, pb};
use tokio::sync::{mpsc, watch};
use tonic::transport::Endpoint;

use testfleet_model::ServiceSpec;

use crate::bundle_cache::BundleCache;
use crate::executor::{self, TestCommand};
use crate::provision::{LeaseCtx, ServicePool};
use crate::runners::libtest;
use crate::{AgentConfig, AgentError, Services};

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
    services: Vec<ServiceSpec>,
    ctx: LeaseCtx,
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

    /// Stops every lease's tests and removes the leases' containers: the session is over.
    fn cancel_all(&mut self, pool: Option<&Arc<ServicePool>>) {
        for (id, (c, _)) in self.leases.drain() {
            let _ = c.send(true);
            release(pool, id);
        }
        self.pending.clear();
    }

    /// Notes that one test of `lease` is done; after its last one the lease and its containers go.
    fn test_done(&mut self, lease: &str, pool: Option<&Arc<ServicePool>>) {
        if let Some((_, left)) = self.leases.get_mut(lease) {
            *left -= 1;
            if *left == 0 {
                self.leases.remove(lease);
                release(pool, lease.to_owned());
            }
        }
    }
}

/// Removes a lease's containers in the background (the session loop never waits on Docker).
fn release(pool: Option<&Arc<ServicePool>>, lease: String) {
    if let Some(pool) = pool.cloned() {
        tokio::spawn(async move { pool.release_lease(&lease).await });
    }
}

fn msg(kind: pb::agent_message::Kind) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

pub(crate) async fn run(
    config: &AgentConfig,
    endpoint: &Endpoint,
    cache: &BundleCache,
    services: &Services,
    mut stop: watch::Receiver<bool>,
) -> SessionEnd {
    let pool = services.pool.as_ref();
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
        docker_available: services.pool.is_some(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        docker_status: services.status.clone(),
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
            let out = out.clone();
            let pool = pool.cloned();
            let no_docker = services.status.clone();
            tokio::spawn(async move {
                let result = run_job(job.key.clone(), job, pool, no_docker, out).await;
                let _ = done.send(result);
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
                            release(pool, c.lease_id.clone());
                        }
                        st.pending.retain(|j| j.key.lease_id != c.lease_id);
                    }
                    _ => {}
                },
                Ok(None) => {
                    st.cancel_all(pool);
                    return welcomed("the coordinator closed the session".into());
                }
                Err(s) => {
                    st.cancel_all(pool);
                    return welcomed(format!("session broken: {}", s.message()));
                }
            },
            Some((lease, root)) = ready_rx.recv() => {
                st.preparing = st.preparing.saturating_sub(lease.tests.len());
                let Some(cancel) = st.leases.get(&lease.lease_id).map(|(c, _)| c.subscribe()) else {
                    continue; // cancelled while its bundle was fetched
                };
                let ctx = LeaseCtx {
                    run_id: lease.run_id.clone(),
                    lease_id: lease.lease_id.clone(),
                    workspace: root.as_ref().ok().and_then(|r| workspace_of(&lease, r.as_deref())),
                };
                let lease_services: Result<Vec<ServiceSpec>, String> = lease
                    .services
                    .iter()
                    .cloned()
                    .map(|s| ServiceSpec::try_from(s).map_err(|e| e.to_string()))
                    .collect();
                for t in &lease.tests {
                    let key = pb::AttemptKey {
                        run_id: lease.run_id.clone(),
                        test_index: t.index,
                        attempt: t.attempt,
                        lease_id: lease.lease_id.clone(),
                    };
                    let prepared = root
                        .clone()
                        .and_then(|root| command_for(config, &lease, t, root.as_deref()))
                        .and_then(|cmd| Ok((cmd, services_of(t, lease_services.as_ref().map_err(Clone::clone)?)?)));
                    match prepared {
                        Ok((cmd, services)) => st.pending.push_back(Job {
                            key,
                            cmd,
                            cancel: cancel.clone(),
                            services,
                            ctx: ctx.clone(),
                        }),
                        Err(reason) => {
                            let result = AttemptResult::infra_error(reason);
                            st.test_done(&key.lease_id, pool);
                            let _ = out.send(finished_msg(key, &result)).await;
                        }
                    }
                }
            }
            Some((key, result)) = done_rx.recv() => {
                st.running -= 1;
                st.test_done(&key.lease_id, pool);
                let _ = out.send(finished_msg(key, &result)).await;
            }
            _ = heartbeat.tick() => {
                let _ = out.send(msg(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {}))).await;
            }
            () = executor::cancelled(&mut stop) => {
                st.cancel_all(pool);
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

/// Provisions a test's services, runs it, and removes its test-scope containers.
async fn run_job(
    key: pb::AttemptKey,
    job: Job,
    pool: Option<Arc<ServicePool>>,
    no_docker: String,
    out: mpsc::Sender<pb::AgentMessage>,
) -> (pb::AttemptKey, AttemptResult) {
    let mut cmd = job.cmd;
    let prepared = if job.services.is_empty() {
        None
    } else {
        let Some(pool) = &pool else {
            let why = format!("this agent cannot start services: {no_docker}");
            return (key, AttemptResult::infra_error(why));
        };
        match pool.prepare(&job.ctx, &job.services).await {
            Ok(p) => Some(p),
            Err(e) => return (key, AttemptResult::infra_error(e)),
        }
    };
    if let Some(p) = &prepared {
        for s in &p.starts {
            let report = pb::ServiceStarted {
                run_id: job.ctx.run_id.clone(),
                lease_id: job.ctx.lease_id.clone(),
                service: s.service.clone(),
                scope: pb::Scope::from(s.scope) as i32,
                duration_ms: s.duration.as_millis() as u64,
                container_id: s.container_id.clone(),
                fingerprint: s.fingerprint.clone(),
            };
            let _ = out
                .send(msg(pb::agent_message::Kind::ServiceStarted(report)))
                .await;
        }
        cmd.env.extend(p.env.clone());
    }
    let timeout_secs = cmd.timeout.as_secs_f64();
    let finished = executor::run(&cmd, job.cancel).await;
    if let (Some(pool), Some(p)) = (&pool, prepared) {
        pool.finish_test(p).await;
    }
    (key, libtest::interpret(finished, timeout_secs))
}

/// The services a leased test needs, from the lease's list.
fn services_of(t: &pb::LeasedTest, all: &[ServiceSpec]) -> Result<Vec<ServiceSpec>, String> {
    let indices = t
        .binary
        .as_ref()
        .map(|b| b.services.as_slice())
        .unwrap_or_default();
    indices
        .iter()
        .map(|i| {
            all.get(*i as usize)
                .cloned()
                .ok_or_else(|| format!("the lease refers to service #{i}, but has {}", all.len()))
        })
        .collect()
}

/// The workspace root of a lease's run, where service build contexts live.
fn workspace_of(lease: &pb::Lease, root: Option<&Path>) -> Option<PathBuf> {
    let ws = Path::new(&lease.workspace);
    match root {
        _ if lease.workspace.is_empty() => None,
        None => Some(ws.to_path_buf()),
        Some(root)
            if ws.is_relative() && !ws.components().any(|c| matches!(c, Component::ParentDir)) =>
        {
            Some(root.join(ws))
        }
        Some(_) => None,
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
    env.insert("TESTFLEET_LEASE_ID".into(), lease.lease_id.clone());
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
