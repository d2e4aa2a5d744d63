//! The opt-in batch mode of the libtest runner: several tests in one process
//! (`BIN --exact --test-threads 1 --nocapture NAME...`), for suites whose tests do not depend on a
//! fresh process. Process start-up is paid once per batch instead of once per test.
//!
//! Each test still gets its own verdict, duration and output, read from libtest's output as it
//! streams, and its own timeout: a test that runs too long is killed with its process, and the
//! tests after it run in a new one. So does the rest of a batch whose process crashes; the test
//! that was running when it did is failed with the reason.

mod parse;

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use testfleet_model::{AttemptResult, AttemptStatus};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use crate::executor::{self, TestCommand};
use crate::runners::libtest::signal_name;
use parse::{Event, Parser, Verdict};

/// Runs `names` (tests of `cmd.program`) in as few processes as it can; one result per name.
pub async fn run(
    cmd: &TestCommand,
    names: &[String],
    mut cancel: watch::Receiver<bool>,
) -> Vec<AttemptResult> {
    let mut results: Vec<Option<AttemptResult>> = vec![None; names.len()];
    loop {
        let remaining: Vec<usize> = (0..names.len()).filter(|i| results[*i].is_none()).collect();
        if remaining.is_empty() {
            break;
        }
        let progress = once(cmd, names, &remaining, &mut results, &mut cancel).await;
        if let Err(why) = progress {
            for i in remaining {
                results[i].get_or_insert_with(|| AttemptResult::infra_error(why.clone()));
            }
        }
    }
    results.into_iter().map(|r| r.expect("all set")).collect()
}

struct Current {
    index: usize,
    since: Instant,
}

/// One process over the `remaining` tests. Sets the results of the tests it settled; returns an
/// error (for all the others) when it settled none, so a batch always ends.
async fn once(
    cmd: &TestCommand,
    names: &[String],
    remaining: &[usize],
    results: &mut [Option<AttemptResult>],
    cancel: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    if *cancel.borrow() {
        return Err("cancelled by the agent".into());
    }
    let batch: Vec<&str> = remaining.iter().map(|i| names[*i].as_str()).collect();
    let mut this = cmd.clone();
    this.args = ["--exact", "--test-threads", "1", "--nocapture"]
        .into_iter()
        .map(String::from)
        .chain(batch.iter().map(|n| (*n).to_owned()))
        .collect();
    let executor::Started {
        process: mut child,
        mut stdout,
        mut stderr,
    } = executor::start(&this)
        .await
        .map_err(|e| format!("failed to start the test binary: {e}"))?;
    let mut parser = Parser::new(&batch, cmd.output_cap);
    let mut current: Option<Current> = None;
    // Verdicts as they come: (position in `batch`, status, duration).
    let mut settled: Vec<(usize, AttemptStatus, Duration, String)> = vec![];
    let (mut out_buf, mut err_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut out_open, mut err_open) = (true, true);
    let mut ended: Option<Ending> = None;
    while ended.is_none() || out_open || err_open {
        let deadline = current.as_ref().map(|c| c.since + cmd.timeout);
        tokio::select! {
            // Stdout first: libtest flushes a test's start line before the test runs, so what is
            // in stdout says which test any stderr that follows belongs to.
            biased;
            n = stdout.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => {
                    for e in parser.feed(&out_buf[..n]) {
                        on_event(e, &mut current, &mut settled);
                    }
                }
            },
            n = stderr.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => parser.stray(&err_buf[..n]),
            },
            status = child.wait(), if ended.is_none() => {
                ended = Some(match status {
                    Ok(s) => Ending::Exited(s),
                    Err(e) => Ending::Lost(e.to_string()),
                });
                // Pipes held by the test's own children must not keep the batch waiting.
                child.signal_group(libc::SIGKILL);
                drain(&mut stdout, &mut out_open, |b| {
                    for e in parser.feed(b) {
                        on_event(e, &mut current, &mut settled);
                    }
                })
                .await;
                drain(&mut stderr, &mut err_open, |b| parser.stray(b)).await;
            },
            () = sleep_until(deadline), if ended.is_none() => {
                child.signal_group(libc::SIGTERM);
                let killed = tokio::time::timeout(cmd.kill_grace, child.wait()).await.is_err();
                ended = Some(Ending::TimedOut { killed });
                child.signal_group(libc::SIGKILL);
                let _ = child.wait().await;
            },
            () = executor::cancelled(cancel), if ended.is_none() => {
                child.signal_group(libc::SIGKILL);
                let _ = child.wait().await;
                ended = Some(Ending::Cancelled);
            },
        }
    }
    let ending = ended.expect("the loop ends with an ending");
    child.signal_group(libc::SIGKILL);
    child.release(&cmd.guard);
    let crashed = current.is_some();
    // The test running when the process ended is blamed for it; tests after it run again.
    let mut crash_signal = None;
    if let Some(c) = current.take() {
        let (status, message) = ending.blame(cmd.timeout);
        if let Ending::Exited(s) = &ending {
            crash_signal = s.signal().map(|sig| (c.index, sig));
        }
        settled.push((c.index, status, c.since.elapsed(), message));
    } else if matches!(ending, Ending::Cancelled) {
        return Err("cancelled by the agent".into());
    }
    let clean_exit = !crashed && matches!(&ending, Ending::Exited(s) if s.code().is_some());
    let outputs = parser.finish();
    let progress = !settled.is_empty();
    for (pos, status, duration, message) in settled {
        let (output, omitted) = outputs[pos].clone();
        results[remaining[pos]] = Some(AttemptResult {
            status,
            duration,
            exit_code: None,
            signal: crash_signal.filter(|(i, _)| *i == pos).map(|(_, sig)| sig),
            output,
            output_omitted_bytes: omitted,
            message,
            case: None,
        });
    }
    if clean_exit {
        // The process ended normally, so it ran every test it has: the others are not in it.
        for i in remaining {
            results[*i].get_or_insert_with(|| {
                AttemptResult::infra_error(
                    "the test binary does not contain this test (it never ran)".to_owned(),
                )
            });
        }
    }
    if progress {
        Ok(())
    } else {
        Err(format!(
            "the test process ended before running any test ({})",
            ending.blame(cmd.timeout).1
        ))
    }
}

