//! Agents coming and going. A broken session does not lose an agent's leases at once: the agent
//! keeps running its tests and resends their results when it reconnects. Only an agent that stays
//! away, or stays silent, for the lease timeout has its leases requeued.

use std::collections::HashSet;

use testfleet_model::{AgentId, LeaseId, NoticeLevel};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Scheduler;
use testfleet_model::session::Hello;

use super::agents::{Agent, AgentCommand, ConnId};

/// Lost leases remembered for adoption (see `Scheduler::lost_leases`).
const LOST_LEASES_KEPT: usize = 100_000;

impl Scheduler {
    pub(super) fn on_connected(
        &mut self,
        hello: Hello,
        conn: ConnId,
        tx: mpsc::UnboundedSender<AgentCommand>,
    ) {
        let id = hello.agent_id.clone();
        let _ = tx.send(AgentCommand::Welcome {
            agent_id: id.clone(),
            heartbeat_interval: self.config.heartbeat_interval,
        });
        self.agent_changed(&id);
        let held: HashSet<LeaseId> = hello.held_leases.iter().copied().collect();
        let ours: HashSet<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.agent == id)
            .map(|(lid, _)| *lid)
            .collect();
        match self.agents.get_mut(&id) {
            Some(agent) => {
                tracing::info!(agent = %id, "agent reconnected");
                agent.conn = conn;
                agent.tx = Some(tx);
                agent.disconnected_at = None;
                agent.last_seen = Instant::now();
                agent.pending_request = None;
                agent.hello = hello;
            }
            None => {
                tracing::info!(agent = %id, slots = hello.slots, "agent connected");
                self.agents.insert(id.clone(), Agent::new(hello, conn, tx));
            }
        }
        // Leases the agent no longer runs (it restarted) go back to the queue; leases it runs
        // that the coordinator no longer knows (requeued, or from before a restart) are cancelled.
        for lease in ours.difference(&held) {
            self.lose_lease(*lease, &id, "the agent came back without it (it restarted)");
        }
        if let Some(agent) = self.agents.get(&id) {
            for lease in held.difference(&ours) {
                agent.send(AgentCommand::CancelLease(*lease));
            }
        }
        self.dispatch();
    }

    /// The session ended; the agent may come back within the lease timeout.
    pub(super) fn on_disconnected(&mut self, id: &AgentId, conn: ConnId, why: &str) {
        let Some(agent) = self
            .agents
            .get_mut(id)
            .filter(|a| a.conn == conn && a.is_connected())
        else {
            return;
        };
        agent.tx = None;
        agent.pending_request = None;
        agent.disconnected_at = Some(Instant::now());
        self.agent_changed(id);
        let holds = self.leases.values().any(|l| &l.agent == id);
        tracing::info!(agent = %id, why, holds_leases = holds, "agent disconnected");
        if !holds {
            self.agents.remove(id);
        }
        self.dispatch();
    }

    /// Called on every tick: agents away or silent for the lease timeout lose their leases.
    pub(super) fn expire_agents(&mut self) {
        let timeout = self.config.lease_timeout;
        let expired: Vec<(AgentId, String)> = self
            .agents
            .iter()
            .filter_map(|(id, a)| match a.disconnected_at {
                Some(at) if at.elapsed() >= timeout => {
                    Some((id.clone(), format!("did not reconnect within {timeout:?}")))
                }
                None if a.last_seen.elapsed() >= timeout => {
                    Some((id.clone(), format!("sent nothing for {timeout:?}")))
                }
                _ => None,
            })
            .collect();
        for (id, why) in expired {
            // Dropping its channel ends a silent agent's stream, so it reconnects if it lives.
            self.on_agent_gone(&id, &why);
        }
    }

    /// Removes an agent and requeues whatever it held.
    pub(super) fn on_agent_gone(&mut self, id: &AgentId, why: &str) {
        if self.agents.remove(id).is_none() {
            return;
        }
        self.agent_changed(id);
        tracing::warn!(agent = %id, why, "agent lost");
        let lost: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| &l.agent == id)
            .map(|(lid, _)| *lid)
            .collect();
        for lease in lost {
            self.lose_lease(lease, id, why);
        }
        self.dispatch();
    }

    /// Requeues a lease's unfinished tests: those the agent had started count as infrastructure
    /// errors (never against the test), the others simply go back to the queue.
    pub(super) fn lose_lease(&mut self, lease_id: LeaseId, agent_id: &AgentId, why: &str) {
        let Some(lease) = self.leases.remove(&lease_id) else {
            return;
        };
        // Bounded: past this many, the oldest memory of lost leases goes (a result brought back
        // that late only means its test runs again).
        if self.lost_leases.len() >= LOST_LEASES_KEPT {
            self.lost_leases.clear();
        }
        self.lost_leases.insert(lease_id, agent_id.clone());
        self.metrics.lease_lost();
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.busy = a.busy.saturating_sub(lease.outstanding.len() as u32);
        }
        let Some(run) = self.runs.get_mut(&lease.run).filter(|r| r.is_running()) else {
            return;
        };
        run.notice(
            NoticeLevel::Warning,
            format!(
                "agent {agent_id} lost lease {lease_id} ({why}); {} unfinished test(s) requeued",
                lease.outstanding.len()
            ),
        );
        for (index, started) in lease.outstanding {
            run.on_lost(index, started, agent_id, why);
        }
        if !run.is_running() {
            let id = lease.run;
            self.on_run_closed(id);
        }
    }
}
