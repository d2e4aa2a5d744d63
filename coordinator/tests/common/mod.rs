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
    use tokio_stream::StreamExt;
    let mut stream = client
        .watch_run(pb::WatchRunRequest {
            run_id: run_id.to_owned(),
            from_seq: 0,
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
