//! The scheduler: the one task that owns run and agent state. Everything reaches it as a
//! [`Command`]; everything it does comes out as run events (to watchers and the history writer) or
//! as [`AgentCommand`]s to connected agents. Nothing else reads or writes its state.

mod actor;
mod agents;
mod batch;
mod connections;
mod dispatch;
mod handle;
mod ledger;
mod memory;
mod run;
#[cfg(test)]
mod tests;

pub use actor::spawn;
pub use agents::{AgentCommand, AgentSnapshot, ConnId, LeaseGrant};
pub use handle::{Command, RunSlot, RunSnapshot, SchedulerGone, SchedulerHandle, Subscription};
pub use memory::{RoomRefused, memory_of};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use testfleet_model::{AgentId, LeaseId, RunId};
use tokio::sync::mpsc;

use crate::history::HistoryUpdate;
use crate::metrics::Metrics;
use agents::{Agent, Lease};
use run::Run;
pub(crate) use run::now_unix_ms;
pub use run::{Backlog, LogConfig, LogSnapshot, WATCHER_QUEUE};
pub(crate) use run::{Context, Elsewhere, LeaseTally};

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Retries for runs that do not say.
    pub default_retries: u32,
    pub heartbeat_interval: Duration,
    /// Finished runs kept in memory for `WatchRun`; older ones are answered from history.
    pub keep_finished_runs: usize,
    /// How long tests that need services wait while no connected agent can start them (one may be
    /// reconnecting) before they end as infrastructure errors.
    pub service_grace: Duration,
    /// An agent that is disconnected, or sends nothing (heartbeats included), for this long loses
    /// its leases.
    pub lease_timeout: Duration,
    /// How much of each run's event log stays in memory, and where the rest goes
    /// ([`crate::Limits::run_log_memory_bytes`] and the data dir, when serving).
    pub log: Arc<LogConfig>,
    /// What runs may hold in memory in all ([`crate::Limits::max_runs_memory_bytes`]).
    pub memory_budget: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            default_retries: 2,
            heartbeat_interval: Duration::from_secs(5),
            keep_finished_runs: 64,
            service_grace: Duration::from_secs(15),
            lease_timeout: Duration::from_secs(30),
            log: Arc::new(LogConfig::default()),
            memory_budget: 1 << 30,
        }
    }
}

/// The agent a lease is being cut for, as a run sees it.
pub(crate) struct Candidate<'a> {
    pub id: &'a AgentId,
    /// Another agent is connected, so a retry can avoid this one...
    pub others_connected: bool,
    /// ...and one with Docker, so a retry of a test needing services can.
    pub others_with_docker: bool,
    pub docker: bool,
    pub warm: &'a std::collections::HashSet<String>,
    /// The tagged images its engine holds.
    pub images: &'a std::collections::HashSet<String>,
    /// Its slots, and how many of them are idle now: a test that takes several slots, or one of
    /// a test group, is leased only to run at once, never to wait behind others there.
    pub slots: u32,
    pub free_slots: u32,
}

/// The scheduler's state: runs, agents and leases, owned by its task alone ([`actor`]).
struct Scheduler {
    config: SchedulerConfig,
    history: mpsc::UnboundedSender<HistoryUpdate>,
    metrics: Arc<Metrics>,
    /// Ordered by id, so the oldest run is served first.
    runs: BTreeMap<RunId, Run>,
    finished: VecDeque<RunId>,
    agents: HashMap<AgentId, Agent>,
    /// Agents with a parked work request, in id order (the order they are served in).
    waiting: BTreeSet<AgentId>,
    /// Connected agents in sums, recomputed only after an agent came or went: dispatch runs on
    /// every result and must not walk a thousand agents each time.
    fleet: Option<Fleet>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: u64,
    /// The first lease id of this process: lower ids were issued before a restart.
    first_lease: u64,
    /// Leases this process took back from their agent (lost or timed out), by agent: a result the
    /// agent brings back later may still be adopted.
    lost_leases: HashMap<LeaseId, AgentId>,
    /// Since when tests that need services have had no connected agent able to run them (tokio's
    /// clock, so tests can pause it).
    unservable_since: Option<tokio::time::Instant>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Fleet {
    connected: usize,
    docker: usize,
    slots: u32,
}
