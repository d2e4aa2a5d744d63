//! One session with the coordinator: Hello (with the leases the agent still holds), every
//! unacknowledged result again, then leases in and results out until the stream breaks or the agent
//! stops. All state lives in the [`Worker`], so a broken session loses nothing.

use std::time::Duration;

use testfleet_model::session::{AgentMessage, CoordinatorMessage, Hello, Lease, WorkRequest};
use testfleet_model::{AttemptResult, LeaseId};
use testfleet_proto::pb::agent_gateway_client::AgentGatewayClient;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_proto::{LeaseError, MAX_MESSAGE_BYTES, coordinator_message_from_wire, pb};
use testfleet_security::AuthChannel;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;

use crate::bundle_cache::BundleCache;
use crate::job;
use crate::provision::LeaseCtx;
use crate::sandbox::RunSandboxes;
use crate::worker::{HeldLease, Worker};
use crate::{AgentConfig, AgentError, Stop};

pub enum SessionEnd {
    Shutdown,
    Refused(String),
    Broken { reason: String, was_welcomed: bool },
}

/// How long a stopping agent waits for the coordinator to acknowledge its last results.
const FINAL_ACK_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn endpoint(config: &AgentConfig) -> Result<Endpoint, AgentError> {
    let bad = |reason: String| AgentError::BadUrl {
        url: config.coordinator.clone(),
        reason,
    };
    let ep = config
        .security
        .endpoint(&config.coordinator)
        .map_err(|e| bad(e.to_string()))?;
    Ok(ep
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

fn released(lease_id: LeaseId, indices: Vec<u32>) -> AgentMessage {
    AgentMessage::LeaseReleased { lease_id, indices }
}

pub(crate) async fn run(
    config: &AgentConfig,
    endpoint: &Endpoint,
    cache: &BundleCache,
    sandboxes: &RunSandboxes,
    w: &mut Worker,
    stop: &mut watch::Receiver<Stop>,
) -> SessionEnd {
    let broken = |reason: String| SessionEnd::Broken {
        reason,
        was_welcomed: false,
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            return broken(format!(
                "cannot connect: {}",
                testfleet_security::explain_connect_error(&e)
            ));
        }
    };
    let channel = config.security.wrap(channel);
    let mut gateway = AgentGatewayClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let downloads = CoordinatorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (out, out_rx) = mpsc::channel::<AgentMessage>(1024);
    let images = match &w.pool {
        Some(pool) => pool.provisioner().images().await,
        None => Vec::new(),
    };
    let hello = AgentMessage::Hello(Hello {
        agent_id: config.agent_id.clone(),
        slots: config.slots,
        labels: config.labels.clone(),
        docker_available: w.pool.is_some(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        docker_status: w.no_docker.clone(),
        sandbox_status: config.sandbox.status().to_owned(),
        held_leases: w.held_leases(),
        images,
    });
    let _ = out.send(hello).await;
    let mut inbound = match gateway
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx).map(pb::AgentMessage::from))
        .await
    {
        Ok(r) => r.into_inner(),
        // Trying again cannot fix a bad Hello or a token the coordinator refuses.
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
            ) =>
        {
            return SessionEnd::Refused(s.message().to_owned());
        }
        Err(s) => return broken(format!("session refused: {}", s.message())),
    };
    let heartbeat_every = match inbound
        .message()
        .await
        .map(|m| m.map(coordinator_message_from_wire))
    {
        Ok(Some(Ok(Some(CoordinatorMessage::Welcome {
            heartbeat_interval, ..
        })))) => heartbeat_interval.max(Duration::from_millis(100)),
        Ok(_) => return broken("the coordinator did not answer Hello with Welcome".into()),
        Err(s) => return broken(format!("session broken before Welcome: {}", s.message())),
    };
    tracing::info!(agent = %config.agent_id, coordinator = %config.coordinator, resent = w.unacked.len(), "connected");
    // Results the coordinator may not have: it ignores what it already counted.
    for m in w.resend() {
        let _ = out.send(m).await;
    }

    let welcomed = |reason: String| SessionEnd::Broken {
        reason,
        was_welcomed: true,
    };
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    // The outstanding work request, if any. A request for fewer idle slots than the agent has
    // now is sent again (the coordinator keeps the newest): a slot that became idle must not
    // wait behind a request that only asked for tests to queue.
    let mut requested: Option<WorkRequest> = None;
    let mut gave_back = false;
    let mut final_wait: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;

    loop {
        let state = *stop.borrow();
        if state == Stop::Now {
            w.cancel_all();
        }
        if state != Stop::Running && !gave_back {
            // Draining: what has not started goes back to the coordinator at once.
            gave_back = true;
            for (lease, indices) in w.give_back_pending() {
                let _ = out.send(released(lease, indices)).await;
            }
        }
        while let Some(keys) = w.start_next() {
            for key in keys {
                let _ = out.send(AgentMessage::TestStarted(key)).await;
            }
        }
        if state == Stop::Running
            && let Some(want) = w.wanted()
            && requested
                .as_ref()
                .is_none_or(|r| r.free_slots < want.free_slots)
        {
            requested = Some(want);
            let _ = out.send(AgentMessage::WorkRequest(want)).await;
        }
        if state != Stop::Running && w.idle() {
            if w.unacked.is_empty() {
                return SessionEnd::Shutdown;
            }
            final_wait.get_or_insert_with(|| Box::pin(tokio::time::sleep(FINAL_ACK_WAIT)));
        }

        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => match coordinator_message_from_wire(m) {
                    Ok(Some(CoordinatorMessage::Lease(lease))) => {
                        requested = None;
                        // Draining, or a disk that filled since the work was asked for: the lease
                        // goes back whole (requeued without penalty).
                        let draining = *stop.borrow() != Stop::Running;
                        if draining || !w.has_room() {
                            if !draining {
                                tracing::info!(lease = %lease.lease_id, "a lease came while the work dir is nearly full: given back");
                            }
                            let _ = out.send(released(lease.lease_id, vec![])).await;
                            continue;
                        }
                        accept(w, lease, cache, sandboxes, &downloads);
                    }
                    Ok(Some(CoordinatorMessage::CancelLease(id))) => w.cancel_lease(id),
                    Ok(Some(CoordinatorMessage::Ack(key))) => {
                        w.unacked.remove(&key);
                    }
                    Ok(Some(CoordinatorMessage::Welcome { .. }) | None) => {}
                    Err(LeaseError::Unreadable { keys, error, .. }) => {
                        // Its attempts end now, saying why, rather than time out on the coordinator.
                        let why = format!("this agent cannot read the lease: {error}");
                        for key in keys {
                            let m = w.finished(key, AttemptResult::infra_error(why.clone()));
                            let _ = out.send(m).await;
                        }
                    }
                    Err(LeaseError::Invalid(e)) => {
                        tracing::warn!(error = %e, "dropping an invalid message from the coordinator");
                    }
                },
                Ok(None) => return welcomed("the coordinator closed the session".into()),
                Err(s) => return welcomed(format!("session broken: {}", s.message())),
            },
            Some((lease, root, bundle, sandbox)) = w.ready_rx.recv() => {
                w.preparing = w.preparing.saturating_sub(lease.tests.len());
                let Some(held) = w.leases.get_mut(&lease.lease_id) else {
                    continue; // cancelled while its bundle was fetched (the hold goes with it)
                };
                held.bundle = bundle;
                let cancel = held.cancel.subscribe();
                let draining = *stop.borrow() != Stop::Running;
                let ctx = LeaseCtx {
                    run_id: lease.run_id.to_string(),
                    lease_id: lease.lease_id.to_string(),
                    workspace: root.as_ref().ok().and_then(|r| job::workspace_of(&lease, r.as_deref())),
                };
                let mut given = vec![];
                let mut ready = vec![];
                for (t, key) in lease.tests.iter().zip(lease.keys()) {
                    if draining {
                        given.push(t.index);
                        w.test_done(key.lease_id);
                        continue;
                    }
                    let prepared = root
                        .clone()
                        .and_then(|root| job::command_for(config, &lease, t, root.as_deref(), sandbox.as_ref()))
                        .and_then(|(cmd, runner)| Ok((cmd, runner, job::services_of(t, &lease.services)?)));
                    match prepared {
                        Ok((cmd, runner, services)) => ready.push(job::Ready {
                            key,
                            name: t.name.clone(),
                            binary_id: t.binary.binary_id.to_string(),
                            group: t.group.clone(),
                            cmd,
                            runner,
                            services,
                            settings: t.settings.clone(),
                        }),
                        Err(reason) => {
                            let m = w.finished(key, AttemptResult::infra_error(reason));
                            let _ = out.send(m).await;
                        }
                    }
                }
                let per_process = lease.tests_per_process.max(1) as usize;
                let trace = std::sync::Arc::new(crate::trace::LeaseTrace {
                    traceparent: lease.traceparent.clone(),
                    agent_id: config.agent_id.to_string(),
                });
                w.pending.extend(job::jobs(ready, per_process, w.slots, &cancel, &ctx, &trace));
                if !given.is_empty() {
                    let _ = out.send(released(lease.lease_id, given)).await;
                }
            }
            Some((slots, results)) = w.done_rx.recv() => {
                w.job_done(slots);
                for (key, result) in results {
                    let m = w.finished(key, result);
                    let _ = out.send(m).await;
                }
            }
            Some(note) = w.notes_rx.recv() => {
                let _ = out.send(note).await;
            }
            _ = heartbeat.tick() => {
                let _ = out.send(AgentMessage::Heartbeat).await;
            }
            _ = stop.changed() => {}
            () = async { final_wait.as_mut().expect("guarded").await }, if final_wait.is_some() => {
                tracing::warn!(unacknowledged = w.unacked.len(), "stopping without acknowledgement of every result");
                return SessionEnd::Shutdown;
            }
        }
    }
}

