//! Bundles of content-addressed files end to end, on the `hermetic` fixture crate: a run after a
//! one-test change sends and fetches only the files that changed; a file damaged in an agent's
//! cache or in the coordinator's store is found and fetched again; the agent's and the
//! coordinator's removal passes keep the files a kept bundle still names; an upload cut off leaves
//! nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use testfleet_model::{Outcome, exit_code};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;

use crate::support::*;

/// The line an agent logs when it has laid a bundle of files out.
const LAID_OUT: &str = "bundle downloaded (only the files not cached)";

fn run(url: &str, ws: &Path) -> Output {
    RunLine::on(url)
        .manifest(&ws.join("Cargo.toml"))
        .json()
        .output()
}

/// A run's outcomes; its exit status must be one of the fixture's (one test fails on purpose).
fn outcomes(out: &Output) -> BTreeMap<Key, Outcome> {
    assert_eq!(
        out.status.code(),
        Some(exit_code::TESTS_FAILED),
        "{}",
        stderr(out)
    );
    final_outcomes(&events(out))
}

/// The client's "uploaded K of N files" line: (K, N).
fn uploaded(out: &Output) -> (u64, u64) {
    let err = stderr(out);
    let line = err
        .lines()
        .find(|l| l.contains(": uploaded "))
        .unwrap_or_else(|| panic!("no upload line:\n{err}"));
    let rest = line.split(": uploaded ").nth(1).unwrap();
    let mut words = rest.split(' ');
    let k = words.next().unwrap().parse().unwrap();
    assert_eq!(words.next(), Some("of"), "{line}");
    let n = words.next().unwrap().parse().unwrap();
    (k, n)
}

/// The run found its whole bundle on the coordinator and sent none of it.
fn assert_sent_nothing(out: &Output) {
    let err = stderr(out);
    assert!(err.contains("already on the coordinator"), "{err}");
}

