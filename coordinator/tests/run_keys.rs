//! Run keys (CI fan-out) over real gRPC: jobs submitting at once with one key get one run, later
//! ones join it without a spec, and the key outlives a coordinator restart.

mod common;

use common::{spec, start};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use tonic::transport::Channel;

fn keyed(key: &str, with_spec: bool) -> pb::SubmitRunRequest {
    pb::SubmitRunRequest {
        spec: with_spec.then(spec),
        run_key: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_with_one_key_share_one_run_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (client, stop, server) = start(dir.path()).await;

    // Nobody has made the run yet: a job without a spec hears so.
    let none = client.clone().submit_run(keyed("p-1", false)).await;
    assert_eq!(none.unwrap_err().code(), tonic::Code::NotFound);

    // Three jobs at once: one creates, two join, all get the same run.
    let replies = submit_at_once(client.clone(), "p-1", 3).await;
    let created: Vec<_> = replies.iter().filter(|r| !r.joined).collect();
    assert_eq!(created.len(), 1, "{replies:?}");
    assert!(replies.iter().all(|r| r.run_id == created[0].run_id));
    let run = created[0].run_id.clone();

    // Another key is another run.
    let other = client
        .clone()
        .submit_run(keyed("p-2", true))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.joined);
    assert_ne!(other.run_id, run);
    let too_long = client
        .clone()
        .submit_run(keyed(&"k".repeat(300), true))
        .await;
    assert_eq!(too_long.unwrap_err().code(), tonic::Code::InvalidArgument);
    // A run without a key never joins anything.
    let plain = client
        .clone()
        .submit_run(pb::SubmitRunRequest {
            spec: Some(spec()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!plain.joined);

    // A retried job after a coordinator restart still finds its pipeline's run.
    stop.send(()).unwrap();
    server.await.unwrap();
    let (client, stop, server) = start(dir.path()).await;
    let again = client
        .clone()
        .submit_run(keyed("p-1", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.run_id.as_str(), again.joined), (run.as_str(), true));
    stop.send(()).unwrap();
    server.await.unwrap();
}

/// `n` keyed submissions with a spec, sent at once.
async fn submit_at_once(
    client: CoordinatorClient<Channel>,
    key: &str,
    n: usize,
) -> Vec<pb::SubmitRunResponse> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let mut c = client.clone();
            let req = keyed(key, true);
            tokio::spawn(async move { c.submit_run(req).await.unwrap().into_inner() })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
