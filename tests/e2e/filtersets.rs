//! `-E`/`--filterset`: testfleet selects exactly the tests `cargo nextest list -E` selects on the
//! same suite, and a filterset that does not parse is a usage error pointing at the character.

use std::collections::BTreeSet;
use std::process::Command;

use testfleet_model::{EventKind, exit_code};

use crate::fixture;
use crate::support::*;

/// What nextest selects: (binary id, test) of every test that matches and is not ignored.
fn nextest_selects(expr: &str) -> BTreeSet<(String, String)> {
    let out = Command::new("cargo")
        .args(["nextest", "list", "--message-format", "json", "-E", expr])
        .arg("--manifest-path")
        .arg(fixture::manifest())
        .output()
        .expect("cargo nextest runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut selected = BTreeSet::new();
    for (binary_id, suite) in list["rust-suites"].as_object().unwrap() {
        for (name, case) in suite["testcases"].as_object().unwrap() {
            if case["filter-match"]["status"] == "matches" {
                selected.insert((binary_id.clone(), name.clone()));
            }
        }
    }
    selected
}

fn testfleet_runs(expr: &str) -> BTreeSet<(String, String)> {
    let out = RunLine::local(1)
        .json()
        .timeout(5, 1)
        .manifest(&fixture::manifest())
        .args(&["-E", expr])
        .output();
    let ran: BTreeSet<(String, String)> = events(&out)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::TestFinished(f) if f.final_outcome.is_some() => {
                Some((f.test.binary_id.to_string(), f.test.name.to_string()))
            }
            _ => None,
        })
        .collect();
    assert!(!ran.is_empty(), "{expr}: nothing ran: {}", stderr(&out));
    ran
}

#[test]
fn filtersets_select_what_cargo_nextest_list_selects() {
    if !tool_or_skip(
        "cargo",
        &["nextest", "--version"],
        "cargo install cargo-nextest",
        "filtersets_select_what_cargo_nextest_list_selects",
    ) {
        return;
    }
    // None of them takes the fixture's test that hangs or the slow one.
    for expr in [
        "test(adds)",
        "kind(test)",
        "binary_id(fixture-basic::integration) | test(=tests::fails)",
        "test(/^tests::(adds|noisy)/) + kind(test) - test(too)",
        "deps(fixture-basic) & test(~adds_)",
        "rdeps(fixture-*) and not (kind(lib) or test(passes_too))",
        "package(fixture-*) & test(#*zero)",
        "binary(fixture_basic) & !test(/hangs|slow|flaky|crashes|fails|env|bundled|noisy/)",
    ] {
        assert_eq!(testfleet_runs(expr), nextest_selects(expr), "-E '{expr}'");
    }
}

#[test]
fn a_filterset_that_does_not_parse_is_a_usage_error_that_points_at_it() {
    let out = RunLine::local(1)
        .manifest(&fixture::manifest())
        .args(&["-E", "test(adds) & tset(x)"])
        .output();
    assert_eq!(out.status.code(), Some(exit_code::USAGE));
    let err = stderr(&out);
    assert!(err.contains("unknown predicate `tset`"), "{err}");
    assert!(
        err.contains("  test(adds) & tset(x)\n               ^"),
        "{err}"
    );
}