/// Holds a new lease and fetches its bundle and the run's sandbox in the background; the lease
/// comes back on `w.ready_rx` when both are there (or failed).
fn accept(
    w: &mut Worker,
    lease: Lease,
    cache: &BundleCache,
    sandboxes: &RunSandboxes,
    downloads: &CoordinatorClient<AuthChannel>,
) {
    w.preparing += lease.tests.len();
    w.prefetch_images(&lease);
    let (cancel_tx, _) = watch::channel(false);
    w.leases.insert(
        lease.lease_id,
        HeldLease {
            cancel: cancel_tx,
            left: lease.tests.len(),
            bundle: None,
        },
    );
    let ready = w.ready_tx.clone();
    let cache = cache.clone();
    let sandboxes = sandboxes.clone();
    let mut client = downloads.clone();
    // A compose stack's project directory is the bundle itself, outside any sandbox.
    let written = lease
        .services
        .iter()
        .any(|s| matches!(s.source, testfleet_model::ImageSource::Compose { .. }));
    tokio::spawn(async move {
        let (root, held) = match &lease.bundle_digest {
            None => (Ok(None), None),
            Some(digest) => match cache.ensure(digest, &mut client, written).await {
                Ok((root, held)) => (Ok(Some(root)), Some(held)),
                Err(e) => (Err(with_room(&e, cache.dir())), None),
            },
        };
        // The run's namespace, made once per run on this agent.
        let (root, sandbox) = match root {
            Ok(Some(r)) => match sandboxes.for_lease(lease.run_id, &r, &lease.origin).await {
                Ok(s) => (Ok(Some(r)), s),
                Err(e) => (Err(e), None),
            },
            other => (other, None),
        };
        let _ = ready.send((lease, root, held, sandbox));
    });
}

/// A bundle that could not be fetched for want of space says how much there is: the cause is
/// found by its kind among the error's sources (download, unpacking and the cache each wrap it).
fn with_room(error: &crate::bundle_cache::CacheError, dir: &std::path::Path) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        {
            return format!(
                "{error} (the agent's disk is full: {})",
                crate::disk_room::describe(dir)
            );
        }
        cause = e.source();
    }
    error.to_string()
}
