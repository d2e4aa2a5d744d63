//! What the scheduler knows of connected agents and their leases, and the messages exchanged with
//! them (already converted from the wire by the gateway).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use testfleet_model::{AgentId, AttemptResult, LeaseId, RunId, RunSpec, Scope};
use tokio::sync::mpsc;

/// Identifies one connection of an agent; a reconnect gets a new one.
pub type ConnId = u64;

#[derive(Clone, Debug)]
pub struct AgentHello {
    pub agent_id: AgentId,
    pub slots: u32,
    pub labels: HashMap<String, String>,
    pub docker_available: bool,
    pub version: String,
    /// Why Docker is unavailable (empty when it is available).
    pub docker_status: String,
    /// Why its tests do not run in a private namespace (empty when they do).
    pub sandbox_status: String,
    /// Leases the agent still works on, when it reconnects.
    pub held_leases: Vec<LeaseId>,
}

/// The label that pins an agent to one run: it is leased that run's tests only (a CI job's agent
/// works on its pipeline's run and nothing else).
pub const ONLY_RUN_LABEL: &str = "testfleet.run";

impl AgentHello {
    /// The run this agent is pinned to, if any.
    pub fn only_run(&self) -> Option<testfleet_model::RunId> {
        self.labels.get(ONLY_RUN_LABEL)?.parse().ok()
    }
}

#[derive(Debug)]
pub enum FromAgent {
    Heartbeat,
    WorkRequest {
        free_slots: u32,
        queue_slots: u32,
    },
    Started {
        run_id: RunId,
        index: u32,
        attempt: u32,
        lease_id: LeaseId,
    },
    Finished {
        run_id: RunId,
        index: u32,
        attempt: u32,
        lease_id: LeaseId,
        result: AttemptResult,
    },
    /// Tests of a lease the agent gives back unstarted (all of them when `indices` is empty).
    LeaseReleased {
        lease_id: LeaseId,
        indices: Vec<u32>,
    },
    ServiceStarted {
        run_id: RunId,
        service: String,
        scope: Scope,
        duration_ms: u64,
        container_id: String,
        fingerprint: String,
    },
}

#[derive(Clone, Debug)]
pub struct LeaseGrant {
    pub lease_id: LeaseId,
    pub run_id: RunId,
    pub spec: Arc<RunSpec>,
    /// (test index, attempt) pairs.
    pub tests: Vec<(u32, u32)>,
    /// The run's trace context, for the attempts' spans.
    pub traceparent: String,
}

#[derive(Clone, Debug)]
pub enum AgentCommand {
    Welcome {
        agent_id: AgentId,
        heartbeat_interval: Duration,
    },
    Lease(LeaseGrant),
    CancelLease(LeaseId),
    /// The result of (run, test index, attempt, lease) needs no resending.
    Ack(RunId, u32, u32, LeaseId),
}

#[derive(Clone, Debug)]
pub struct AgentSnapshot {
    pub agent_id: AgentId,
    pub slots: u32,
    pub busy: u32,
    pub labels: HashMap<String, String>,
    pub docker_available: bool,
    pub docker_status: String,
    pub sandbox_status: String,
    pub version: String,
    /// Time since the agent's last message.
    pub idle: Duration,
}

/// What a work request asks for (see `WorkRequest` in the protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WorkWanted {
    pub free: u32,
    pub queue: u32,
}

pub(super) struct Agent {
    pub hello: AgentHello,
    pub conn: ConnId,
    /// `None` while disconnected: its leases wait for it until the lease timeout.
    pub tx: Option<mpsc::UnboundedSender<AgentCommand>>,
    pub disconnected_at: Option<tokio::time::Instant>,
    /// The agent's outstanding work request, parked until there is work.
    pub pending_request: Option<WorkWanted>,
    /// Tests leased to it and not yet finished.
    pub busy: u32,
    /// Its last message (tokio's clock, so tests can pause it).
    pub last_seen: tokio::time::Instant,
    /// Fingerprints of the agent-scope services it has running: tests needing them go here first.
    pub warm: HashSet<String>,
}

impl Agent {
    pub fn new(hello: AgentHello, conn: ConnId, tx: mpsc::UnboundedSender<AgentCommand>) -> Self {
        Agent {
            hello,
            conn,
            tx: Some(tx),
            disconnected_at: None,
            pending_request: None,
            busy: 0,
            last_seen: tokio::time::Instant::now(),
            warm: HashSet::new(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.tx.is_some()
    }

    /// Sends if connected; a disconnected agent learns what it missed when it returns.
    pub fn send(&self, cmd: AgentCommand) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(cmd);
        }
    }

    pub fn snapshot(&self) -> AgentSnapshot {
        AgentSnapshot {
            agent_id: self.hello.agent_id.clone(),
            slots: self.hello.slots,
            busy: self.busy,
            labels: self.hello.labels.clone(),
            docker_available: self.hello.docker_available,
            docker_status: self.hello.docker_status.clone(),
            sandbox_status: self.hello.sandbox_status.clone(),
            version: self.hello.version.clone(),
            idle: self.last_seen.elapsed(),
        }
    }
}

pub(super) struct Lease {
    pub run: RunId,
    pub agent: AgentId,
    /// Unfinished tests of the lease, and whether the agent said it started each.
    pub outstanding: BTreeMap<u32, bool>,
    /// How many tests it held, and how many of those failed so far.
    pub tests: u32,
    pub failed: u32,
}
