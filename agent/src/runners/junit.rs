//! The runner for tools that write JUnit (pytest, or a command a suite names): a job's tests go to
//! one process as ids (`{tests}`), the tool writes its report where `{junit}` says, and each test's
//! verdict, duration and output are read back from the case that reports it.
//!
//! The process's timeout is the tests' timeouts added up; at it the group gets SIGINT (a Ctrl-C, on
//! which pytest and most tools still write what they finished) and SIGKILL after the grace period.
//! A process that ends without reporting some of its tests (a crash, a hang, a tool that stopped
//! early) does not say which test was to blame, so those run again, one per process, and only a
//! test alone in its process takes the process's end as its own verdict.

use std::os::unix::process::ExitStatusExt;

use testfleet_model::junit::read::{self, Case};
use testfleet_model::{AttemptResult, AttemptStatus, CaseName, IdStyle, Runner};
use tokio::sync::watch;

use crate::executor::{self, Exit, Finished, TestCommand};
use crate::runners::libtest::signal_name;

/// One result per name, in order.
pub async fn run(
    cmd: &TestCommand,
    args: &[String],
    ids: IdStyle,
    names: &[String],
    cancel: watch::Receiver<bool>,
) -> Vec<AttemptResult> {
    let (reported, finished) = once(cmd, args, ids, names, cancel.clone()).await;
    let mut results = Vec::with_capacity(names.len());
    for (name, r) in names.iter().zip(reported) {
        results.push(match r {
            Some(r) => r,
            None if names.len() > 1 && worth_narrowing(&finished) => {
                let (mut alone, f) =
                    once(cmd, args, ids, std::slice::from_ref(name), cancel.clone()).await;
                alone
                    .pop()
                    .flatten()
                    .unwrap_or_else(|| unreported(&f, cmd, ids, 1))
            }
            None => unreported(&finished, cmd, ids, names.len()),
        });
    }
    results
}

/// A process that did run (not one that never started or was cancelled) can blame one test.
fn worth_narrowing(f: &Finished) -> bool {
    matches!(f.exit, Exit::Status(_) | Exit::TimedOut { .. })
}

/// One process over `names`: what its report says of each, and how the process ended.
async fn once(
    cmd: &TestCommand,
    args: &[String],
    ids: IdStyle,
    names: &[String],
    cancel: watch::Receiver<bool>,
) -> (Vec<Option<AttemptResult>>, Finished) {
    // In a sandbox the report is written to the run's private /tmp, which the agent reaches
    // under the sandbox's scratch space.
    let (base, seen) = match &cmd.sandbox {
        Some(s) => s.tmp(),
        None => (std::env::temp_dir(), std::env::temp_dir()),
    };
    let dir = match tempfile::Builder::new()
        .prefix("testfleet-junit-")
        .tempdir_in(&base)
    {
        Ok(d) => d,
        Err(e) => {
            let why = format!("cannot make a directory for its JUnit report: {e}");
            let f = Finished {
                exit: Exit::SpawnFailed(std::io::Error::new(e.kind(), why)),
                duration: Default::default(),
                output: vec![],
                omitted: 0,
                leaked: false,
            };
            return (vec![None; names.len()], f);
        }
    };
    let report = dir.path().join("junit.xml");
    let report_seen = seen
        .join(dir.path().strip_prefix(&base).unwrap_or(dir.path()))
        .join("junit.xml");
    let mut this = cmd.clone();
    this.args = Runner::expand(args, names, &report_seen.display().to_string());
    this.timeout = cmd
        .timeout
        .saturating_mul(names.len().min(u32::MAX as usize) as u32);
    let mut finished = executor::run_stopping_with(&this, cancel, libc::SIGINT).await;
    let cases = match std::fs::read_to_string(&report) {
        Ok(text) => match read::parse(&text, cmd.output_cap) {
            Ok(cases) => cases,
            Err(e) => {
                note(
                    &mut finished,
                    &format!("its JUnit report is unreadable: {e}"),
                );
                vec![]
            }
        },
        Err(_) if matches!(finished.exit, Exit::Status(_)) => {
            note(&mut finished, "it wrote no JUnit report");
            vec![]
        }
        Err(_) => vec![],
    };
    let results = names.iter().map(|n| verdict(n, &cases, ids)).collect();
    (results, finished)
}

