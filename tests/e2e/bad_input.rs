//! Bad input gets a clear message and its own exit code, never a panic.

use std::path::Path;
use std::time::{Duration, Instant};

use testfleet_model::exit_code;

use crate::fixture;
use crate::support::*;

fn assert_clean_error(out: &std::process::Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn write_project(dir: &Path, lib: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"scratch\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), lib).unwrap();
}

#[test]
fn not_a_cargo_project() {
    let dir = tempfile::tempdir().unwrap();
    let out = RunLine::local(1).in_dir(dir.path()).output();
    assert_clean_error(
        &out,
        exit_code::NOT_A_CARGO_PROJECT,
        "is not a Cargo project",
    );
    // Someone with a Python suite learns what to write.
    assert!(stderr(&out).contains("[runner]"), "{}", stderr(&out));
}

#[test]
fn unknown_package() {
    let out = RunLine::local(1)
        .arg("-p")
        .arg("no-such-package")
        .manifest(&fixture::manifest())
        .output();
    assert_clean_error(
        &out,
        exit_code::UNKNOWN_PACKAGE,
        "package `no-such-package` is not in the workspace",
    );
    assert!(
        stderr(&out).contains("fixture-basic"),
        "lists the packages that exist"
    );
}

#[test]
fn build_failure_shows_cargos_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_project(dir.path(), "pub fn broken() -> u32 { \"not a number\" }\n");
    let out = RunLine::local(1).in_dir(dir.path()).output();
    assert_clean_error(&out, exit_code::BUILD_FAILED, "building the tests failed");
    assert!(
        stderr(&out).contains("mismatched types"),
        "cargo's own error is shown:\n{}",
        stderr(&out)
    );
}

#[test]
fn unreachable_coordinator_fails_fast_and_names_the_address() {
    // A port that was just free: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    // Told not to wait for a coordinator that may be restarting.
    let out = RunLine::on(&url)
        .args(&["--connect-wait", "0"])
        .manifest(&fixture::manifest())
        .output();
    assert_clean_error(
        &out,
        exit_code::COORDINATOR_UNREACHABLE,
        &format!("cannot reach the coordinator at {url}"),
    );
    // A guard against hanging, far above the milliseconds a refused connection takes.
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn zero_tests_selected() {
    let out = RunLine::local(1)
        .filters(&["no_test_has_this_name"])
        .manifest(&fixture::manifest())
        .output();
    assert_clean_error(&out, exit_code::NO_TESTS, "no test to run matching");
}

#[test]
fn usage_errors_use_clap_code() {
    let out = RunLine::local(1)
        .arg("--coordinator")
        .arg("http://x:1")
        .output();
    assert_eq!(out.status.code(), Some(exit_code::USAGE));
}
