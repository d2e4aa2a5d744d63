//! Bundles that must never be used: one whose bytes do not match its digest (on upload, and on disk
//! behind the coordinator's back), and one whose entry would escape the extraction dir. And a
//! bundle cache shared by several agents (CI jobs on one machine) serves them all, and loses the
//! bundles no lease has needed for `--bundle-cache-hours`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use testfleet_model::{EventKind, Outcome, RunEvent, RunSpec, TestFinished, test_support};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;

use crate::support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn upload(
    client: &mut CoordinatorClient<tonic::transport::Channel>,
    digest: &str,
    data: Vec<u8>,
) -> Result<(), tonic::Status> {
    let chunk = pb::BundleChunk {
        digest: digest.to_owned(),
        total_size: data.len() as u64,
        data,
    };
    client
        .upload_bundle(tokio_stream::iter(vec![chunk]))
        .await
        .map(|_| ())
}

fn sha256_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d");
    std::fs::write(&p, data).unwrap();
    testfleet_bundle::digest_file(&p).unwrap()
}

/// Submits a one-test run on `digest` and returns its events once it finished.
async fn run_on_bundle(
    client: &mut CoordinatorClient<tonic::transport::Channel>,
    digest: &str,
) -> Vec<RunEvent> {
    let spec = RunSpec {
        suite: "hostile".into(),
        binaries: vec![test_support::binary("b", "bin/test", "ws")],
        test_timeout: Duration::from_secs(30),
        bundle_digest: Some(digest.to_owned()),
        ..test_support::spec(1)
    };
    let run_id = client
        .submit_run(pb::SubmitRunRequest {
            spec: Some((&spec).into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let mut stream = client
        .watch_run(pb::WatchRunRequest {
            run_id,
            from_seq: 0,
            omit_passing_output: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = vec![];
    while let Some(e) = tokio::time::timeout(GUARD, stream.message())
        .await
        .expect("events keep coming")
        .unwrap()
    {
        events.push(RunEvent::try_from(e).unwrap());
    }
    events
}

fn infra_messages(events: &[RunEvent]) -> (Option<Outcome>, Vec<String>) {
    let mut outcome = None;
    let mut messages = vec![];
    for e in events {
        if let EventKind::TestFinished(TestFinished {
            result,
            final_outcome,
            ..
        }) = &e.kind
        {
            messages.push(result.message.clone());
            outcome = outcome.or(*final_outcome);
        }
    }
    (outcome, messages)
}

#[test]
fn an_upload_whose_bytes_do_not_match_its_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, url) = coordinator(dir.path());
    runtime().block_on(async {
        let mut client = CoordinatorClient::connect(url).await.unwrap();
        let claimed = sha256_hex(b"what was promised");
        let err = upload(&mut client, &claimed, b"something else".to_vec())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("bundle digest mismatch"),
            "{}",
            err.message()
        );
        let has = client
            .has_bundle(pb::BundleRef { digest: claimed })
            .await
            .unwrap()
            .into_inner();
        assert!(!has.present, "a refused upload leaves nothing behind");
    });
}

#[test]
fn a_bundle_corrupted_on_the_coordinator_is_caught_by_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, url) = coordinator(dir.path());
    let _agent = agent(dir.path(), &url, "checker", 1);
    let exe = dir.path().join("test-exe");
    std::fs::copy("/bin/true", &exe).unwrap();
    let packed = testfleet_bundle::pack(
        &[testfleet_bundle::BundleEntry {
            archive_path: "bin/test".into(),
            source: exe,
        }],
        &dir.path().join("packed"),
    )
    .unwrap();
    runtime().block_on(async {
        let mut client = CoordinatorClient::connect(url).await.unwrap();
        upload(
            &mut client,
            &packed.digest,
            std::fs::read(&packed.path).unwrap(),
        )
        .await
        .unwrap();
        // Flip the stored bytes behind the coordinator's back.
        let stored = dir
            .path()
            .join(format!("coordinator/bundles/{}.tar.zst", packed.digest));
        let mut bytes = std::fs::read(&stored).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&stored, bytes).unwrap();

        let events = run_on_bundle(&mut client, &packed.digest).await;
        let (outcome, messages) = infra_messages(&events);
        assert_eq!(outcome, Some(Outcome::InfraError), "{messages:?}");
        assert!(
            messages
                .iter()
                .all(|m| m.contains("bundle digest mismatch")),
            "{messages:?}"
        );
    });
    assert!(
        !dir.path()
            .join(format!("checker/bundles/{}", packed.digest))
            .exists()
    );
}

