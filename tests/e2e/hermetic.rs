//! Hermetic remote runs: the `hermetic` fixture crate (a binary its tests run by compile-time and
//! run-time paths, fixtures read through `CARGO_MANIFEST_DIR`, a build script's `OUT_DIR`, a test
//! that writes beside its fixtures, tests that hunt for the agent's secrets) on agents that cannot
//! see the workspace, outcome by outcome against `cargo nextest run` and the local mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use testfleet_model::{EventKind, NoticeLevel, Outcome, exit_code};

use crate::support::*;

/// Agent tokens the fixture's secret tests recognise (by `hermetic-canary`) wherever they look.
const TOKEN_BY_ENV: &str = "hermetic-canary-agent-token-env-01";
const TOKEN_BY_FILE: &str = "hermetic-canary-agent-token-file-2";
const CLIENT: &str = "client-token-for-the-hermetic-e2e-3";

fn nextest_or_skip(checks: &str) -> bool {
    tool_or_skip(
        "cargo",
        &["nextest", "--version"],
        "cargo install cargo-nextest",
        checks,
    )
}

/// Each test's outcome under `cargo nextest run`, from its JUnit report.
fn nextest_outcomes(ws: &Path) -> BTreeMap<Key, Outcome> {
    std::fs::create_dir_all(ws.join(".config")).unwrap();
    std::fs::write(
        ws.join(".config/nextest.toml"),
        "[profile.default.junit]\npath = \"junit.xml\"\n",
    )
    .unwrap();
    let out = Command::new("cargo")
        .args(["nextest", "run", "--no-fail-fast", "--manifest-path"])
        .arg(ws.join("Cargo.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(100), "{}", stderr(&out));
    let xml = std::fs::read_to_string(ws.join("target/nextest/default/junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|c| {
            let failed = c
                .children()
                .any(|f| f.has_tag_name("failure") || f.has_tag_name("error"));
            let key = (
                c.attribute("classname").unwrap().to_owned(),
                c.attribute("name").unwrap().to_owned(),
            );
            (
                key,
                if failed {
                    Outcome::Failed
                } else {
                    Outcome::Passed
                },
            )
        })
        .collect()
}

/// testfleet's outcomes, with the ignored test (nextest leaves it out of its report) checked apart.
fn ran(events: &[testfleet_model::RunEvent]) -> BTreeMap<Key, Outcome> {
    let mut outcomes = final_outcomes(events);
    let skipped: Vec<Key> = outcomes
        .iter()
        .filter(|(_, o)| **o == Outcome::Skipped)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        skipped,
        [("hermetic::cli".to_owned(), "ignored_on_purpose".to_owned())]
    );
    outcomes.retain(|_, o| *o != Outcome::Skipped);
    outcomes
}

fn run_json(line: RunLine, ws: &Path) -> Vec<testfleet_model::RunEvent> {
    let out = line
        .retries(0)
        .json()
        .manifest(&ws.join("Cargo.toml"))
        .output();
    assert_eq!(
        out.status.code(),
        Some(exit_code::TESTS_FAILED),
        "{}",
        stderr(&out)
    );
    events(&out)
}

/// A hidden agent (`hidden_agent_command`) with the fixture's tokens and secrets.
fn hidden_agent(dir: &Path, url: &str, id: &str, ws: &Path, token_file: Option<&Path>) -> Proc {
    let mut cmd = hidden_agent_command(dir, url, id, ws);
    // What the fixture's secret tests look at, passed to them by its `pass_env`.
    cmd.env("HERMETIC_AGENT_WORK_DIR", dir.join(id));
    match token_file {
        Some(f) => {
            cmd.arg("--token-file").arg(f);
            cmd.env("HERMETIC_TOKEN_FILE", f);
        }
        None => {
            cmd.env("TESTFLEET_TOKEN", TOKEN_BY_ENV);
        }
    }
    Proc::spawn(cmd, dir.join(format!("{id}.log")))
}

/// Every file of an agent's bundle cache with its contents, to show tests never changed it.
fn cache_snapshot(work_dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), root, out);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&work_dir.join("bundles"), work_dir, &mut out);
    out
}

