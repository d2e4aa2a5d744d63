//! Following a run for a watcher: the events so far (older ones from the run's log on disk,
//! results' outputs from history), then live ones. A watcher that falls too far behind the live
//! events is let go by the scheduler (its queue is bounded); it catches up from the run's log,
//! from the first event it has not had, and goes on live: no event is lost or repeated, and a slow
//! client holds a bounded queue instead of the run's events since it fell behind.

use std::sync::Arc;

use testfleet_model::{EventKind, RunEvent, RunId};
use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::StreamExt;
use tonic::Status;

use super::super::blocking;
use crate::history::{HistoryStore, HistoryUpdate};
use crate::scheduler::{Command, SchedulerHandle, Subscription};

/// What following a run needs.
pub(super) struct Follow {
    pub run_id: RunId,
    pub store: Arc<dyn HistoryStore>,
    pub history: UnboundedSender<HistoryUpdate>,
    pub scheduler: SchedulerHandle,
    /// Whether the watcher wants the output of attempts that passed or skipped themselves.
    pub passing_output: bool,
}

impl Follow {
    /// The run's events from `from_seq`, starting with `first` (the scheduler's answer to a watch
    /// from there), to its last.
    pub fn stream(
        self,
        from_seq: u64,
        first: Subscription,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<RunEvent, Status>> {
        let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG_AHEAD);
        tokio::spawn(async move {
            let mut sub = first;
            // The first event the watcher has not had.
            let mut next_seq = from_seq;
            loop {
                let mut backlog = stream_backlog(
                    self.store.clone(),
                    self.history.clone(),
                    self.run_id,
                    sub.backlog,
                    self.passing_output,
                );
                while let Some(e) = backlog.next().await {
                    // An error ends the stream, as the run's last event does.
                    let last = e
                        .as_ref()
                        .map_or(true, |e| matches!(e.kind, EventKind::RunFinished { .. }));
                    if let Ok(e) = &e {
                        next_seq = e.seq + 1;
                    }
                    if tx.send(e).await.is_err() || last {
                        return;
                    }
                }
                let Some(mut live) = sub.live else { return };
                while let Some(e) = live.recv().await {
                    let last = matches!(e.kind, EventKind::RunFinished { .. });
                    next_seq = e.seq + 1;
                    if tx.send(Ok(e)).await.is_err() || last {
                        return;
                    }
                }
                // Let go before the run's last event: the watcher fell behind (or the coordinator
                // is stopping, and the scheduler does not answer). Catch up from the log.
                let run_id = self.run_id;
                match self
                    .scheduler
                    .ask(|reply| Command::Watch {
                        run_id,
                        from_seq: next_seq,
                        passing_output: self.passing_output,
                        reply,
                    })
                    .await
                {
                    Ok(Some(next)) => {
                        tracing::debug!(run = %run_id, from_seq = next_seq, "a watcher fell behind the live events: it catches up from the run's log");
                        sub = next;
                    }
                    _ => return,
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Events of a backlog read ahead of a watcher that has not taken them yet.
const BACKLOG_AHEAD: usize = 1024;

/// Streams a watcher's backlog part by part (a long run's older parts from disk), putting back
/// into each part's results the outputs the run's log left to history (once the history writer
/// has written what it was sent: it is at most the results' budget behind), but for passing
/// attempts if `!passing_output`. A watcher of a million-test run from its start holds a part and
/// what the channel holds, not the whole run.
fn stream_backlog(
    store: Arc<dyn HistoryStore>,
    history: UnboundedSender<HistoryUpdate>,
    run_id: RunId,
    snapshot: crate::scheduler::LogSnapshot,
    passing_output: bool,
) -> tokio_stream::wrappers::ReceiverStream<Result<RunEvent, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG_AHEAD);
    tokio::spawn(async move {
        let snapshot = std::sync::Arc::new(snapshot);
        let mut writer_caught_up = false;
        for i in 0..snapshot.parts() {
            let s = snapshot.clone();
            let part = tokio::task::spawn_blocking(move || s.read_part(i))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let crate::scheduler::Backlog {
                mut events,
                mut outputs_on_disk,
            } = match part {
                Ok(part) => part,
                Err(e) => {
                    let status = Status::internal(format!("reading run {run_id}'s events: {e}"));
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            if !passing_output {
                let passing: std::collections::HashSet<u64> = events
                    .iter()
                    .filter(|e| e.is_passing_result())
                    .map(|e| e.seq)
                    .collect();
                outputs_on_disk.retain(|seq| !passing.contains(seq));
            }
            if !outputs_on_disk.is_empty() {
                if !std::mem::replace(&mut writer_caught_up, true) {
                    crate::store_call::caught_up(&history, crate::history::QUERY_WAIT).await;
                }
                let store = store.clone();
                let wanted = outputs_on_disk.clone();
                let outputs = match blocking(move || store.outputs(run_id, &wanted)).await {
                    Ok(outputs) => outputs,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let mut by_seq: std::collections::HashMap<u64, Option<Vec<u8>>> =
                    outputs_on_disk.into_iter().zip(outputs).collect();
                for e in &mut events {
                    if let (EventKind::TestFinished(f), Some(output)) =
                        (&mut e.kind, by_seq.remove(&e.seq))
                    {
                        f.result.output = output.unwrap_or_else(|| {
                            b"[output not readable from history yet: its writer is behind]\n"
                                .to_vec()
                        });
                    }
                }
            }
            for e in events {
                if tx.send(Ok(e)).await.is_err() {
                    // The watcher went away.
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
