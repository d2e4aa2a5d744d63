//! How the rest of the coordinator talks to the scheduler: the commands it accepts, and a cheap
//! cloneable handle that sends them (work requests jump the queue).

use std::sync::Arc;
use std::time::Duration;

use testfleet_model::{AgentId, RunEvent, RunId, RunSpec, RunState, RunSummary};
use tokio::sync::{mpsc, oneshot};

use testfleet_model::session::{AgentMessage, Hello};

use super::agents::{AgentCommand, AgentSnapshot, ConnId};
use crate::metrics::Gauges;

/// A watcher's view of a run: the events so far from the requested position, then live ones.
pub struct Subscription {
    /// The events so far, to read away from the scheduler (older ones may be on disk); results'
    /// outputs are in history.
    pub backlog: super::LogSnapshot,
    /// `None` when the run has already finished: the backlog is all there is. It holds at most
    /// [`super::WATCHER_QUEUE`] events: a watcher that falls further behind is let go (its
    /// receiver ends before the run's last event) and catches up from the run's log.
    pub live: Option<mpsc::Receiver<RunEvent>>,
}

#[derive(Clone, Debug)]
pub struct RunSnapshot {
    pub run_id: RunId,
    pub suite: String,
    pub state: RunState,
    pub total_tests: u32,
    pub summary: RunSummary,
    pub created_unix_ms: u64,
}

/// A place under the coordinator's concurrent-runs limit.
pub type RunSlot = tokio::sync::OwnedSemaphorePermit;

pub enum Command {
    Submit {
        run_id: RunId,
        spec: Arc<RunSpec>,
        estimates: Vec<(Duration, bool)>,
        /// Per test: whether it is in quarantine.
        quarantined: Vec<bool>,
        /// Its place under the concurrent-runs limit, given back when it finishes.
        slot: Option<RunSlot>,
        trace: crate::run_trace::RunTrace,
        reply: oneshot::Sender<()>,
    },
    /// A run a previous coordinator process did not finish, rebuilt from history.
    Resume {
        run_id: RunId,
        spec: Arc<RunSpec>,
        estimates: Vec<(Duration, bool)>,
        quarantined: Vec<bool>,
        records: Vec<crate::history::TestRecord>,
        resumes: u32,
        slot: Option<RunSlot>,
        reply: oneshot::Sender<()>,
    },
    /// Makes room in the runs' memory budget for a run about to be submitted.
    MakeRoom {
        bytes: usize,
        reply: oneshot::Sender<Result<(), super::RoomRefused>>,
    },
    Watch {
        run_id: RunId,
        from_seq: u64,
        /// Whether the watcher wants the output of attempts that passed or skipped themselves.
        passing_output: bool,
        reply: oneshot::Sender<Option<Subscription>>,
    },
    Cancel {
        run_id: RunId,
        reply: oneshot::Sender<Option<bool>>,
    },
    GetRun {
        run_id: RunId,
        reply: oneshot::Sender<Option<RunSnapshot>>,
    },
    ListAgents {
        reply: oneshot::Sender<Vec<AgentSnapshot>>,
    },
    /// What the scheduler holds now, for metrics and health checks.
    Stats { reply: oneshot::Sender<Gauges> },
    AgentConnected {
        hello: Hello,
        conn: ConnId,
        tx: mpsc::UnboundedSender<AgentCommand>,
    },
    FromAgent {
        agent: AgentId,
        conn: ConnId,
        msg: AgentMessage,
        /// A result's credits ([`crate::history::credits`]), which go with its history update.
        credit: Option<crate::history::credits::Credit>,
    },
    AgentDisconnected {
        agent: AgentId,
        conn: ConnId,
        why: String,
    },
}

/// A cheap, cloneable way to talk to the scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    pub(super) tx: mpsc::UnboundedSender<Command>,
    /// Work requests (and the hellos they depend on) jump the queue: an idle agent gets its lease
    /// at once even while thousands of results wait to be counted. Nothing else may overtake:
    /// results, releases and disconnects keep their order.
    pub(super) priority: mpsc::UnboundedSender<Command>,
}

#[derive(Debug, thiserror::Error)]
#[error("the scheduler has stopped")]
pub struct SchedulerGone;

impl SchedulerHandle {
    pub fn send(&self, cmd: Command) -> Result<(), SchedulerGone> {
        let urgent = matches!(
            cmd,
            Command::AgentConnected { .. }
                | Command::FromAgent {
                    msg: AgentMessage::WorkRequest(_),
                    ..
                }
        );
        let tx = if urgent { &self.priority } else { &self.tx };
        tx.send(cmd).map_err(|_| SchedulerGone)
    }

    /// Sends a command built around a reply channel and waits for the reply.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SchedulerGone> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| SchedulerGone)
    }
}