/// Adds a line to what the process printed, for the tests its end is blamed on.
fn note(f: &mut Finished, line: &str) {
    f.output
        .extend_from_slice(format!("\n[testfleet] {line}\n").as_bytes());
}

/// The verdict of the cases reporting `id`: the last attempt of each, the worst of them (pytest
/// reports an error in a test's teardown as a second case of the same test).
fn verdict(id: &str, cases: &[Case], ids: IdStyle) -> Option<AttemptResult> {
    let mut found: Option<AttemptResult> = None;
    for c in cases
        .iter()
        .filter(|c| ids.reports(id, &c.classname, &c.name))
    {
        let this = match (&c.skipped, c.attempts.last()) {
            // A test the tool skipped at run time (pytest's `skip`, `skipif`, `xfail`).
            (Some(why), _) => AttemptResult {
                status: AttemptStatus::Skipped,
                message: if why.is_empty() {
                    "skipped".to_owned()
                } else {
                    why.clone()
                },
                ..AttemptResult::infra_error("")
            },
            (None, Some(a)) => a.clone(),
            (None, None) => continue,
        };
        let mut this = match ids {
            IdStyle::Pytest => AttemptResult {
                output: drop_empty_sections(&this.output),
                ..this
            },
            IdStyle::Plain => this,
        };
        // The tool's own names of the case, for testfleet's JUnit to keep.
        this.case = Some(CaseName {
            classname: c.classname.clone(),
            name: c.name.clone(),
        });
        found = Some(match found {
            None => this,
            Some(mut seen) => {
                seen.duration += this.duration;
                seen.output.extend_from_slice(&this.output);
                seen.output_omitted_bytes += this.output_omitted_bytes;
                if severity(this.status) > severity(seen.status) {
                    seen.status = this.status;
                    seen.message = this.message;
                }
                seen
            }
        });
    }
    found
}

/// How bad a case's verdict is, for a test reported twice: a failure beats a skip beats a pass.
fn severity(status: AttemptStatus) -> u8 {
    match status {
        AttemptStatus::Passed => 0,
        AttemptStatus::Skipped => 1,
        AttemptStatus::Failed | AttemptStatus::TimedOut | AttemptStatus::InfraError => 2,
    }
}

/// pytest's `junit_logging=all` heads every section of captured output (`--- Captured Out ---`),
/// empty or not: the empty ones go.
fn drop_empty_sections(output: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(output);
    let mut out = String::with_capacity(text.len());
    let mut section: Option<(&str, String)> = None;
    let keep = |out: &mut String, s: Option<(&str, String)>| {
        if let Some((head, body)) = s
            && !body.trim().is_empty()
        {
            out.push_str(head);
            out.push_str(&body);
        }
    };
    for line in text.split_inclusive('\n') {
        let head = line.trim_end();
        if head.starts_with("---") && head.ends_with("---") && head.contains(" Captured ") {
            keep(&mut out, section.take());
            section = Some((line, String::new()));
        } else if let Some((_, body)) = &mut section {
            body.push_str(line);
        } else {
            out.push_str(line);
        }
    }
    keep(&mut out, section.take());
    out.into_bytes()
}

