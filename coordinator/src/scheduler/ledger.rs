//! The lease ledger: what agents say about their leases (work wanted, tests started and finished,
//! services started, images pulled, tests given back), checked against the leases this coordinator handed out
//! before any of it reaches a run.

use testfleet_model::session::{
    AgentMessage, CoordinatorMessage, ImagePulled, ServiceStarted, WorkRequest,
};
use testfleet_model::{AgentId, AttemptKey, AttemptResult, LeaseId, Scope};

use super::agents::{ConnId, WorkWanted};
use super::{Context, Elsewhere, LeaseTally, Scheduler};
use crate::history::credits::Credit;

impl Scheduler {
    pub(super) fn on_agent_message(
        &mut self,
        agent_id: AgentId,
        conn: ConnId,
        msg: AgentMessage,
        credit: Option<Credit>,
    ) {
        let Some(agent) = self
            .agents
            .get_mut(&agent_id)
            .filter(|a| a.conn == conn && a.is_connected())
        else {
            return; // a stale connection's last words
        };
        agent.last_seen = tokio::time::Instant::now();
        match msg {
            // Only the first message of a session is a hello; the gateway took it.
            AgentMessage::Hello(_) | AgentMessage::Heartbeat => {}
            AgentMessage::WorkRequest(wanted) => self.on_work_request(agent_id, wanted),
            AgentMessage::TestStarted(key) => self.on_started(&agent_id, key),
            AgentMessage::TestFinished(key, result) => {
                self.on_finished(&agent_id, key, result, credit)
            }
            AgentMessage::ServiceStarted(ServiceStarted {
                run_id,
                service,
                scope,
                duration_ms,
                container_id,
                fingerprint,
                ..
            }) => {
                if scope == Scope::Agent
                    && let Some(agent) = self.agents.get_mut(&agent_id)
                {
                    agent.warm.insert(fingerprint);
                }
                if let Some(run) = self.runs.get_mut(&run_id).filter(|r| r.is_running()) {
                    run.on_service_started(&agent_id, service, scope, duration_ms, container_id);
                }
            }
            AgentMessage::ImagePulled(pulled) => self.on_image_pulled(&agent_id, pulled),
            AgentMessage::LeaseReleased { lease_id, indices } => {
                self.on_released(&agent_id, lease_id, &indices)
            }
        }
    }

