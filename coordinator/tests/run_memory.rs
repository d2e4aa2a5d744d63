//! What runs hold in memory is bounded: a run's event log past its share (`--run-log-memory-bytes`)
//! goes to the data dir and a watcher from the start reads it back whole, and past the runs'
//! budget (`--max-runs-memory-bytes`) finished runs leave memory and then new runs are refused,
//! saying why, until a running one finishes.

mod common;

use std::time::Duration;

use testfleet_coordinator::Limits;
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;

const GUARD: Duration = Duration::from_secs(120);

async fn submit(
    client: &mut CoordinatorClient<tonic::transport::Channel>,
    tests: usize,
) -> Result<String, tonic::Status> {
    client
        .submit_run(pb::SubmitRunRequest {
            spec: Some(pb::RunSpec::from(&common::model_spec(tests))),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().run_id)
}

fn spill_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("event-logs"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_s_log_goes_to_disk_and_a_watcher_from_the_start_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        run_log_memory_bytes: 256 << 10,
        ..Limits::default()
    };
    let served = common::serve_limited(dir.path(), limits).await;
    let mut client = CoordinatorClient::new(served.channel.clone());
    const TESTS: usize = 40_000;
    let run_id = submit(&mut client, TESTS).await.unwrap();
    // A watcher from the start while the run runs: what a late one must get back.
    let mut early = client.clone();
    let id = run_id.clone();
    let seen = tokio::spawn(async move { common::watch_to_end(&mut early, &id, GUARD).await });
    let (tx, mut inbound) = common::agent_session(&served.channel, "a", 256).await;
    let mut acks = 0;
    let mut done = 0;
    while done < TESTS {
        tx.send(common::work(256)).unwrap();
        let lease = common::next_lease(&mut inbound, &mut acks).await;
        for t in &lease.tests {
            // Some results have output, which history keeps and a late watcher gets back.
            let output = if t.index % 1000 == 0 {
                format!("output of {}\n", t.index).into_bytes()
            } else {
                vec![]
            };
            tx.send(common::passed(&lease, t, output)).unwrap();
        }
        done += lease.tests.len();
    }
    let seen = seen.await.unwrap();
    assert!(seen.len() > TESTS, "{} events", seen.len());
    let files = spill_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(std::fs::metadata(&files[0]).unwrap().len() > 256 << 10);
    let again = common::watch_to_end(&mut client, &run_id, GUARD).await;
    assert_eq!(again.len(), seen.len());
    for (a, b) in again.iter().zip(&seen) {
        assert_eq!(a, b, "event {} read back differs", b.seq);
    }
    // A watcher that leaves out passing attempts' output gets the same events without it.
    let lean = common::watch_to_end_with(&mut client, &run_id, GUARD, true).await;
    let mut without: Vec<pb::RunEvent> = seen.clone();
    let mut outputs = 0;
    for e in &mut without {
        if let Some(pb::run_event::Kind::TestFinished(f)) = &mut e.kind {
            let r = f.result.as_mut().unwrap();
            outputs += usize::from(!r.output.is_empty());
            r.output.clear();
        }
    }
    assert_eq!(outputs, TESTS / 1000, "the full stream had every output");
    assert_eq!(lean, without);
    // A stopped coordinator leaves no logs on disk; a restarted one removes any a crash left (a
    // resumed run's log starts anew).
    drop((tx, inbound, client));
    served.stop.send(()).unwrap();
    tokio::time::timeout(GUARD, served.server)
        .await
        .expect("the coordinator stops")
        .unwrap();
    // The file goes with the last holder of the run's log, which may be a write or a reader on a
    // blocking thread that lets go just after the coordinator has stopped.
    let guard = std::time::Instant::now() + GUARD;
    while !spill_files(dir.path()).is_empty() {
        assert!(
            std::time::Instant::now() < guard,
            "the log's file outlived its coordinator"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(dir.path().join("event-logs").join("run-1.events"), b"stale").unwrap();
    let again = common::serve(dir.path()).await;
    // A coordinator that answers has started, and emptied the directory before it did.
    CoordinatorClient::new(again.channel.clone())
        .list_runs(pb::ListRunsRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(spill_files(dir.path()).is_empty());
    again.stop.send(()).unwrap();
    tokio::time::timeout(GUARD, again.server)
        .await
        .expect("the coordinator stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_runs_memory_budget_a_new_run_waits_for_a_running_one_to_finish() {
    let dir = tempfile::tempdir().unwrap();
    // Room for two runs of 3,000 tests and their logs, not three: measured by what the scheduler
    // counts for one, whatever its tests take in memory.
    let one = testfleet_coordinator::scheduler::memory_of(&common::model_spec(3000));
    let limits = Limits {
        max_runs_memory_bytes: (one * 5 / 2) as u64,
        ..Limits::default()
    };
    let served = common::serve_limited(dir.path(), limits).await;
    let mut client = CoordinatorClient::new(served.channel.clone());
    let first = submit(&mut client, 3000).await.unwrap();
    submit(&mut client, 3000).await.unwrap();
    let refused = submit(&mut client, 3000).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    let said = refused.message();
    assert!(
        said.contains("--max-runs-memory-bytes") && said.contains("2 running run(s)"),
        "{said}"
    );
    // Too large alone is said so.
    let alone = submit(&mut client, 20_000).await.unwrap_err();
    assert!(
        alone.message().contains("more than the"),
        "{}",
        alone.message()
    );
    // Once a run has finished (here: cancelled), it leaves memory for the new one.
    client
        .cancel_run(pb::CancelRunRequest { run_id: first })
        .await
        .unwrap();
    submit(&mut client, 3000).await.unwrap();
    drop(client);
    served.stop.send(()).unwrap();
    tokio::time::timeout(GUARD, served.server)
        .await
        .expect("the coordinator stops")
        .unwrap();
}