/// `field=N` of each line of `log` holding `message`, in order.
fn logged(log: &str, message: &str, field: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(message))
        .map(|l| {
            let at = l
                .find(&format!(" {field}="))
                .unwrap_or_else(|| panic!("no {field} in {l}"));
            l[at + field.len() + 2..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// Adds a passing test to the fixture's `cli` test binary: a one-test change.
fn add_a_test(ws: &Path, name: &str) -> Key {
    let file = ws.join("tests/cli.rs");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!(
        "\n#[test]\nfn {name}() {{\n    assert_eq!(2 + 2, 4);\n}}\n"
    ));
    std::fs::write(&file, text).unwrap();
    ("hermetic::cli".to_owned(), name.to_owned())
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Flips a byte in the middle of `path`, keeping its size.
fn damage(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // The coordinator's files are read-only: writable for the damage, as its owner may.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// A file's digest in hex, from its name in a cache (`<sha256>-<size>[.x]`).
fn sha_of(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy()[..64].to_owned()
}

#[test]
fn a_one_test_change_sends_and_fetches_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let ws = copy_fixture("hermetic", dir.path());
    let (_coordinator, url) = coordinator(dir.path());
    let _a = agent(dir.path(), &url, "agent-a", 1);
    let _b = agent(dir.path(), &url, "agent-b", 1);
    wait_for_agents(&url, 2);

    let first = run(&url, &ws);
    let before = outcomes(&first);
    let (sent, files) = uploaded(&first);
    assert!(sent > 10 && sent <= files, "{}", stderr(&first));

    let added = add_a_test(&ws, "added_after_the_first_run");
    let second = run(&url, &ws);
    let mut expected = before.clone();
    expected.insert(added, Outcome::Passed);
    assert_eq!(outcomes(&second), expected);
    // The test's source and its binary; nothing else of the bundle changed.
    assert_eq!(uploaded(&second), (2, files), "{}", stderr(&second));
    // An agent that ran both bundles fetched at most those two files for the second (which
    // agent gets which tests is the scheduler's choice; one that ran only the second fetched it
    // whole).
    for id in ["agent-a", "agent-b"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{id}.log"))).unwrap();
        let fetched = logged(&log, LAID_OUT, "downloaded");
        assert!(
            fetched.iter().skip(1).all(|n| *n <= 2),
            "{id} fetched more than the changed files: {fetched:?}\n{log}"
        );
    }

    // Unchanged: nothing is asked for beyond the bundle itself.
    let third = run(&url, &ws);
    assert_eq!(outcomes(&third), expected);
    assert_sent_nothing(&third);
}

#[test]
fn damaged_files_in_an_agent_cache_or_the_coordinator_store_are_found_and_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let ws = copy_fixture("hermetic", dir.path());
    let (_coordinator, url) = coordinator(dir.path());
    let mut first = agent(dir.path(), &url, "first", 2);
    wait_for_agents(&url, 1);
    let expected = outcomes(&run(&url, &ws));

    // The cached `secrets` test binary (which the change below leaves as it is) is damaged
    // behind the agent's back, and the `greet` binary in the coordinator's store.
    let layout = files_under(&dir.path().join("first/bundles"));
    let sha_in_layout = |prefix: &str| {
        let found = layout
            .iter()
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with(prefix) && !name.ends_with(".d")
            })
            .unwrap_or_else(|| panic!("no {prefix}* in {layout:?}"));
        testfleet_bundle::blob::hash_file(found)
            .unwrap()
            .sha256_hex()
    };
    let in_agent = files_under(&dir.path().join("first/bundle-files"))
        .into_iter()
        .find(|p| sha_of(p) == sha_in_layout("secrets-"))
        .unwrap();
    // The `greet` binary: every layout of the bundle needs it.
    let in_coordinator = files_under(&dir.path().join("coordinator/bundles/cas"))
        .into_iter()
        .find(|p| sha_of(p) == sha_in_layout("greet"))
        .unwrap();
    damage(&in_agent);
    damage(&in_coordinator);

    // A changed workspace: the agent lays a new bundle out, checks the files it reuses, and
    // fetches the damaged one again (the coordinator's copy of it is sound).
    let mut expected = expected;
    expected.insert(add_a_test(&ws, "added_after_the_damage"), Outcome::Passed);
    assert_eq!(outcomes(&run(&url, &ws)), expected, "{}", first.log());
    let log = first.log();
    assert!(log.contains("a cached bundle file is damaged"), "{log}");
    // The changed test's source and binary, and the damaged file.
    assert_eq!(
        logged(&log, LAID_OUT, "downloaded").last(),
        Some(&3),
        "{log}"
    );
    first.stop();

    // An agent with an empty cache needs the file damaged on the coordinator: the coordinator
    // finds the damage as it sends it and removes it; the tests are infrastructure errors (their
    // retries find the file gone).
    let _fresh = agent(dir.path(), &url, "fresh", 2);
    wait_for_agents(&url, 1);
    let broken = run(&url, &ws);
    assert_eq!(
        broken.status.code(),
        Some(exit_code::RUN_INCOMPLETE),
        "{}",
        stderr(&broken)
    );
    let messages = infra_messages(&events(&broken));
    assert!(
        !messages.is_empty() && messages.iter().all(|m| m.contains("damaged")),
        "{messages:?}"
    );
    assert!(!in_coordinator.exists(), "the damaged file was removed");
    // The next run sends it again, and passes.
    let again = run(&url, &ws);
    assert_eq!(outcomes(&again), expected);
    assert_eq!(uploaded(&again).0, 1, "{}", stderr(&again));
}