fn on_event(
    e: Event,
    current: &mut Option<Current>,
    settled: &mut Vec<(usize, AttemptStatus, Duration, String)>,
) {
    match e {
        Event::Started(index) => {
            *current = Some(Current {
                index,
                since: Instant::now(),
            });
        }
        Event::Finished(index, verdict) => {
            let since = current
                .take()
                .filter(|c| c.index == index)
                .map(|c| c.since)
                .unwrap_or_else(Instant::now);
            let (status, message) = match verdict {
                Verdict::Ok | Verdict::Ignored => (AttemptStatus::Passed, String::new()),
                Verdict::Failed => (AttemptStatus::Failed, "the test failed".to_owned()),
                Verdict::Unreadable => (
                    AttemptStatus::Failed,
                    "its verdict could not be read: it printed output without a final newline \
                     (run it in a process of its own)"
                        .to_owned(),
                ),
            };
            settled.push((index, status, since.elapsed(), message));
        }
    }
}

enum Ending {
    Exited(ExitStatus),
    Lost(String),
    TimedOut { killed: bool },
    Cancelled,
}

impl Ending {
    /// What the test that was running when the process ended gets.
    fn blame(&self, timeout: Duration) -> (AttemptStatus, String) {
        match self {
            Ending::Exited(s) => match (s.code(), s.signal()) {
                (Some(code), _) => (
                    AttemptStatus::Failed,
                    format!("the test process exited with code {code} during this test"),
                ),
                (None, Some(sig)) => (
                    AttemptStatus::Failed,
                    format!(
                        "killed by signal {sig} ({}) during this test",
                        signal_name(sig)
                    ),
                ),
                (None, None) => (AttemptStatus::Failed, format!("ended with status {s}")),
            },
            Ending::Lost(e) => (
                AttemptStatus::InfraError,
                format!("lost the test process: {e}"),
            ),
            Ending::TimedOut { killed } => (
                AttemptStatus::TimedOut,
                format!(
                    "timed out after {:.1} s; {}",
                    timeout.as_secs_f64(),
                    if *killed {
                        "did not stop on SIGTERM and was killed"
                    } else {
                        "terminated with SIGTERM"
                    }
                ),
            ),
            Ending::Cancelled => (
                AttemptStatus::InfraError,
                "cancelled by the agent".to_owned(),
            ),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// How long to read what is left in a pipe after the process group is gone.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

async fn drain(pipe: &mut (impl AsyncRead + Unpin), open: &mut bool, mut f: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(DRAIN_LIMIT, async {
        while *open {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => *open = false,
                Ok(n) => f(&buf[..n]),
            }
        }
    })
    .await;
    *open = false;
}
