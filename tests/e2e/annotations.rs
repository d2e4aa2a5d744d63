//! What a CI user reads of a failed run: GitHub `::error` annotations at the line each test failed,
//! and a Markdown summary that tells, from history, which failures are new, which are known
//! flaky, quarantined, or already failing on the default branch.

use std::path::Path;
use std::process::Output;

use crate::fixture;
use crate::support::*;

/// The fixture's tests these runs take: one that always fails, one that fails in the runs
/// `FIXTURE_FAIL_RUNS` lists, one that fails on every first attempt, one that crashes, one that
/// passes.
const SELECTION: &str =
    "test(=tests::fails) | test(pattern_flaky) | test(flaky_first_attempt) | test(=tests::adds)";

fn local_run(data: &Path, branch: &str, fail_runs: &str, extra: &[&str]) -> Output {
    RunLine::local(1)
        .data_dir(data)
        .timeout(30, 1)
        .manifest(&fixture::manifest())
        .args(&["--branch", branch])
        .env("FIXTURE_FAIL_RUNS", fail_runs)
        .env("GITHUB_WORKSPACE", repo())
        .env_remove("GITHUB_ACTIONS")
        .args(extra)
        .output()
}

/// The line of `needle` in the fixture's library, from 1.
fn line_of(needle: &str) -> usize {
    let src = std::fs::read_to_string(repo().join("tests/fixtures/basic/src/lib.rs")).unwrap();
    src.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn failures_are_annotated_where_they_failed_and_classified_by_history() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("history");
    // Run 1, on main: `fails` fails; `pattern_flaky` and `flaky_first_attempt` fail once and pass
    // on their retry (flaky on one revision).
    let first = local_run(&data, "main", "1", &["--retries", "1", "-E", SELECTION]);
    assert_eq!(first.status.code(), Some(10), "{}", stderr(&first));

    // A test quarantined since, and one that has never run before.
    let q = run_output(
        testfleet()
            .args([
                "quarantine",
                "add",
                "tests::flaky_first_attempt",
                "--data-dir",
            ])
            .arg(&data)
            .args(["--reason", "known"]),
    );
    assert!(q.status.success(), "{}", stderr(&q));

    // Run 2, on a feature branch, no retries: all four fail.
    let md = dir.path().join("summary.md");
    let second = local_run(
        &data,
        "feature",
        "2",
        &[
            "--retries",
            "0",
            "-E",
            &format!("{SELECTION} | test(=tests::crashes)"),
            "--markdown-summary",
            md.to_str().unwrap(),
            "--github-annotations",
        ],
    );
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(10), "{err}");
    let summary = std::fs::read_to_string(&md).unwrap();
    assert!(
        summary.contains(
            "#### Failed (4): 1 already failing on `main`, 1 known flaky, 1 new, 1 quarantined"
        ),
        "{summary}"
    );
    for (test, class) in [
        ("tests::fails", "already failing on main (run "),
        ("tests::pattern_flaky", "known flaky"),
        ("tests::crashes", "new"),
        ("tests::flaky_first_attempt", "quarantined"),
    ] {
        let line = summary
            .lines()
            .find(|l| l.contains(&format!("<code>{test}</code>")))
            .unwrap_or_else(|| panic!("{test} is not in the summary:\n{summary}"));
        assert!(line.contains(&format!("— {class}")), "{line}");
    }

    // One `::error` per test that failed the run (the quarantined one does not), at its panic.
    let stdout = String::from_utf8_lossy(&second.stdout);
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("::error "))
        .collect();
    assert_eq!(errors.len(), 3, "{stdout}");
    let fails = format!(
        "::error file=tests/fixtures/basic/src/lib.rs,line={},col=9,title=fixture-basic tests%3A%3Afails::failed: exited with code 101%0Aassertion `left == right` failed: arithmetic is broken on purpose%0A  left: 4%0A right: 5",
        line_of("arithmetic is broken on purpose")
    );
    assert!(errors.contains(&fails.as_str()), "{stdout}");
    let pattern = errors
        .iter()
        .find(|l| l.contains("title=fixture-basic tests%3A%3Apattern_flaky"))
        .unwrap();
    assert!(
        pattern.starts_with(&format!(
            "::error file=tests/fixtures/basic/src/lib.rs,line={},",
            line_of("run {run} attempt {attempt} fails on purpose")
        )),
        "{pattern}"
    );
    // A crash has no panic to point at: an error without a place, saying why.
    assert!(
        errors.iter().any(|l| l.starts_with(
            "::error title=fixture-basic tests%3A%3Acrashes::failed: killed by signal 6 (SIGABRT)"
        )),
        "{stdout}"
    );

    // Off unless asked or inside GitHub Actions.
    let quiet = local_run(
        &data,
        "feature",
        "",
        &["--retries", "0", "-E", "test(=tests::fails)"],
    );
    assert!(!String::from_utf8_lossy(&quiet.stdout).contains("::error"));
    let on_github = RunLine::local(1)
        .data_dir(&data)
        .manifest(&fixture::manifest())
        .args(&["-E", "test(=tests::fails)"])
        .env("GITHUB_ACTIONS", "true")
        .output();
    assert!(String::from_utf8_lossy(&on_github.stdout).contains("::error file="));
}
