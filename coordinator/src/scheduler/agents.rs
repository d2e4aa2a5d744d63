//! What the scheduler knows of connected agents and their leases, and the form of a lease it hands
//! to an agent's session.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use testfleet_model::session::{self, CoordinatorMessage, Hello, LeasedTest};
use testfleet_model::{AgentId, LeaseId, RunId, RunSpec};
use tokio::sync::mpsc;

/// Identifies one connection of an agent; a reconnect gets a new one.
pub type ConnId = u64;

#[derive(Clone, Debug)]
pub struct LeaseGrant {
    pub lease_id: LeaseId,
    pub run_id: RunId,
    pub spec: Arc<RunSpec>,
    /// (test index, attempt) pairs.
    pub tests: Vec<(u32, u32)>,
    /// The slot of its test group each grouped test holds, by test index.
    pub group_slots: HashMap<u32, u32>,
    /// The run's trace context, for the attempts' spans.
    pub traceparent: String,
}

impl LeaseGrant {
    /// The lease as the agent is sent it: each test with its name and binary. Made by the
    /// session's task, not the scheduler's, which only hands out the spec's `Arc`.
    pub fn to_lease(&self) -> session::Lease {
        let spec = &self.spec;
        session::Lease {
            lease_id: self.lease_id,
            run_id: self.run_id,
            bundle_digest: spec.bundle_digest.clone(),
            tests: self
                .tests
                .iter()
                .map(|&(index, attempt)| {
                    let t = &spec.tests[index as usize];
                    let settings = spec.settings_of(index).cloned().unwrap_or_default();
                    let test_group = settings
                        .test_group
                        .and_then(|g| spec.test_groups.get(g as usize))
                        .map(|g| session::GroupSlot {
                            name: g.name.clone(),
                            slot: self.group_slots.get(&index).copied().unwrap_or(0),
                        });
                    LeasedTest {
                        index,
                        attempt,
                        name: t.name.to_string(),
                        binary: spec.binaries[t.binary as usize].clone(),
                        group: t.group().map(str::to_owned),
                        settings,
                        test_group,
                    }
                })
                .collect(),
            test_timeout: spec.test_timeout,
            kill_grace: spec.kill_grace,
            output_cap_bytes: spec.output_cap_bytes,
            services: spec.services.clone(),
            workspace: spec.workspace.clone(),
            tests_per_process: spec.tests_per_process,
            traceparent: self.traceparent.clone(),
            origin: spec.origin.clone(),
            pass_env: spec.pass_env.clone(),
        }
    }
}

/// What the scheduler tells an agent: the session's messages, with leases still in their cheap form.
pub type AgentCommand = CoordinatorMessage<LeaseGrant>;

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
    pub pulls: PullTally,
    /// How many tagged images its engine holds, as far as the coordinator knows.
    pub images: u32,
}

/// An agent's pulls since it connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PullTally {
    pub count: u32,
    pub ms: u64,
    pub failures: u32,
}

/// Images remembered per agent; an engine with more is treated as holding the first ones only.
const MAX_IMAGES: usize = 4096;

/// What a work request asks for (see `WorkRequest` in the protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WorkWanted {
    pub free: u32,
    pub queue: u32,
}

pub(super) struct Agent {
    pub hello: Hello,
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
    /// The tagged images its engine holds (from its hello, and its pulls since).
    pub images: HashSet<String>,
    pub pulls: PullTally,
}

impl Agent {
    pub fn new(hello: Hello, conn: ConnId, tx: mpsc::UnboundedSender<AgentCommand>) -> Self {
        Agent {
            conn,
            tx: Some(tx),
            disconnected_at: None,
            pending_request: None,
            busy: 0,
            last_seen: tokio::time::Instant::now(),
            warm: HashSet::new(),
            images: hello.images.iter().take(MAX_IMAGES).cloned().collect(),
            pulls: PullTally::default(),
            hello,
        }
    }

    /// Notes an image its engine now holds.
    pub fn hold_image(&mut self, image: String) {
        if self.images.len() < MAX_IMAGES {
            self.images.insert(image);
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
            pulls: self.pulls,
            images: self.images.len() as u32,
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