/// The verdict of a test its process's report does not mention, from how the process ended.
fn unreported(f: &Finished, cmd: &TestCommand, ids: IdStyle, tests: usize) -> AttemptResult {
    let program = cmd.program.display();
    let (status, message, exit_code, signal) = match &f.exit {
        Exit::Status(s) => match (s.code(), s.signal()) {
            (Some(0), _) => (
                AttemptStatus::InfraError,
                format!("`{program}` exited with code 0 without reporting this test"),
                Some(0),
                None,
            ),
            // pytest: 4 is a usage error (an id it does not find), 5 no test collected.
            (Some(code @ (4 | 5)), _) if ids == IdStyle::Pytest => (
                AttemptStatus::InfraError,
                format!("pytest does not find this test (exit code {code})"),
                Some(code),
                None,
            ),
            (Some(code), _) => (
                AttemptStatus::Failed,
                format!("`{program}` exited with code {code} without reporting this test"),
                Some(code),
                None,
            ),
            (None, Some(sig)) => (
                AttemptStatus::Failed,
                format!(
                    "killed by signal {sig} ({}) before reporting this test",
                    signal_name(sig)
                ),
                None,
                Some(sig),
            ),
            (None, None) => (
                AttemptStatus::Failed,
                format!("ended with status {s}"),
                None,
                None,
            ),
        },
        Exit::TimedOut { killed } => {
            let how = if *killed {
                "did not stop on SIGINT and was killed"
            } else {
                "stopped with SIGINT"
            };
            let secs = cmd.timeout.as_secs_f64() * tests as f64;
            (
                AttemptStatus::TimedOut,
                format!("timed out after {secs:.1} s; {how}"),
                None,
                None,
            )
        }
        Exit::Cancelled => (
            AttemptStatus::InfraError,
            "cancelled by the agent".to_owned(),
            None,
            None,
        ),
        Exit::SpawnFailed(e) => (
            AttemptStatus::InfraError,
            format!("failed to start `{program}`: {e}"),
            None,
            None,
        ),
    };
    AttemptResult {
        status,
        duration: f.duration,
        exit_code,
        signal,
        output: f.output.clone(),
        output_omitted_bytes: f.omitted,
        message,
        case: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_captured_sections_are_dropped_and_the_rest_kept() {
        let bar = "-".repeat(20);
        let out = format!(
            "E   assert 1 == 2\n{bar} Captured Log {bar}\n\n{bar} Captured Out {bar}\nhello\n\n{bar} Captured Err {bar}\n\n"
        );
        let kept = String::from_utf8(drop_empty_sections(out.as_bytes())).unwrap();
        assert_eq!(
            kept,
            format!("E   assert 1 == 2\n{bar} Captured Out {bar}\nhello\n\n")
        );
    }

    fn case(name: &str, status: AttemptStatus, output: &str) -> Case {
        Case {
            classname: "tests.test_db".into(),
            name: name.into(),
            attempts: vec![AttemptResult {
                status,
                output: output.into(),
                ..AttemptResult::infra_error("")
            }],
            skipped: None,
        }
    }

    #[test]
    fn a_test_reported_twice_takes_the_worse_verdict_and_both_outputs() {
        // pytest reports an error in teardown as a second case of a passed test.
        let cases = [
            case("test_a", AttemptStatus::Passed, "call "),
            case("test_a", AttemptStatus::Failed, "teardown"),
            case("test_b", AttemptStatus::Passed, ""),
        ];
        let a = verdict("tests/test_db.py::test_a", &cases, IdStyle::Pytest).unwrap();
        assert_eq!(
            (a.status, a.output.as_slice()),
            (AttemptStatus::Failed, &b"call teardown"[..])
        );
        let b = verdict("tests/test_db.py::test_b", &cases, IdStyle::Pytest).unwrap();
        assert_eq!(b.status, AttemptStatus::Passed);
        assert!(verdict("tests/test_db.py::test_c", &cases, IdStyle::Pytest).is_none());
        let skipped = Case {
            skipped: Some("not today".into()),
            attempts: vec![],
            ..case("test_s", AttemptStatus::Passed, "")
        };
        let s = verdict("tests/test_db.py::test_s", &[skipped], IdStyle::Pytest).unwrap();
        assert_eq!(
            (s.status, s.message.as_str()),
            (AttemptStatus::Skipped, "not today")
        );
    }
}
