//! The agent session's messages, one type each, as both ends use them: what an agent says (hello,
//! work requests, attempts started and finished, services started, leases given back) and what the
//! coordinator tells it (welcome, leases, cancellations, acknowledgements). `proto` converts them
//! from and to the wire, once at each end; nothing else sees wire types.

use std::collections::HashMap;
use std::time::Duration;

use crate::{AgentId, AttemptResult, Binary, LeaseId, OriginTree, RunId, Scope, ServiceSpec};

/// The label that pins an agent to one run: it is leased that run's tests only (a CI job's agent
/// works on its pipeline's run and nothing else).
pub const ONLY_RUN_LABEL: &str = "testfleet.run";

/// One attempt of one test in one lease: how results and their acknowledgements are matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    pub run_id: RunId,
    pub test_index: u32,
    pub attempt: u32,
    pub lease_id: LeaseId,
}

/// The first message of every session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
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
    /// The tagged images its engine holds (`name:tag`), as far as it could list them.
    pub images: Vec<String>,
}

impl Hello {
    /// The run this agent is pinned to, if any.
    pub fn only_run(&self) -> Option<RunId> {
        self.labels.get(ONLY_RUN_LABEL)?.parse().ok()
    }
}

/// What a work request asks for: idle slots, and busy slots that would take tests queued behind
/// their current ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkRequest {
    pub free_slots: u32,
    pub queue_slots: u32,
}

/// An agent started a service's container for a lease (reuses are not reported).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStarted {
    pub run_id: RunId,
    pub lease_id: LeaseId,
    pub service: String,
    pub scope: Scope,
    pub duration_ms: u64,
    pub container_id: String,
    pub fingerprint: String,
}

/// An agent pulled an image for a lease's run, or tried to. One per pull: leases that waited for
/// someone else's pull of the same image report nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePulled {
    pub run_id: RunId,
    pub lease_id: LeaseId,
    /// `name:tag`, as the service names it.
    pub image: String,
    pub registry: String,
    pub duration_ms: u64,
    /// Why the pull failed; `None` when it did not.
    pub error: Option<String>,
}

/// A message from an agent.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentMessage {
    Hello(Hello),
    Heartbeat,
    WorkRequest(WorkRequest),
    TestStarted(AttemptKey),
    TestFinished(AttemptKey, AttemptResult),
    ServiceStarted(ServiceStarted),
    ImagePulled(ImagePulled),
    /// Tests of a lease the agent gives back unstarted (all of them when `indices` is empty).
    LeaseReleased {
        lease_id: LeaseId,
        indices: Vec<u32>,
    },
}

/// One test of a lease, with its binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasedTest {
    pub index: u32,
    pub attempt: u32,
    pub name: String,
    pub binary: Binary,
    /// Its group ([`crate::TestSpec::group`]): run in one process with the lease's other tests of it.
    pub group: Option<String>,
    /// Its settings ([`crate::RunSpec::settings`]), or the defaults.
    pub settings: crate::TestSettings,
    /// Its test group and the slot of it this attempt holds (nextest's `NEXTEST_TEST_GROUP` and
    /// `NEXTEST_TEST_GROUP_SLOT`).
    pub test_group: Option<GroupSlot>,
}

/// A test group's name and one of its `max_threads` slots, numbered from 0: no two tests of the
/// group that run at once hold the same slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSlot {
    pub name: String,
    pub slot: u32,
}

/// Tests leased to one agent, with what it needs of their run to run them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub lease_id: LeaseId,
    pub run_id: RunId,
    pub bundle_digest: Option<String>,
    pub tests: Vec<LeasedTest>,
    pub test_timeout: Duration,
    pub kill_grace: Duration,
    pub output_cap_bytes: u64,
    /// The run's services; each test's binary says which of them it needs.
    pub services: Vec<ServiceSpec>,
    pub workspace: String,
    /// Tests of one binary the agent may run in one process (1: one each).
    pub tests_per_process: u32,
    /// The run's trace context (W3C traceparent); empty when the coordinator does not trace.
    pub traceparent: String,
    pub origin: Vec<OriginTree>,
    pub pass_env: Vec<String>,
}

impl Lease {
    /// The key of each of its tests' attempts.
    pub fn keys(&self) -> impl Iterator<Item = AttemptKey> + '_ {
        self.tests.iter().map(|t| AttemptKey {
            run_id: self.run_id,
            test_index: t.index,
            attempt: t.attempt,
            lease_id: self.lease_id,
        })
    }
}

/// A message from the coordinator to an agent. The lease is a type parameter so the scheduler can
/// send a cheap handle on the run's spec and leave the copying of test names and binaries to the
/// session's task.
/// Results the coordinator has not acknowledged, past which an agent asks for no more work: a
/// coordinator that acknowledges slowly (its history writer is behind) slows its agents down,
/// instead of their results piling up on both sides. The coordinator reads at most a few times
/// this from one session ahead of the scheduler.
pub const UNACKED_RESULTS_LIMIT: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorMessage<L = Lease> {
    Welcome {
        agent_id: AgentId,
        heartbeat_interval: Duration,
    },
    Lease(L),
    CancelLease(LeaseId),
    /// The result of this attempt needs no resending.
    Ack(AttemptKey),
}

impl<L> CoordinatorMessage<L> {
    /// The same message, its lease (if it carries one) turned into another form.
    pub fn map_lease<M>(self, f: impl FnOnce(L) -> M) -> CoordinatorMessage<M> {
        match self {
            CoordinatorMessage::Welcome {
                agent_id,
                heartbeat_interval,
            } => CoordinatorMessage::Welcome {
                agent_id,
                heartbeat_interval,
            },
            CoordinatorMessage::Lease(l) => CoordinatorMessage::Lease(f(l)),
            CoordinatorMessage::CancelLease(id) => CoordinatorMessage::CancelLease(id),
            CoordinatorMessage::Ack(k) => CoordinatorMessage::Ack(k),
        }
    }
}
