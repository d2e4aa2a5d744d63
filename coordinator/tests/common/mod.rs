//! What the coordinator's integration tests share: a real coordinator on a loopback port.

use std::sync::Arc;

use testfleet_coordinator::{CoordinatorConfig, SledStore};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use tonic::transport::Channel;

/// A coordinator on a free loopback port over `dir`: its client, and what stops it.
pub async fn start(
    dir: &std::path::Path,
) -> (
    CoordinatorClient<Channel>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let store = Arc::new(SledStore::open(dir).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = CoordinatorConfig::new(dir);
    let server = tokio::spawn(async move {
        testfleet_coordinator::serve(listener, config, store, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    (CoordinatorClient::new(channel), stop, server)
}

/// A run of one test that no agent is there to run.
pub fn spec() -> pb::RunSpec {
    pb::RunSpec {
        suite: "keys".into(),
        binaries: vec![pb::Binary {
            binary_id: "b".into(),
            path: "/bin/true".into(),
            cwd: "/".into(),
            ..Default::default()
        }],
        tests: vec![pb::TestSpec {
            binary: 0,
            name: "t".into(),
            ignored: false,
        }],
        test_timeout_ms: 10_000,
        kill_grace_ms: 100,
        output_cap_bytes: 4096,
        ..Default::default()
    }
}
