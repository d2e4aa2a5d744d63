//! A run's live watchers: each has a bounded queue of the run's events, and is let go when it
//! falls further behind (it catches up from the run's log). A watcher may ask for the results of
//! passing attempts without their output: such an event is then copied once without its output,
//! and that copy is what those watchers get, instead of a copy of the output each.

use testfleet_model::RunEvent;
use tokio::sync::mpsc;

/// Events a live watcher may have waiting before it is let go to catch up from the run's log
/// (256 results with outputs at the default 64 KiB cap are 16 MiB).
pub const WATCHER_QUEUE: usize = 256;

struct Watcher {
    tx: mpsc::Sender<RunEvent>,
    passing_output: bool,
}

#[derive(Default)]
pub(super) struct Watchers(Vec<Watcher>);

impl Watchers {
    /// A new watcher's queue; `passing_output`: whether it wants the output of attempts that
    /// passed or skipped themselves.
    pub fn add(&mut self, passing_output: bool) -> mpsc::Receiver<RunEvent> {
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        self.0.push(Watcher { tx, passing_output });
        rx
    }

    /// Queues `event` for every watcher, letting go of those whose queue is full (a slow client,
    /// and results carry their output: it catches up from the log instead of being queued for
    /// without bound). `event` is left as it was.
    pub fn send(&mut self, event: &mut RunEvent) {
        let mut lean: Option<Option<RunEvent>> = None;
        self.0.retain(|w| {
            let copy = if w.passing_output {
                event.clone()
            } else {
                match lean.get_or_insert_with(|| event.copy_without_passing_output()) {
                    Some(lean) => lean.clone(),
                    None => event.clone(),
                }
            };
            w.tx.try_send(copy).is_ok()
        });
    }

    /// Ends every watcher's live events (they read the rest from the log).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}
