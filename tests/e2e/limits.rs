//! Every coordinator limit, hit on purpose: the request that hits it is refused with an error that
//! names the limit's flag, and the coordinator goes on serving everyone else.

use std::process::Output;

use testfleet_model::exit_code;

use crate::fixture;
use crate::support::*;

/// `testfleet run` of the fixture (only tests matching `filter`, if given) on `url`.
fn run_fixture(url: &str, filter: Option<&str>, extra: &[&str]) -> Output {
    let mut line = RunLine::on(url).arg("--timeout").arg("5");
    if let Some(f) = filter {
        line = line.filters(&[f]);
    }
    line.args(extra).manifest(&fixture::manifest()).output()
}

fn assert_limit(out: &Output, flag: &str) {
    let err = stderr(out);
    // A refused upload is a bundle error (32); any other refused request is 31.
    assert!(
        matches!(
            out.status.code(),
            Some(exit_code::REQUEST_REJECTED | exit_code::BUNDLE_ERROR)
        ),
        "{err}"
    );
    assert!(
        err.contains(&format!("limit {flag}")),
        "expected the limit {flag} to be named in:\n{err}"
    );
}

#[test]
fn runs_tests_output_and_agents_limits_are_named_and_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_coord, addr) = coordinator_with(
        dir.path(),
        "127.0.0.1:0",
        "coordinator.log",
        &[
            "--max-tests-per-run",
            "3",
            "--max-output-bytes",
            "1024",
            "--max-concurrent-runs",
            "1",
            "--max-agents",
            "1",
        ],
    );
    let url = format!("http://{addr}");

    assert_limit(&run_fixture(&url, None, &[]), "--max-tests-per-run");
    assert_limit(
        &run_fixture(&url, Some("adds"), &["--output-cap", "2048"]),
        "--max-output-bytes",
    );
    // No agent yet: a detached run stays running and holds the only run slot.
    let first = run_fixture(&url, Some("adds"), &["--output-cap", "1024", "--detach"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_limit(
        &run_fixture(&url, Some("adds"), &["--output-cap", "1024", "--detach"]),
        "--max-concurrent-runs",
    );

    // One agent fits; a second is refused, says why, and keeps trying without harm.
    let _a1 = agent(dir.path(), &url, "agent-1", 2);
    wait_for_agents(&url, 1);
    let mut a2 = agent(dir.path(), &url, "agent-2", 2);
    let start = std::time::Instant::now();
    while !a2.log().contains("limit --max-agents") {
        assert!(start.elapsed() < GUARD, "agent-2 log:\n{}", a2.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let listed = run_output(testfleet().args(["agents", "--json", "--coordinator", &url]));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 1);

    // The detached run finishes on agent-1, which frees its slot: the next run goes through.
    let start = std::time::Instant::now();
    loop {
        let out = run_fixture(&url, Some("adds"), &["--output-cap", "1024"]);
        if out.status.code() == Some(exit_code::SUCCESS) {
            break;
        }
        assert_limit(&out, "--max-concurrent-runs");
        assert!(start.elapsed() < GUARD, "the first run never finished");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    a2.stop();
}

#[test]
fn bundle_and_message_size_limits_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_small_bundles, addr) = coordinator_with(
        dir.path(),
        "127.0.0.1:0",
        "bundles.log",
        &["--max-bundle-bytes", "1024"],
    );
    assert_limit(
        &run_fixture(&format!("http://{addr}"), Some("adds"), &[]),
        "--max-bundle-bytes",
    );
    // A bundle is uploaded in chunks of 1 MiB: more than this coordinator takes in one message.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (_small_messages, addr) = coordinator_with(
        &other,
        "127.0.0.1:0",
        "messages.log",
        &["--max-message-bytes", "65536"],
    );
    let url = format!("http://{addr}");
    assert_limit(&run_fixture(&url, Some("adds"), &[]), "--max-message-bytes");
    // The refused upload left the coordinator serving.
    let ok = run_output(testfleet().args(["runs", "--json", "--coordinator", &url]));
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
}
