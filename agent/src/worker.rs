//! The agent's work, which outlives any one session: leases and their tests, running processes,
//! and results the coordinator has not acknowledged yet. A broken session leaves all of it in
//! place; the next session reports what happened meanwhile and resends every unacknowledged result.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use testfleet_model::session::{AgentMessage, ImagePulled, Lease, WorkRequest};
use testfleet_model::{AttemptKey, AttemptResult, LeaseId, RunId};
use tokio::sync::{mpsc, watch};

use crate::Services;
use crate::bundle_cache::InUse;
use crate::disk_room::DiskRoom;
use crate::job::{self, Job};
use crate::provision::{LeaseCtx, ServicePool};
use crate::runners::pytest_worker::Workers;

/// A job's end: the slots it held, and its tests' results.
pub(crate) type JobDone = (usize, Vec<(AttemptKey, AttemptResult)>);

/// A lease the agent holds.
pub(crate) struct HeldLease {
    /// Cancels its running tests.
    pub cancel: watch::Sender<bool>,
    /// Its tests that have not finished.
    pub left: usize,
    /// Its bundle, kept from removal while the lease lasts (once fetched).
    pub bundle: Option<InUse>,
}

/// A lease whose bundle was fetched (or failed to be): its root, the hold on it, and the run's
/// sandbox on this agent.
pub(crate) type Ready = (
    Lease,
    Result<Option<PathBuf>, String>,
    Option<InUse>,
    Option<Arc<crate::sandbox::Sandbox>>,
);

pub(crate) struct Worker {
    pub slots: usize,
    /// Slots taken by running jobs (a test may take several: its `threads-required`).
    pub running: usize,
    /// Tests of leases whose bundle is still being fetched.
    pub preparing: usize,
    pub pending: VecDeque<Job>,
    /// The leases this agent holds, until their last test is done or they are cancelled.
    pub leases: HashMap<LeaseId, HeldLease>,
    /// Results sent (or to be sent) and not yet acknowledged.
    pub unacked: BTreeMap<AttemptKey, AttemptResult>,
    pub done_tx: mpsc::UnboundedSender<JobDone>,
    pub done_rx: mpsc::UnboundedReceiver<JobDone>,
    pub ready_tx: mpsc::UnboundedSender<Ready>,
    pub ready_rx: mpsc::UnboundedReceiver<Ready>,
    /// Messages from test tasks (service starts) for whichever session is up.
    pub notes_tx: mpsc::UnboundedSender<AgentMessage>,
    pub notes_rx: mpsc::UnboundedReceiver<AgentMessage>,
    pub pool: Option<Arc<ServicePool>>,
    /// pytest workers between jobs.
    pub pytest_workers: Arc<Workers>,
    /// Why there is no pool (sent in Hello).
    pub no_docker: String,
    /// Runs whose images this agent started pulling (newest last, bounded).
    prefetched: VecDeque<RunId>,
    /// Whether the work dir has room for more work.
    room: DiskRoom,
}

use testfleet_model::session::UNACKED_RESULTS_LIMIT as UNACKED_LIMIT;

/// Runs remembered as prefetched: far more than an agent works on at once.
const PREFETCHED_KEEP: usize = 256;

/// Forwards the pool's pulls to whichever session is up, as `ImagePulled` messages.
fn report_pulls(pool: &ServicePool, notes: mpsc::UnboundedSender<AgentMessage>) {
    let Some(mut pulls) = pool.take_pulls() else {
        return;
    };
    tokio::spawn(async move {
        while let Some(p) = pulls.recv().await {
            let (Ok(run_id), Ok(lease_id)) = (p.run_id.parse(), p.lease_id.parse()) else {
                continue;
            };
            let sent = notes.send(AgentMessage::ImagePulled(ImagePulled {
                run_id,
                lease_id,
                image: p.report.image,
                registry: p.report.registry,
                duration_ms: p.report.duration.as_millis() as u64,
                error: p.report.error,
            }));
            if sent.is_err() {
                return;
            }
        }
    });
}

