//! What the coordinator's integration tests share: a real coordinator on a loopback port.
// Each test file compiles this module on its own and uses some of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use testfleet_coordinator::{CoordinatorConfig, SledStore};
use testfleet_model::{RunSpec, test_support};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use tonic::transport::Channel;

/// A coordinator serving on a free loopback port: where, a connection to it, and what stops it
/// (its task fails if serving did).
pub struct Served {
    pub addr: std::net::SocketAddr,
    pub channel: Channel,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub server: tokio::task::JoinHandle<()>,
}

/// A coordinator over `dir` on a free loopback port.
pub async fn serve(dir: &std::path::Path) -> Served {
    let store = Arc::new(SledStore::open(dir).unwrap());
    serve_with(CoordinatorConfig::new(dir), store).await
}

/// A coordinator over `dir` with `limits`, on a free loopback port.
pub async fn serve_limited(dir: &std::path::Path, limits: testfleet_coordinator::Limits) -> Served {
    let mut config = CoordinatorConfig::new(dir);
    config.limits = limits;
    serve_with(config, Arc::new(SledStore::open(dir).unwrap())).await
}

/// A coordinator with `config` over `store` on a free loopback port.
pub async fn serve_with(
    config: CoordinatorConfig,
    store: Arc<dyn testfleet_coordinator::HistoryStore>,
) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        testfleet_coordinator::serve(listener, config, store, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Served {
        addr,
        channel,
        stop,
        server,
    }
}

/// A coordinator over `dir` on a free loopback port: its client, and what stops it.
pub async fn start(
    dir: &std::path::Path,
) -> (
    CoordinatorClient<Channel>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let s = serve(dir).await;
    (CoordinatorClient::new(s.channel), s.stop, s.server)
}

/// A run of one test that no agent is there to run, on the wire.
pub fn spec() -> pb::RunSpec {
    let mut spec = model_spec(1);
    spec.suite = "keys".into();
    spec.retries = None;
    spec.tests[0].name = "t".into();
    pb::RunSpec::from(&spec)
}

/// `n` tests of `/bin/true` with a 10 s timeout and no retries.
pub fn model_spec(n: usize) -> RunSpec {
    RunSpec {
        test_timeout: Duration::from_secs(10),
        kill_grace: Duration::from_millis(100),
        ..test_support::spec(n)
    }
}

/// Every event of run `run_id` from the start, until its stream ends after the run finishes
/// (within `guard`).
pub async fn watch_to_end(
    client: &mut CoordinatorClient<Channel>,
    run_id: &str,
    guard: Duration,
) -> Vec<pb::RunEvent> {
    watch_to_end_with(client, run_id, guard, false).await
}

/// [`watch_to_end`], leaving out passing attempts' output if `omit_passing_output`.
#[allow(dead_code)]
pub async fn watch_to_end_with(
    client: &mut CoordinatorClient<Channel>,
    run_id: &str,
    guard: Duration,
    omit_passing_output: bool,
) -> Vec<pb::RunEvent> {
    use tokio_stream::StreamExt;
    let mut stream = client
        .watch_run(pb::WatchRunRequest {
            run_id: run_id.to_owned(),
            from_seq: 0,
            omit_passing_output,
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(guard, async {
        let mut events = vec![];
        while let Some(e) = stream.next().await {
            events.push(e.unwrap());
        }
        events
    })
    .await
    .expect("the run's event stream ends")
}

pub fn msg(kind: pb::agent_message::Kind) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

pub fn work(free: u32) -> pb::AgentMessage {
    msg(pb::agent_message::Kind::WorkRequest(pb::WorkRequest {
        free_slots: free,
        queue_slots: 0,
    }))
}

/// A passing result of `t` in `lease` with `output`.
pub fn passed(lease: &pb::Lease, t: &pb::LeasedTest, output: Vec<u8>) -> pb::AgentMessage {
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

/// Reads an agent's session until a lease comes (within a minute), counting acknowledgements on
/// the way.
pub async fn next_lease(
    inbound: &mut tonic::Streaming<pb::CoordinatorMessage>,
    acks: &mut usize,
) -> pb::Lease {
    use tokio_stream::StreamExt;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), inbound.next())
            .await
            .expect("the coordinator answers")
            .expect("the session stays open")
            .unwrap();
        match m.kind {
            Some(pb::coordinator_message::Kind::Lease(l)) => return l,
            Some(pb::coordinator_message::Kind::Ack(_)) => *acks += 1,
            _ => {}
        }
    }
}

/// Opens an agent session as `agent` with `slots`: what sends its messages, and what it reads.
pub async fn agent_session(
    channel: &Channel,
    agent: &str,
    slots: u32,
) -> (
    tokio::sync::mpsc::UnboundedSender<pb::AgentMessage>,
    tonic::Streaming<pb::CoordinatorMessage>,
) {
    use testfleet_proto::pb::agent_gateway_client::AgentGatewayClient;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(msg(pb::agent_message::Kind::Hello(pb::Hello {
        agent_id: agent.into(),
        slots,
        version: "test".into(),
        ..Default::default()
    })))
    .unwrap();
    let inbound = AgentGatewayClient::new(channel.clone())
        .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}