    /// A pull counts for the agent (`testfleet agents`) and, timed apart from starts, for its run.
    fn on_image_pulled(&mut self, agent_id: &AgentId, pulled: ImagePulled) {
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.pulls.count += 1;
            agent.pulls.ms += pulled.duration_ms;
            if pulled.error.is_some() {
                agent.pulls.failures += 1;
            } else {
                agent.hold_image(pulled.image.clone());
            }
        }
        if let Some(run) = self.runs.get_mut(&pulled.run_id).filter(|r| r.is_running()) {
            run.on_image_pulled(agent_id, pulled);
        }
    }

    /// Parks (or withdraws) an agent's request for work, then serves what is parked.
    fn on_work_request(&mut self, agent_id: AgentId, asked: WorkRequest) {
        let Some(agent) = self.agents.get_mut(&agent_id) else {
            return;
        };
        let slots = agent.hello.slots;
        let wanted = WorkWanted {
            free: asked.free_slots.min(slots),
            queue: asked.queue_slots.min(slots),
        };
        agent.pending_request = (wanted.free + wanted.queue > 0).then_some(wanted);
        if agent.pending_request.is_some() {
            self.waiting.insert(agent_id);
        } else {
            self.waiting.remove(&agent_id);
        }
        self.dispatch();
    }

    fn on_started(&mut self, agent_id: &AgentId, key: AttemptKey) {
        let Some(lease) = self
            .leases
            .get_mut(&key.lease_id)
            .filter(|l| l.agent == *agent_id)
        else {
            return;
        };
        let Some(run) = self.runs.get_mut(&key.run_id).filter(|r| r.is_running()) else {
            return;
        };
        if run.is_current(key.test_index, key.attempt, key.lease_id)
            && let Some(started) = lease.outstanding.get_mut(&key.test_index)
        {
            *started = true;
            run.on_started(key.test_index, key.attempt, agent_id);
        }
    }

    /// A result: acknowledged in any case, counted once if its lease and attempt are current (or
    /// adopted, for a lease this coordinator took back), the lease closed with its tally once its
    /// last test is in.
    fn on_finished(
        &mut self,
        agent_id: &AgentId,
        key: AttemptKey,
        result: AttemptResult,
        credit: Option<Credit>,
    ) {
        let fleet = self.fleet();
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return;
        };
        let elsewhere = Elsewhere {
            connected: fleet.connected > usize::from(agent.is_connected()),
            with_docker: fleet.docker
                > usize::from(agent.is_connected() && agent.hello.docker_available),
        };
        // Whatever becomes of it, the agent can stop resending it.
        agent.send(CoordinatorMessage::Ack(key));
        let Some(lease) = self
            .leases
            .get_mut(&key.lease_id)
            .filter(|l| l.agent == *agent_id && l.run == key.run_id)
        else {
            self.on_unleased_result(agent_id, key, result, credit);
            return;
        };
        if lease.outstanding.remove(&key.test_index).is_none() {
            tracing::debug!(lease_id = %key.lease_id, index = key.test_index, "ignoring a duplicate result");
            return;
        }
        lease.failed += u32::from(result.status.is_test_failure());
        let tally = lease.outstanding.is_empty().then_some(LeaseTally {
            tests: lease.tests,
            failed: lease.failed,
        });
        if tally.is_some() {
            self.leases.remove(&key.lease_id);
        }
        agent.busy = agent.busy.saturating_sub(1);
        let Some(run) = self.runs.get_mut(&key.run_id).filter(|r| r.is_running()) else {
            return;
        };
        if !run.is_current(key.test_index, key.attempt, key.lease_id) {
            return;
        }
        run.on_finished(
            key.test_index,
            key.attempt,
            agent_id,
            key.lease_id,
            result,
            Context {
                tally,
                elsewhere,
                credit,
            },
        );
        if !run.is_running() {
            self.on_run_closed(key.run_id);
        }
        self.dispatch();
    }

    /// A result for a lease this coordinator no longer has (requeued after a long disconnect, or
    /// lost in a restart). It still counts if its test waits, unleased, for exactly this attempt;
    /// otherwise it is late and ignored. Only a lease that existed and was this agent's can be
    /// adopted: an agent cannot settle tests nobody gave it by inventing lease ids.
    fn on_unleased_result(
        &mut self,
        agent_id: &AgentId,
        key: AttemptKey,
        result: AttemptResult,
        credit: Option<Credit>,
    ) {
        let issued_to_it = key.lease_id.0 < self.first_lease
            || self.lost_leases.get(&key.lease_id) == Some(agent_id);
        if issued_to_it
            && let Some(run) = self.runs.get_mut(&key.run_id).filter(|r| r.is_running())
            && run.adopt(
                key.test_index,
                key.attempt,
                agent_id,
                key.lease_id,
                result,
                credit,
            )
        {
            if !run.is_running() {
                self.on_run_closed(key.run_id);
            }
            self.dispatch();
        }
    }

    /// The agent gives back what it has not started (it is draining).
    fn on_released(&mut self, agent_id: &AgentId, lease_id: LeaseId, indices: &[u32]) {
        let Some(lease) = self
            .leases
            .get_mut(&lease_id)
            .filter(|l| l.agent == *agent_id)
        else {
            return;
        };
        let given: Vec<(u32, bool)> = lease
            .outstanding
            .iter()
            .filter(|(i, _)| indices.is_empty() || indices.contains(i))
            .map(|(i, s)| (*i, *s))
            .collect();
        for (i, _) in &given {
            lease.outstanding.remove(i);
        }
        let (run_id, empty) = (lease.run, lease.outstanding.is_empty());
        if empty {
            self.leases.remove(&lease_id);
        }
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.busy = agent.busy.saturating_sub(given.len() as u32);
        }
        if let Some(run) = self.runs.get_mut(&run_id) {
            for (index, started) in given {
                run.on_lost(index, started, agent_id, "given back by a draining agent");
            }
        }
        self.dispatch();
    }
}