#[test]
fn removal_passes_keep_the_files_a_kept_bundle_names_and_remove_the_rest() {
    if !namespaces_or_skip("an agent's bundle files shared with its sandboxed layouts by links") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ws = copy_fixture("hermetic", dir.path());
    let (mut coordinator, url) = coordinator(dir.path());
    let work = dir.path().join("keeper");
    let mut keeper = agent(dir.path(), &url, "keeper", 2);
    wait_for_agents(&url, 1);
    let expected = outcomes(&run(&url, &ws));
    let old_bundle: Vec<PathBuf> = std::fs::read_dir(work.join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(old_bundle.len(), 1, "{old_bundle:?}");
    let mut expected = expected;
    expected.insert(add_a_test(&ws, "added_before_the_removal"), Outcome::Passed);
    assert_eq!(outcomes(&run(&url, &ws)), expected);
    keeper.stop();

    // Two days pass for the first bundle and for every cached file; the second bundle was
    // used just now.
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    for f in files_under(&work.join("bundle-files")) {
        std::fs::File::open(&f)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    }
    std::fs::File::open(&old_bundle[0])
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let before: Vec<PathBuf> = files_under(&work.join("bundle-files"));

    let mut cmd = agent_command(dir.path(), &url, "keeper", 2);
    cmd.args(["--bundle-cache-hours", "1"]);
    let keeper = Proc::spawn(cmd, dir.path().join("keeper-again.log"));
    wait_until("the agent's removal pass", || {
        keeper
            .log()
            .contains("removed cached bundles and bundle files")
    });
    assert!(!old_bundle[0].exists(), "the old bundle went");
    let after = files_under(&work.join("bundle-files"));
    let gone: Vec<&PathBuf> = before.iter().filter(|p| !after.contains(p)).collect();
    // The first bundle's own version of the changed test's source and binary.
    assert_eq!(gone.len(), 2, "{gone:?}");
    for f in &after {
        assert!(
            std::fs::metadata(f).unwrap().nlink() > 1,
            "{} is kept although no kept bundle links it",
            f.display()
        );
    }
    // The kept bundle runs again without fetching anything.
    wait_for_agents(&url, 1);
    assert_eq!(outcomes(&run(&url, &ws)), expected);
    assert!(!keeper.log().contains(LAID_OUT), "{}", keeper.log());

    // The coordinator's side: ten days pass for the first bundle's manifest and for every stored
    // file (the retention is seven); the second bundle's manifest was used just now.
    assert!(coordinator.stop().success());
    let store = dir.path().join("coordinator/bundles");
    let first_digest = old_bundle[0].file_name().unwrap().to_owned();
    let ten_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86_400);
    for f in files_under(&store.join("cas"))
        .iter()
        .chain([&store.join("manifests").join(&first_digest)])
    {
        std::fs::File::open(f)
            .unwrap()
            .set_modified(ten_days_ago)
            .unwrap();
    }
    let before = files_under(&store.join("cas"));
    let (coordinator, _) = coordinator_on(
        dir.path(),
        url.trim_start_matches("http://"),
        "coordinator-again.log",
    );
    wait_until("the coordinator's removal pass", || {
        coordinator
            .log()
            .contains("removed bundle manifests and files no kept bundle needs")
    });
    assert!(!store.join("manifests").join(&first_digest).exists());
    let after = files_under(&store.join("cas"));
    let gone: Vec<&PathBuf> = before.iter().filter(|p| !after.contains(p)).collect();
    assert_eq!(gone.len(), 2, "only the first bundle's own files: {gone:?}");
    // The second bundle is whole: the next run sends nothing.
    wait_for_agents(&url, 1);
    let again = run(&url, &ws);
    assert_eq!(outcomes(&again), expected);
    assert_sent_nothing(&again);
}

#[test]
fn an_upload_cut_off_midway_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, url) = coordinator(dir.path());
    let contents: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut frame = Vec::new();
    let digest = testfleet_bundle::blob::compress(&contents[..], &mut frame).unwrap();
    let wire = pb::BlobDigest {
        sha256: digest.sha256_hex(),
        size: digest.size,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = CoordinatorClient::connect(url.clone()).await.unwrap();
        // The first half of the frame, then a connection that goes away.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::BundleChunk {
            digest: wire.sha256.clone(),
            total_size: wire.size,
            data: frame[..frame.len() / 2].to_vec(),
        })
        .await
        .unwrap();
        let mut uploading = client.clone();
        let upload = tokio::spawn(async move {
            uploading
                .upload_blob(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        let tmp = dir.path().join("coordinator/bundles/tmp");
        wait_until("the upload's temporary file", || {
            std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some())
        });
        upload.abort();
        drop(tx);
        wait_until("the cut-off upload's removal", || {
            std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_none())
        });
        let missing = client
            .clone()
            .find_missing_blobs(pb::FindMissingBlobsRequest {
                blobs: vec![wire.clone()],
            })
            .await
            .unwrap()
            .into_inner()
            .missing;
        assert_eq!(missing, vec![wire]);
    });
    assert!(
        files_under(&dir.path().join("coordinator/bundles/cas")).is_empty(),
        "nothing stored"
    );
}