fn hostile_bundle() -> (Vec<u8>, String) {
    let mut enc = zstd::Encoder::new(Vec::new(), 1).unwrap();
    {
        let mut b = tar::Builder::new(&mut enc);
        let mut h = tar::Header::new_old();
        let name = b"../escape";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(5);
        h.set_mode(0o755);
        h.set_cksum();
        b.append(&h, &b"pwned"[..]).unwrap();
        b.finish().unwrap();
    }
    let mut bytes = enc.finish().unwrap();
    bytes.flush().unwrap();
    let digest = sha256_hex(&bytes);
    (bytes, digest)
}

#[test]
fn a_bundle_entry_that_would_escape_is_rejected_and_nothing_is_written_outside() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, url) = coordinator(dir.path());
    let _agent = agent(dir.path(), &url, "victim", 1);
    let (bytes, digest) = hostile_bundle();
    runtime().block_on(async {
        let mut client = CoordinatorClient::connect(url).await.unwrap();
        upload(&mut client, &digest, bytes).await.unwrap();
        let events = run_on_bundle(&mut client, &digest).await;
        let (outcome, messages) = infra_messages(&events);
        assert_eq!(outcome, Some(Outcome::InfraError), "{messages:?}");
        assert!(
            messages
                .iter()
                .all(|m| m.contains("bundle entry `../escape` rejected")),
            "{messages:?}"
        );
    });
    let escaped: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.ends_with("escape"))
        .collect();
    assert!(escaped.is_empty(), "{escaped:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn agents_sharing_a_work_dir_share_its_bundle_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, url) = coordinator(dir.path());
    let shared = dir.path().join("shared-work-dir");
    // All four start downloading the run's bundle at once, into the same cache.
    let _agents: Vec<Proc> = ["w", "x", "y", "z"]
        .iter()
        .map(|id| {
            let mut cmd = testfleet();
            cmd.args(["agent", "--coordinator", &url, "--agent-id", id])
                .args(["--slots", "2", "--work-dir"])
                .arg(&shared);
            Proc::spawn(cmd, dir.path().join(format!("{id}.log")))
        })
        .collect();
    wait_for_agents(&url, 4);
    let events = fixture_run_on(testfleet(), &url, &[]);
    assert_eq!(final_outcomes(&events), crate::fixture::expected(true));
    let (_, messages) = infra_messages(&events);
    assert!(
        !messages.iter().any(|m| m.contains("bundle")),
        "{messages:#?}"
    );
    // Nothing half-done is left behind in the cache.
    let leftovers: Vec<_> = std::fs::read_dir(shared.join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_agent_removes_cached_bundles_no_lease_needed_within_its_retention() {
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, url) = coordinator(dir.path());
    let work = dir.path().join("work");
    // A bundle an earlier run left in the cache two days ago.
    let stale = work.join("bundles").join("e".repeat(64));
    std::fs::create_dir_all(stale.join("bin")).unwrap();
    std::fs::write(stale.join("bin/test"), b"old").unwrap();
    std::fs::File::open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 86_400))
        .unwrap();
    let mut cmd = testfleet();
    cmd.args(["agent", "--coordinator", &url, "--agent-id", "keeper"])
        .args(["--slots", "2", "--bundle-cache-hours", "1", "--work-dir"])
        .arg(&work);
    let _agent = Proc::spawn(cmd, dir.path().join("agent.log"));
    wait_until("the stale bundle's removal", || !stale.exists());
    // The client's side: a packed bundle a killed run left a day ago goes when the next run
    // packs, and that run's own archive once the coordinator has it. (A target dir of its own:
    // other tests pack the same fixture at the same time.)
    let target = dir.path().join("target");
    let packed = target.join("testfleet").join("bundles");
    std::fs::create_dir_all(&packed).unwrap();
    let left = packed.join(format!("{}.tar.zst", "f".repeat(64)));
    std::fs::write(&left, b"old").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&left)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 86_400))
        .unwrap();
    let mut client = testfleet();
    client.env("CARGO_TARGET_DIR", &target);
    let events = fixture_run_on(client, &url, &[]);
    assert_eq!(final_outcomes(&events), crate::fixture::expected(true));
    let archives: Vec<_> = std::fs::read_dir(&packed).unwrap().collect();
    assert!(archives.is_empty(), "{archives:?}");
    // The run's own bundle, just used, stays in the agent's cache; nothing half removed is left.
    let names: Vec<String> = std::fs::read_dir(work.join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(testfleet_model::spec::is_sha256_hex(&names[0]), "{names:?}");
}
