//! Following a run's events until it finishes: re-attaches from the last sequence number when the
//! stream breaks, and turns Ctrl-C into a cancellation of the run.

use std::time::Duration;

use testfleet_model::{EventKind, RunEvent, RunId, RunState, RunSummary};
use testfleet_proto::pb;

use crate::error::{CliError, CliResult};
use crate::remote::Client;
use crate::reporter::Report;

/// How long the stream may stay broken before the run is given up on.
const REATTACH_LIMIT: Duration = Duration::from_secs(60);

/// `stop_signals` must have been made before the run was submitted: a Ctrl-C in between is then
/// not fatal but waits in it, and cancels the run here. Without them (a CI node, whose run goes
/// on without it) signals are the caller's business.
pub async fn follow(
    client: &mut Client,
    url: &str,
    run_id: RunId,
    report: &mut Report,
    mut stop_signals: Option<StopSignals>,
) -> CliResult<(RunSummary, RunState)> {
    let mut next_seq = 0u64;
    let mut broken_since: Option<std::time::Instant> = None;
    let mut cancel_sent = false;
    loop {
        let attach = client
            .watch_run(pb::WatchRunRequest {
                run_id: run_id.to_string(),
                from_seq: next_seq,
                // Only the JSON stream shows what passing tests printed: the other reports
                // need no copy of it from the coordinator.
                omit_passing_output: !report.shows_passing_output(),
            })
            .await;
        let mut stream = match attach {
            Ok(s) => s.into_inner(),
            // A coordinator restarting under an attach shows as unavailable, or as a request
            // cancelled (or unknown) when its connection closed mid-flight: all worth retrying.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                ) =>
            {
                let since = *broken_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > REATTACH_LIMIT {
                    return Err(CliError::from_status(url, s));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(s) => return Err(CliError::from_status(url, s)),
        };
        loop {
            let next = tokio::select! {
                m = stream.message() => m,
                () = StopSignals::recv_some(&mut stop_signals), if !cancel_sent => {
                    cancel_sent = true;
                    report.note("interrupted: cancelling the run (press Ctrl-C again to leave at once)");
                    let mut c = client.clone();
                    let id = run_id.to_string();
                    tokio::spawn(async move {
                        let _ = c.cancel_run(pb::CancelRunRequest { run_id: id }).await;
                        let _ = tokio::signal::ctrl_c().await;
                        std::process::exit(testfleet_model::exit_code::RUN_INCOMPLETE);
                    });
                    continue;
                }
            };
            match next {
                Ok(Some(wire)) => {
                    let event = RunEvent::try_from(wire).map_err(|e| {
                        CliError::Internal(anyhow::anyhow!(
                            "coordinator sent an invalid event: {e}"
                        ))
                    })?;
                    let finished = matches!(event.kind, EventKind::RunFinished { .. });
                    // A re-attach can repeat what was already seen; the end is never skipped.
                    if event.seq < next_seq && !finished {
                        continue;
                    }
                    broken_since = None;
                    next_seq = next_seq.max(event.seq + 1);
                    report.on_event(&event);
                    if let EventKind::RunFinished { summary, state } = event.kind {
                        return Ok((summary, state));
                    }
                }
                Ok(None) | Err(_) => break, // re-attach from next_seq
            }
        }
        let since = *broken_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() > REATTACH_LIMIT {
            return Err(CliError::Unreachable {
                url: url.to_owned(),
                reason: format!("lost the event stream of run {run_id}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGINT or SIGTERM, as a stream: handlers installed once, up front. Ctrl-C and SIGTERM (a CI job
/// being stopped) both cancel the run, so agents stop its tests.
pub struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals {
            int: signal(SignalKind::interrupt()).expect("installing a SIGINT handler succeeds"),
            term: signal(SignalKind::terminate()).expect("installing a SIGTERM handler succeeds"),
        }
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }

    /// The next signal, or never without signals to wait for.
    async fn recv_some(signals: &mut Option<StopSignals>) {
        match signals {
            Some(s) => s.recv().await,
            None => std::future::pending().await,
        }
    }
}
