//! `.config/nextest.toml`: on 2 agents × 2 slots, locally and on agents that cannot see the
//! workspace, every test of `tests/fixtures/nextest-profiles` ends as `cargo nextest run` ends it,
//! for its default profile and for `--profile ci`; the test group's tests never overlapped, the
//! test that takes two slots ran alone on its agent, and the keys testfleet ignores are named.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use testfleet_model::{EventKind, Outcome, RunEvent};

use crate::support::*;

fn manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nextest-profiles/Cargo.toml")
}

/// Each test's outcome as `cargo nextest run --profile PROFILE` reports it in its JUnit.
fn nextest_outcomes(profile: &str) -> BTreeMap<Key, Outcome> {
    let out = Command::new("cargo")
        .args(["nextest", "run", "--profile", profile, "--manifest-path"])
        .arg(manifest())
        .output()
        .expect("cargo nextest runs");
    // The suite fails on purpose: nextest's exit says nothing here, its report does.
    let report = manifest()
        .parent()
        .unwrap()
        .join(format!("target/nextest/{profile}/junit.xml"));
    let xml = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "nextest wrote no report at {}: {e}\n{}",
            report.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let mut outcomes = BTreeMap::new();
    for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
        let kinds: Vec<(&str, &str)> = case
            .children()
            .filter(|c| c.is_element())
            .map(|c| (c.tag_name().name(), c.attribute("type").unwrap_or("")))
            .collect();
        let outcome = if kinds
            .iter()
            .any(|(k, t)| *k == "failure" && *t == "test timeout")
        {
            Outcome::TimedOut
        } else if kinds.iter().any(|(k, _)| *k == "failure" || *k == "error") {
            Outcome::Failed
        } else if kinds.iter().any(|(k, _)| *k == "flakyFailure") {
            Outcome::Flaky
        } else if kinds.iter().any(|(k, _)| *k == "skipped") {
            Outcome::Skipped
        } else {
            Outcome::Passed
        };
        let key = (
            case.attribute("classname").unwrap().to_owned(),
            case.attribute("name").unwrap().to_owned(),
        );
        outcomes.insert(key, outcome);
    }
    outcomes
}

/// Asserts what the profile promises of the run's events: the test group's tests never ran at
/// once anywhere (each was leased only after the one before had finished, so in the event log one
/// ends before the next starts), and while the test that takes two slots ran on its agent,
/// nothing else ran there.
fn assert_limits_held(events: &[RunEvent], what: &str) {
    let mut serial_open: Option<String> = None;
    let mut open: HashMap<String, Vec<String>> = HashMap::new();
    let mut heavy_ran = false;
    for e in events {
        match &e.kind {
            EventKind::TestStarted { test, agent_id, .. } => {
                if test.name.starts_with("serial_") {
                    assert!(
                        serial_open.is_none(),
                        "{what}: {} started while {serial_open:?} ran",
                        test.name
                    );
                    serial_open = Some(test.name.to_string());
                }
                let here = open.entry(agent_id.clone()).or_default();
                assert!(
                    !here.iter().any(|t| t == "heavy_takes_two_slots"),
                    "{what}: {} started on {agent_id} beside the test that takes both slots",
                    test.name
                );
                if &*test.name == "heavy_takes_two_slots" {
                    assert!(
                        here.is_empty(),
                        "{what}: the heavy test started on {agent_id} beside {here:?}"
                    );
                    heavy_ran = true;
                }
                here.push(test.name.to_string());
            }
            EventKind::TestFinished(f) => {
                if serial_open.as_deref() == Some(&*f.test.name) {
                    serial_open = None;
                }
                if let Some(here) = open.get_mut(&f.agent_id) {
                    here.retain(|t| **t != *f.test.name);
                }
            }
            _ => {}
        }
    }
    assert!(heavy_ran, "{what}: the heavy test never started");
}

