//! The libtest runner: one process per test, `BIN --exact NAME --nocapture`, read by exit status.

use std::os::unix::process::ExitStatusExt;

use testfleet_model::{AttemptResult, AttemptStatus};

use crate::executor::{Exit, Finished};

pub fn args(test_name: &str) -> Vec<String> {
    vec![
        "--exact".into(),
        test_name.into(),
        "--nocapture".into(),
        "--test-threads".into(),
        "1".into(),
    ]
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGTRAP => "SIGTRAP",
        _ => "signal",
    }
}

/// Reads a finished libtest process as an attempt result.
pub fn interpret(f: Finished, timeout_secs: f64) -> AttemptResult {
    let mut exit_code = None;
    let mut signal = None;
    let (status, message) = match f.exit {
        Exit::Status(s) if s.success() => {
            // `--exact` with a name the binary does not have still exits 0, having run nothing.
            if contains(&f.output, b"running 0 tests") {
                (
                    AttemptStatus::InfraError,
                    "the test binary does not contain this test (it ran 0 tests)".to_owned(),
                )
            } else {
                exit_code = Some(0);
                (AttemptStatus::Passed, String::new())
            }
        }
        Exit::Status(s) => match (s.code(), s.signal()) {
            (Some(code), _) => {
                exit_code = Some(code);
                (AttemptStatus::Failed, format!("exited with code {code}"))
            }
            (None, Some(sig)) => {
                signal = Some(sig);
                let core = if s.core_dumped() { ", core dumped" } else { "" };
                (
                    AttemptStatus::Failed,
                    format!("killed by signal {sig} ({}){core}", signal_name(sig)),
                )
            }
            (None, None) => (AttemptStatus::Failed, format!("ended with status {s}")),
        },
        Exit::TimedOut { killed } => {
            let how = if killed {
                "did not stop on SIGTERM and was killed"
            } else {
                "terminated with SIGTERM"
            };
            (
                AttemptStatus::TimedOut,
                format!("timed out after {timeout_secs:.1} s; {how}"),
            )
        }
        Exit::Cancelled => (
            AttemptStatus::InfraError,
            "cancelled by the agent".to_owned(),
        ),
        Exit::SpawnFailed(e) => (
            AttemptStatus::InfraError,
            format!("failed to start the test binary: {e}"),
        ),
    };
    AttemptResult {
        status,
        duration: f.duration,
        exit_code,
        signal,
        output: f.output,
        output_omitted_bytes: f.omitted,
        message,
        case: None,
    }
}

/// Marks a test whose leftover processes held its output open past its leak timeout: a failure
/// when its leak timeout says so (`result = "fail"`), else a note on its result, as nextest does.
pub fn leaked(result: &mut AttemptResult, fails: bool) {
    let what = "processes it started still held its output open at the end of its leak timeout, \
                and were killed";
    if fails && result.status == AttemptStatus::Passed {
        result.status = AttemptStatus::Failed;
        result.message = format!("leaked: {what}");
    } else if result.message.is_empty() {
        result.message = format!("leaky: {what}");
    } else {
        result.message = format!("{}; leaky: {what}", result.message);
    }
}

/// Says so when a test that ended by itself ran past its slow-timeout period (nextest's SLOW).
pub fn slow(result: &mut AttemptResult, period: std::time::Duration) {
    if result.duration < period || result.status == AttemptStatus::TimedOut {
        return;
    }
    let note = format!(
        "slow: ran {:.1} s, past its slow-timeout period of {:.1} s",
        result.duration.as_secs_f64(),
        period.as_secs_f64()
    );
    result.message = if result.message.is_empty() {
        note
    } else {
        format!("{}; {note}", result.message)
    };
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
