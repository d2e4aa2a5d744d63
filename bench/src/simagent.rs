//! Simulated agents: real gRPC sessions to a real coordinator on loopback, which pass every leased
//! test at once. They measure what the coordinator costs, not what tests cost: how many results it
//! takes in per second, and how long a work request waits for its lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testfleet_model::session::UNACKED_RESULTS_LIMIT;
use testfleet_proto::pb::agent_gateway_client::AgentGatewayClient;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_proto::{MAX_MESSAGE_BYTES, pb};
use tokio::sync::{Notify, mpsc, watch};
use tonic::transport::{Channel, Endpoint};

/// What every simulated agent adds to.
#[derive(Default)]
pub struct Shared {
    pub connected: AtomicUsize,
    pub connected_changed: Notify,
    pub results: AtomicU64,
    pub leases: AtomicU64,
    /// When non-zero, `all_reported` is notified once `results` reaches it.
    pub expected: AtomicU64,
    pub all_reported: Notify,
    /// Work request to lease, in microseconds, of every request made while the agent was busy
    /// (an agent's first request waits for a run to be submitted, and is not counted).
    pub latencies_us: std::sync::Mutex<Vec<u64>>,
    /// Every `output_every`th result (0: none) carries `output_bytes` of output.
    pub output_bytes: AtomicUsize,
    pub output_every: AtomicU64,
    /// Results sent so far, to pick those that carry output.
    pub sent: AtomicU64,
}

pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        // A connection whose SYN or handshake was dropped (a full listen backlog) is retried
        // instead of waiting out the kernel's retransmissions.
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

pub fn client(ch: Channel) -> CoordinatorClient<Channel> {
    CoordinatorClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn msg(kind: pb::agent_message::Kind) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

fn work_request(slots: u32) -> pb::AgentMessage {
    msg(pb::agent_message::Kind::WorkRequest(pb::WorkRequest {
        free_slots: slots,
        queue_slots: 0,
    }))
}

fn passed(lease: &pb::Lease, t: &pb::LeasedTest, shared: &Shared) -> pb::AgentMessage {
    let every = shared.output_every.load(Ordering::Relaxed);
    let n = shared.sent.fetch_add(1, Ordering::Relaxed);
    let output = if every > 0 && n.is_multiple_of(every) {
        vec![b'x'; shared.output_bytes.load(Ordering::Relaxed)]
    } else {
        vec![]
    };
    msg(pb::agent_message::Kind::TestFinished(pb::TestFinished {
        key: Some(pb::AttemptKey {
            run_id: lease.run_id.clone(),
            test_index: t.index,
            attempt: t.attempt,
            lease_id: lease.lease_id.clone(),
        }),
        result: Some(pb::AttemptResult {
            status: pb::AttemptStatus::Passed as i32,
            duration_ms: 1,
            output,
            ..Default::default()
        }),
    }))
}

/// One agent's session, until `stop` turns true or the coordinator ends it. Each leased test
/// "runs" for `test_time` on average (uniformly between half and one and a half times it, so
/// agents do not move in lockstep), one slot's worth at a time, before its pass is reported.
pub async fn agent(
    url: String,
    id: String,
    slots: u32,
    test_time: Duration,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // A thousand connections at once can overflow the listen backlog: retry as a real agent does.
    let mut attempt = 0;
    let ch = loop {
        match channel(&url).await {
            Ok(ch) => break ch,
            Err(e) if attempt >= 20 => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
        }
    };
    let mut gateway = AgentGatewayClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (out, out_rx) = mpsc::unbounded_channel();
    out.send(msg(pb::agent_message::Kind::Hello(pb::Hello {
        agent_id: id,
        slots,
        version: "bench".into(),
        docker_status: "simulated".into(),
        ..Default::default()
    })))?;
    let mut inbound = gateway
        .session(tokio_stream::wrappers::UnboundedReceiverStream::new(out_rx))
        .await?
        .into_inner();
    let heartbeat_every = match inbound.message().await?.and_then(|m| m.kind) {
        Some(pb::coordinator_message::Kind::Welcome(w)) => {
            Duration::from_millis(w.heartbeat_interval_ms.max(100))
        }
        other => bail!("expected Welcome, got {other:?}"),
    };
    shared.connected.fetch_add(1, Ordering::SeqCst);
    shared.connected_changed.notify_waiters();
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    let mut requested_at: Option<Instant> = None;
    out.send(work_request(slots))?;
    let mut latencies = Vec::new();
    // As a real agent: no work asked for while too many results wait for their acknowledgement.
    let mut unacked = 0usize;
    let mut wants_work = false;
    loop {
        tokio::select! {
            m = inbound.message() => match m?.and_then(|m| m.kind) {
                Some(pb::coordinator_message::Kind::Lease(lease)) => {
                    if let Some(at) = requested_at {
                        latencies.push(at.elapsed().as_micros() as u64);
                    }
                    for t in &lease.tests {
                        if !test_time.is_zero() {
                            let jitter = 0.5 + fastrand::f64();
                            tokio::time::sleep(test_time.mul_f64(jitter) / slots).await;
                        }
                        out.send(passed(&lease, t, &shared))?;
                        unacked += 1;
                    }
                    let n = lease.tests.len() as u64;
                    let total = shared.results.fetch_add(n, Ordering::Relaxed) + n;
                    shared.leases.fetch_add(1, Ordering::Relaxed);
                    let expected = shared.expected.load(Ordering::Relaxed);
                    if expected > 0 && total >= expected && total - n < expected {
                        shared.all_reported.notify_one();
                    }
                    if unacked < UNACKED_RESULTS_LIMIT {
                        requested_at = Some(Instant::now());
                        out.send(work_request(slots))?;
                    } else {
                        requested_at = None;
                        wants_work = true;
                    }
                }
                Some(pb::coordinator_message::Kind::Ack(_)) => {
                    unacked = unacked.saturating_sub(1);
                    if wants_work && unacked < UNACKED_RESULTS_LIMIT {
                        wants_work = false;
                        requested_at = Some(Instant::now());
                        out.send(work_request(slots))?;
                    }
                }
                Some(_) => {}
                None => break,
            },
            _ = heartbeat.tick() => {
                out.send(msg(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {})))?;
            }
            _ = stop.changed() => break,
        }
    }
    shared
        .latencies_us
        .lock()
        .expect("latency lock")
        .extend(latencies);
    Ok(())
}

