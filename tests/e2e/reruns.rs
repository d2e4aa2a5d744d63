//! Running again what did not pass: `run --failed [RUN]` on local history and on a coordinator,
//! and a `ci` pipeline retried after its job was killed, whose next attempt runs only what had
//! not passed and exits with the status of the whole.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};

use testfleet_model::{EventKind, Outcome, RunEvent, RunId, exit_code};

use crate::fixture;
use crate::support::*;

/// The fixture's tests that do not pass without retries.
fn not_passing() -> BTreeSet<Key> {
    fixture::expected(false)
        .into_iter()
        .filter(|(_, o)| !matches!(o, Outcome::Passed | Outcome::Flaky | Outcome::Skipped))
        .map(|(k, _)| k)
        .collect()
}

fn ran(out: &Output) -> BTreeMap<Key, Outcome> {
    final_outcomes(&events(out))
}

#[test]
fn failed_runs_again_only_what_did_not_pass_locally_and_on_a_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("local");
    let local = || {
        RunLine::local(1)
            .json()
            .timeout(3, 1)
            .data_dir(&data)
            .manifest(&fixture::manifest())
    };
    let first = local().output();
    assert_eq!(ran(&first), fixture::expected(false), "{}", stderr(&first));
    let wanted = not_passing();
    assert!(wanted.len() >= 3, "{wanted:?}");

    let again = local().arg("--failed").output();
    let err = stderr(&again);
    assert_eq!(
        ran(&again).keys().cloned().collect::<BTreeSet<_>>(),
        wanted,
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "running again the {} test(s) that did not pass in run {}",
            wanted.len(),
            run_id_of(&first)
        )),
        "{err}"
    );
    // An earlier run by its id, with a filter on top: only its failures that the filter selects.
    let named = local()
        .args(&[
            "--failed",
            &run_id_of(&first).to_string(),
            "-E",
            "test(crashes)",
        ])
        .output();
    let keys: Vec<Key> = ran(&named).into_keys().collect();
    assert_eq!(
        keys,
        [("fixture-basic".to_owned(), "tests::crashes".to_owned())],
        "{}",
        stderr(&named)
    );

    // The same against a coordinator, whose history the client reads over gRPC.
    let (_coordinator, url) = coordinator(dir.path());
    let _agent = agent(dir.path(), &url, "rerun-agent", 2);
    wait_for_agents(&url, 1);
    let on = || {
        RunLine::on(&url)
            .json()
            .retries(0)
            .timeout(3, 1)
            .manifest(&fixture::manifest())
    };
    let first = on().output();
    assert_eq!(ran(&first), fixture::expected(false), "{}", stderr(&first));
    let again = on().arg("--failed").output();
    assert_eq!(
        ran(&again).keys().cloned().collect::<BTreeSet<_>>(),
        wanted,
        "{}",
        stderr(&again)
    );
    // A run of another suite cannot be rerun here.
    let wrong = RunLine::on(&url)
        .args(&["--failed", "999999"])
        .manifest(&fixture::manifest())
        .output();
    assert_ne!(wrong.status.code(), Some(0), "{}", stderr(&wrong));
    assert!(
        stderr(&wrong).contains("run 999999 does not exist"),
        "{}",
        stderr(&wrong)
    );
}

fn ci_job(
    dir: &Path,
    url: &str,
    key: &str,
    attempt: u32,
    timeout: u32,
    filters: &[&str],
) -> std::process::Command {
    let mut cmd = testfleet();
    cmd.args(["ci", "--run-key", key, "--nodes", "1", "--node", "0"])
        .args(["--attempt", &attempt.to_string()])
        .args([
            "--coordinator",
            url,
            "--slots",
            "2",
            "--no-docker",
            "--json",
        ])
        .args([
            "--timeout",
            &timeout.to_string(),
            "--kill-grace",
            "1",
            "--retries",
            "0",
        ])
        .arg("--work-dir")
        .arg(dir.join(format!("job-{key}")))
        .arg("--manifest-path")
        .arg(fixture::manifest())
        .args(filters);
    cmd
}

#[test]
fn a_ci_pipeline_retried_after_its_job_was_killed_runs_only_what_had_not_passed() {
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, addr) = coordinator_with(
        dir.path(),
        "127.0.0.1:0",
        "coordinator.log",
        &["--lease-timeout", "3"],
    );
    let url = format!("http://{addr}");
    let key = unique("retried");
    let filters = ["tests::adds", "tests::noisy", "tests::hangs"];

    // Attempt 1 is killed once every test but the one that hangs has passed.
    let mut first = ci_job(dir.path(), &url, &key, 1, 600, &filters);
    first.stdout(Stdio::piped());
    let mut first = Proc::spawn(first, dir.path().join("attempt-1.log"));
    let stdout = BufReader::new(first.child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut passed, mut hanging) = (0, false);
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            let e: RunEvent = serde_json::from_str(&line).unwrap();
            match &e.kind {
                EventKind::TestStarted { test, .. } if &*test.name == "tests::hangs" => {
                    hanging = true
                }
                EventKind::TestFinished(f) if f.final_outcome == Some(Outcome::Passed) => {
                    passed += 1
                }
                _ => {}
            }
            if hanging && passed == 3 {
                let _ = tx.send(e.run_id);
                break;
            }
        }
    });
    let first_run: RunId = rx
        .recv_timeout(GUARD)
        .unwrap_or_else(|_| panic!("attempt 1 never got that far:\n{}", first.log()));
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    // Attempt 2 runs the hanging test alone, and fails as the whole pipeline does.
    let second = Watched::spawn(
        ci_job(dir.path(), &url, &key, 2, 2, &filters),
        dir.path().join("attempt-2.log"),
    )
    .finish();
    let log = stderr(&second);
    assert_eq!(second.status.code(), Some(exit_code::TESTS_FAILED), "{log}");
    assert!(
        log.contains(&format!(
            "attempt 2: running the 1 test(s) that did not pass in run(s) {first_run}"
        )),
        "{log}"
    );
    let outcomes: Vec<(Key, Outcome)> = ran(&second).into_iter().collect();
    assert_eq!(
        outcomes,
        [(
            ("fixture-basic".to_owned(), "tests::hangs".to_owned()),
            Outcome::TimedOut
        )],
        "{log}"
    );

    // A pipeline whose first attempt passed has nothing to run on its second, and passes.
    let key = unique("passed");
    let passing = ["tests::adds", "tests::noisy"];
    let first = Watched::spawn(
        ci_job(dir.path(), &url, &key, 1, 60, &passing),
        dir.path().join("passed-1.log"),
    )
    .finish();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let second = Watched::spawn(
        ci_job(dir.path(), &url, &key, 2, 60, &passing),
        dir.path().join("passed-2.log"),
    )
    .finish();
    let log = stderr(&second);
    assert_eq!(second.status.code(), Some(0), "{log}");
    assert!(log.contains("attempt 2: every test passed"), "{log}");
    assert!(ran(&second).is_empty(), "{log}");
}