/// Checks a run against nextest's outcomes (`reference`), and that its one warning names the keys
/// of the profile's chain that testfleet ignores (`ignored`).
fn check(
    out: &std::process::Output,
    reference: &BTreeMap<Key, Outcome>,
    ignored: &str,
    what: &str,
) {
    let err = stderr(out);
    let events = events(out);
    assert_eq!(&final_outcomes(&events), reference, "{what}\n{err}");
    // Past its slow-timeout period, and not terminated: a pass that says it was slow.
    let slow = attempts(&events, "slow_but_passes");
    assert!(
        slow[0].2.message.starts_with("slow: ran ")
            && slow[0]
                .2
                .message
                .ends_with("past its slow-timeout period of 1.0 s"),
        "{what}: {slow:?}"
    );
    assert_limits_held(&events, what);
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("nextest.toml sets keys"))
        .collect();
    assert_eq!(warnings.len(), 1, "{what}: one warning\n{err}");
    assert!(
        warnings[0].ends_with(&format!("does not support and ignores: {ignored}")),
        "{what}: {}",
        warnings[0]
    );
}

/// The keys of each profile's chain that testfleet does not honour.
const DEFAULT_IGNORED: &str = "profile.default.fail-fast, profile.default.junit";
const CI_IGNORED: &str = "profile.ci.junit, profile.default.fail-fast, profile.default.junit";

#[test]
fn every_outcome_equals_cargo_nextest_s_under_both_profiles_locally_and_on_hidden_agents() {
    if !tool_or_skip(
        "cargo",
        &["nextest", "--version"],
        "cargo install cargo-nextest",
        "every_outcome_equals_cargo_nextest_s_under_both_profiles",
    ) {
        return;
    }
    let default = nextest_outcomes("default");
    let ci = nextest_outcomes("ci");
    // What the fixture is made to show, so a change to nextest or the fixture is noticed here.
    let key = |n: &str| ("fixture-nextest::profiles".to_owned(), n.to_owned());
    assert_eq!(default.len(), 15, "{default:?}");
    assert_eq!(default[&key("slow_but_passes")], Outcome::Passed);
    assert_eq!(default[&key("flaky_twice")], Outcome::Flaky);
    assert_eq!(default[&key("slow_is_terminated")], Outcome::TimedOut);
    assert_eq!(default[&key("leaks_a_child")], Outcome::Failed);
    assert_eq!(ci[&key("flaky_once")], Outcome::Failed, "flaky-result");
    assert!(!ci.contains_key(&key("ci_skips_this")), "default-filter");

    let runs = [
        ("default", &default, DEFAULT_IGNORED),
        ("ci", &ci, CI_IGNORED),
    ];
    // Each profile's run by `line` (which names the profile) against nextest's.
    let check_all = |line: &dyn Fn(&str) -> RunLine, place: &str| {
        for (profile, reference, ignored) in runs {
            let out = line(profile).json().manifest(&manifest()).output();
            check(
                &out,
                reference,
                ignored,
                &format!("{place}, profile {profile}"),
            );
        }
    };
    check_all(
        &|profile| RunLine::local(2).args(&["--slots", "2", "--profile", profile]),
        "local",
    );

    if !namespaces_or_skip("nextest profiles on hidden agents") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, url) = coordinator(dir.path());
    let ws = manifest().parent().unwrap().to_path_buf();
    let _agents: Vec<Proc> = ["np-a", "np-b"]
        .iter()
        .map(|id| {
            Proc::spawn(
                hidden_agent_command(dir.path(), &url, id, &ws),
                dir.path().join(format!("{id}.log")),
            )
        })
        .collect();
    wait_for_agents(&url, 2);
    check_all(
        &|profile| RunLine::on(&url).env("NEXTEST_PROFILE", profile),
        "hidden agents",
    );
}

#[test]
fn an_unknown_profile_is_a_usage_error_before_anything_is_built() {
    let out = RunLine::local(1)
        .args(&["--profile", "nightly"])
        .manifest(&manifest())
        .output();
    assert_eq!(out.status.code(), Some(testfleet_model::exit_code::USAGE));
    let err = stderr(&out);
    assert!(
        err.contains("nextest profile `nightly` is not defined (profiles: ci, default)"),
        "{err}"
    );
    assert!(!err.contains("Compiling"), "said before building: {err}");
}