/// Starts `n` agents of `slots` slots and waits until all of them are welcomed.
pub async fn start_agents(
    url: &str,
    n: usize,
    slots: u32,
    test_time: Duration,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        handles.push(tokio::spawn(agent(
            url.to_owned(),
            format!("sim-{i:04}"),
            slots,
            test_time,
            shared.clone(),
            stop.clone(),
        )));
    }
    let all_connected = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let notified = shared.connected_changed.notified();
            if shared.connected.load(Ordering::SeqCst) >= n {
                break;
            }
            notified.await;
        }
    })
    .await;
    if all_connected.is_err() {
        // Say why: an agent that gave up has its error.
        if let Some(i) = handles.iter().position(|h| h.is_finished()) {
            handles.swap_remove(i).await??;
        }
        bail!("agents did not all connect within 120 s");
    }
    Ok(handles)
}

/// Stops the agents, waits for them, and closes every connection of the runtime (so the
/// coordinator, when stopped, does not wait for idle clients).
pub fn stop_all(
    rt: tokio::runtime::Runtime,
    stop: watch::Sender<bool>,
    agents: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<()> {
    let _ = stop.send(true);
    rt.block_on(async {
        for a in agents {
            a.await??;
        }
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// A run of `tests` tests of one binary that no agent really executes.
pub fn spec(suite: &str, tests: usize) -> pb::RunSpec {
    pb::RunSpec {
        suite: suite.into(),
        binaries: vec![pb::Binary {
            binary_id: "sim::tests".into(),
            path: "/bin/true".into(),
            cwd: "/".into(),
            ..Default::default()
        }],
        tests: (0..tests)
            .map(|i| pb::TestSpec {
                binary: 0,
                name: format!("module_{:03}::test_{i:07}", i % 997),
                ignored: false,
                ..Default::default()
            })
            .collect(),
        retries: Some(0),
        test_timeout_ms: 60_000,
        kill_grace_ms: 1000,
        output_cap_bytes: 65536,
        revision: "sim".into(),
        ..Default::default()
    }
}

/// Submits a run and returns its id.
pub async fn submit(
    c: &mut CoordinatorClient<Channel>,
    spec: pb::RunSpec,
) -> anyhow::Result<String> {
    Ok(c.submit_run(pb::SubmitRunRequest {
        spec: Some(spec),
        ..Default::default()
    })
    .await?
    .into_inner()
    .run_id)
}

/// Watches a run to its end and returns its summary, as `testfleet run` does (without the output
/// of passing attempts, which it shows only when it prints every event as JSON).
pub async fn finished(
    mut c: CoordinatorClient<Channel>,
    run_id: String,
) -> anyhow::Result<pb::RunSummary> {
    let mut events = c
        .watch_run(pb::WatchRunRequest {
            run_id: run_id.clone(),
            from_seq: 0,
            omit_passing_output: true,
        })
        .await?
        .into_inner();
    while let Some(e) = events.message().await? {
        if let Some(pb::run_event::Kind::RunFinished(f)) = e.kind {
            return f.summary.context("RunFinished without a summary");
        }
    }
    bail!("run {run_id}'s event stream ended before it finished")
}

/// p-th percentile (0..=100) of sorted microseconds, in milliseconds.
pub fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}