impl Worker {
    pub fn new(slots: u32, services: &Services, room: DiskRoom) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = mpsc::unbounded_channel();
        let (notes_tx, notes_rx) = mpsc::unbounded_channel();
        if let Some(pool) = &services.pool {
            report_pulls(pool, notes_tx.clone());
        }
        Worker {
            slots: slots as usize,
            running: 0,
            preparing: 0,
            pending: VecDeque::new(),
            leases: HashMap::new(),
            unacked: BTreeMap::new(),
            done_tx,
            done_rx,
            ready_tx,
            ready_rx,
            notes_tx,
            notes_rx,
            pool: services.pool.clone(),
            pytest_workers: Arc::default(),
            no_docker: services.status.clone(),
            prefetched: VecDeque::new(),
            room,
        }
    }

    /// On a run's first lease, starts pulling the run's registry images in the background.
    pub fn prefetch_images(&mut self, lease: &Lease) {
        let Some(pool) = &self.pool else { return };
        if lease.services.is_empty() || self.prefetched.contains(&lease.run_id) {
            return;
        }
        self.prefetched.push_back(lease.run_id);
        if self.prefetched.len() > PREFETCHED_KEEP {
            self.prefetched.pop_front();
        }
        let ctx = LeaseCtx {
            run_id: lease.run_id.to_string(),
            lease_id: lease.lease_id.to_string(),
            workspace: None,
        };
        pool.prefetch(&ctx, &lease.services);
    }

    /// Whether the work dir has room for more work.
    pub fn has_room(&self) -> bool {
        self.room.has_room()
    }

    /// Slots neither running, waiting nor being prepared.
    pub fn free(&self) -> usize {
        self.slots
            .saturating_sub(self.running + self.preparing + self.pending.len())
    }

    /// What to ask the coordinator for, if anything: idle slots, and busy slots whose queue of
    /// waiting tests is running low (asked for early, so no slot waits for a round trip); nothing
    /// while too many results wait for the coordinator's acknowledgement, or while the work dir is
    /// nearly full.
    pub fn wanted(&self) -> Option<WorkRequest> {
        if self.unacked.len() >= UNACKED_LIMIT || !self.room.has_room() {
            return None;
        }
        let free = self.free();
        let queued = self.preparing + self.pending.len();
        let queue = if queued < self.slots {
            self.slots - free
        } else {
            0
        };
        (free + queue > 0).then_some(WorkRequest {
            free_slots: free as u32,
            queue_slots: queue as u32,
        })
    }

    /// Nothing runs, waits or is being prepared.
    pub fn idle(&self) -> bool {
        self.running == 0 && self.preparing == 0 && self.pending.is_empty()
    }

    pub fn held_leases(&self) -> Vec<LeaseId> {
        let mut l: Vec<LeaseId> = self.leases.keys().copied().collect();
        l.sort();
        l
    }

    /// Starts a pending job in its own task; returns its tests' keys, for TestStarted messages.
    pub fn start_next(&mut self) -> Option<Vec<AttemptKey>> {
        // A job that takes several slots waits at the head until that many are idle, so the
        // jobs behind it cannot keep it waiting for ever.
        let need = self.pending.front()?.slots.clamp(1, self.slots.max(1));
        if self.running + need > self.slots {
            return None;
        }
        let job = self.pending.pop_front()?;
        self.running += need;
        let keys = job.tests.iter().map(|t| t.key).collect();
        let done = self.done_tx.clone();
        let notes = self.notes_tx.clone();
        let pool = self.pool.clone();
        let no_docker = self.no_docker.clone();
        let workers = self.pytest_workers.clone();
        tokio::spawn(async move {
            let results = job::run_job(job, pool, no_docker, notes, workers).await;
            let _ = done.send((need, results));
        });
        Some(keys)
    }

    /// Stops a lease's tests and removes its containers (cancelled, or unknown to the coordinator).
    pub fn cancel_lease(&mut self, lease: LeaseId) {
        if let Some(held) = self.leases.remove(&lease) {
            let _ = held.cancel.send(true);
            self.release(lease);
        }
        self.pending.retain(|j| j.lease_id() != lease);
    }

    /// Stops everything now (a forced shutdown).
    pub fn cancel_all(&mut self) {
        for l in self.held_leases() {
            self.cancel_lease(l);
        }
    }

    /// Notes that one test of `lease` is done; after its last one the lease and its containers go.
    pub fn test_done(&mut self, lease: LeaseId) {
        if let Some(held) = self.leases.get_mut(&lease) {
            held.left -= 1;
            if held.left == 0 {
                self.leases.remove(&lease);
                self.release(lease);
            }
        }
    }

    /// Takes the tests that have not started out of the queue (the agent is draining), by lease.
    pub fn give_back_pending(&mut self) -> BTreeMap<LeaseId, Vec<u32>> {
        let mut given: BTreeMap<LeaseId, Vec<u32>> = BTreeMap::new();
        for job in std::mem::take(&mut self.pending) {
            for key in job.tests.into_iter().map(|t| t.key) {
                given.entry(key.lease_id).or_default().push(key.test_index);
                self.test_done(key.lease_id);
            }
        }
        given
    }

    /// A job ended: the slots it held are free.
    pub fn job_done(&mut self, slots: usize) {
        self.running = self.running.saturating_sub(slots);
    }

    /// Records a test's result (run, or one the agent could not even start: a bad lease, an
    /// unusable bundle) for sending until acknowledged, and returns its message.
    pub fn finished(&mut self, key: AttemptKey, result: AttemptResult) -> AgentMessage {
        self.test_done(key.lease_id);
        self.unacked.insert(key, result.clone());
        AgentMessage::TestFinished(key, result)
    }

    /// Every result not acknowledged yet, as messages to send again.
    pub fn resend(&self) -> impl Iterator<Item = AgentMessage> + '_ {
        self.unacked
            .iter()
            .map(|(k, r)| AgentMessage::TestFinished(*k, r.clone()))
    }

    /// Removes a lease's containers in the background (the session loop never waits on Docker).
    fn release(&self, lease: LeaseId) {
        if let Some(pool) = self.pool.clone() {
            tokio::spawn(async move { pool.release_lease(&lease.to_string()).await });
        }
    }
}