#[test]
fn a_crate_that_reads_its_files_and_runs_its_binary_passes_remotely_as_under_nextest() {
    let checks = "hermetic remote runs on agents that cannot see the workspace";
    if !namespaces_or_skip(checks) || !nextest_or_skip(checks) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ws = copy_fixture("hermetic", dir.path());
    let reference = nextest_outcomes(&ws);
    assert_eq!(
        reference
            .iter()
            .filter(|(_, o)| **o == Outcome::Failed)
            .count(),
        1,
        "the fixture fails one test on purpose: {reference:?}"
    );

    let local = run_json(RunLine::local(2), &ws);
    assert_eq!(ran(&local), reference, "local mode against nextest");

    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("client ci {CLIENT}\nagent by-env {TOKEN_BY_ENV}\nagent by-file {TOKEN_BY_FILE}\n"),
    )
    .unwrap();
    let token_file = dir.path().join("agent-token");
    std::fs::write(&token_file, format!("{TOKEN_BY_FILE}\n")).unwrap();
    let (_coordinator, addr) = coordinator_with(
        dir.path(),
        "127.0.0.1:0",
        "coordinator.log",
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    let url = format!("http://{addr}");
    let remote = || run_json(RunLine::on(&url).token(CLIENT), &ws);

    // Both agents, then each alone: every secret test runs on an agent given its token each way.
    let mut by_env = hidden_agent(dir.path(), &url, "by-env", &ws, None);
    let mut by_file = hidden_agent(dir.path(), &url, "by-file", &ws, Some(&token_file));
    wait_for_agents_with(&url, 2, Some(CLIENT), &[]);
    let listed = testfleet()
        .env("TESTFLEET_TOKEN", CLIENT)
        .args(["agents", "--json", "--coordinator", &url])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let a: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(a["sandbox_status"], "", "{line}");
    }
    // The agent's own environment, as any process of its user could read it, holds no token.
    let environ = std::fs::read(format!("/proc/{}/environ", by_env.child.id())).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("hermetic-canary"),
        "the agent's /proc/PID/environ shows its token"
    );

    assert_eq!(
        ran(&remote()),
        reference,
        "two hidden agents against nextest"
    );
    let cached = cache_snapshot(&dir.path().join("by-env"));
    assert!(
        cached.keys().any(|p| p.ends_with("tests/data/input.txt")),
        "the fixtures travel in the bundle: {:?}",
        cached.keys().collect::<Vec<_>>()
    );
    assert!(
        !cached
            .keys()
            .any(|p| p.to_string_lossy().contains("written-")),
        "the bundle holds no file git ignores"
    );

    by_file.stop();
    let alone = remote();
    assert_eq!(
        ran(&alone),
        reference,
        "the agent given its token by the environment"
    );
    by_env.stop();
    let _by_file = hidden_agent(dir.path(), &url, "by-file", &ws, Some(&token_file));
    wait_for_agents_with(&url, 1, Some(CLIENT), &[]);
    assert_eq!(ran(&remote()), reference, "the agent given a token file");

    assert_eq!(
        cache_snapshot(&dir.path().join("by-env")),
        cached,
        "tests that write beside their fixtures never change the cached bundle"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("tests/data/input.txt")).unwrap(),
        "fixture contents\n"
    );
}

#[test]
fn an_agent_without_a_sandbox_says_so_and_the_run_warns_once() {
    let dir = tempfile::tempdir().unwrap();
    let ws = copy_fixture("hermetic", dir.path());
    let (_coordinator, url) = coordinator(dir.path());
    let mut cmd = agent_command(dir.path(), &url, "plain", 2);
    cmd.arg("--no-sandbox");
    let _agent = Proc::spawn(cmd, dir.path().join("plain.log"));
    wait_for_agents(&url, 1);
    let listed = testfleet()
        .args(["agents", "--coordinator", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("plain: no sandbox: turned off with --no-sandbox"),
        "{text}"
    );
    let events = run_json(RunLine::on(&url), &ws);
    let warnings: Vec<&String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Notice {
                level: NoticeLevel::Warning,
                message,
            } if message.contains("without a sandbox") => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("agent plain"), "{}", warnings[0]);

    // A bundle over the limit is refused before anything is sent, naming where its bytes are.
    let out = RunLine::on(&url)
        .arg("--max-bundle-bytes")
        .arg("1000")
        .manifest(&ws.join("Cargo.toml"))
        .output();
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("more than --max-bundle-bytes") && err.contains("target/debug"),
        "{err}"
    );
}
