//! Old bundles are removed when a coordinator starts, over its real bundle dir and sled store:
//! those unused for the retention period go, unless an unfinished run names them.

mod common;

use std::time::{Duration, SystemTime};

use common::{spec, start};
use testfleet_proto::pb;

const DAY: Duration = Duration::from_secs(86_400);

fn bundle(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let bundles = dir.join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let path = bundles.join(name);
    std::fs::write(&path, b"bundle bytes").unwrap();
    path
}

fn age(path: &std::path::Path, by: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_bundles_go_at_start_unless_an_unfinished_run_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let named = "a".repeat(64);
    let unnamed = "b".repeat(64);
    let named_path = bundle(dir.path(), &format!("{named}.tar.zst"));
    let unnamed_path = bundle(dir.path(), &format!("{unnamed}.tar.zst"));
    let leftover = bundle(dir.path(), &format!(".upload-{unnamed}-1-0"));

    // A run names one bundle; no agent ever runs it, so it stays unfinished.
    let (mut client, stop, server) = start(dir.path()).await;
    client
        .submit_run(pb::SubmitRunRequest {
            spec: Some(pb::RunSpec {
                binaries: vec![pb::Binary {
                    binary_id: "b".into(),
                    path: "bin/test".into(),
                    cwd: "ws".into(),
                    ..Default::default()
                }],
                bundle_digest: named.clone(),
                ..spec()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    stop.send(()).unwrap();
    server.await.unwrap();

    // Ten days later, past the default week.
    for p in [&named_path, &unnamed_path, &leftover] {
        age(p, 10 * DAY);
    }
    let (mut client, stop, server) = start(dir.path()).await;
    // Answered only once it serves, which is after the removal (the listener accepted before).
    client
        .list_runs(pb::ListRunsRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        named_path.exists(),
        "the unfinished run's bundle was removed"
    );
    assert!(!unnamed_path.exists(), "an unused bundle was kept");
    assert!(!leftover.exists(), "an unfinished upload was kept");
    stop.send(()).unwrap();
    server.await.unwrap();
}
