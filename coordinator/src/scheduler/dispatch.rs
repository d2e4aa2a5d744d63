//! Dispatch: parked work requests served from the queues of running runs, oldest run first, and
//! tests no connected agent can serve settled after the grace period.

use testfleet_model::LeaseId;

use super::agents::{AgentCommand, Lease, LeaseGrant};
use super::batch;
use super::run::Run;
use super::{Candidate, Fleet, Scheduler};

impl Scheduler {
    /// Settles the service tests of runs that no connected agent can serve. With no agent
    /// connected at all, tests wait: agents may still come.
    pub(super) fn fail_unservable(&mut self) {
        let fleet = self.fleet();
        let stuck = fleet.connected > 0
            && fleet.docker == 0
            && self.runs.values().any(Run::queued_need_docker);
        if !stuck {
            self.unservable_since = None;
            return;
        }
        let since = *self
            .unservable_since
            .get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < self.config.service_grace {
            return;
        }
        self.unservable_since = None;
        let mut reasons: Vec<String> = self
            .agents
            .values()
            .filter(|a| a.is_connected())
            .map(|a| format!("{}: {}", a.hello.agent_id, a.hello.docker_status))
            .collect();
        reasons.sort();
        let why = format!(
            "no connected agent can start services (Docker unavailable on {})",
            reasons.join("; ")
        );
        let mut closed = vec![];
        for run in self.runs.values_mut().filter(|r| r.queued_need_docker()) {
            run.fail_unservable(&why);
            if !run.is_running() {
                closed.push(run.id);
            }
        }
        for id in closed {
            self.on_run_closed(id);
        }
    }

    /// Serves parked work requests from the queues of running runs, oldest run first.
    pub(super) fn dispatch(&mut self) {
        self.fail_unservable();
        if !self.runs.values().any(Run::has_queued) {
            return;
        }
        if self.waiting.is_empty() {
            return;
        }
        // Only connected agents can take work; one that is away may still come back to finish its
        // leases, but plans are made with those present.
        let Fleet {
            connected,
            docker: docker_agents,
            slots: total_slots,
        } = self.fleet();
        let multiple_agents = connected > 1;
        let mut served = vec![];
        for agent_id in &self.waiting {
            let Some(agent) = self.agents.get_mut(agent_id) else {
                served.push(agent_id.clone());
                continue;
            };
            let Some(wanted) = agent.pending_request else {
                continue;
            };
            let slots = (wanted.free + wanted.queue) as usize;
            let only = agent.hello.only_run();
            for run in self
                .runs
                .values_mut()
                .filter(|r| r.has_queued() && only.is_none_or(|id| id == r.id))
            {
                let budget =
                    batch::lease_budget(run.queued_estimate(), agent.hello.slots, total_slots);
                let lease_id = LeaseId(self.next_lease);
                let candidate = Candidate {
                    id: agent_id,
                    others_connected: multiple_agents,
                    others_with_docker: docker_agents > usize::from(agent.hello.docker_available),
                    docker: agent.hello.docker_available,
                    warm: &agent.warm,
                    images: &agent.images,
                    slots: agent.hello.slots,
                    free_slots: wanted.free,
                };
                // In batch mode a slot runs a whole process's worth of tests at a time.
                let per_slot = batch::TESTS_PER_SLOT.max(run.spec.tests_per_process as usize);
                let max_tests = slots * per_slot;
                let tests =
                    run.take_batch(&candidate, max_tests, budget, wanted.free > 0, lease_id);
                if tests.is_empty() {
                    continue;
                }
                run.note_slots(total_slots);
                run.warn_if_unsandboxed(agent_id, &agent.hello.sandbox_status);
                self.metrics.lease_granted();
                self.next_lease += 1;
                agent.pending_request = None;
                served.push(agent_id.clone());
                agent.busy += tests.len() as u32;
                self.leases.insert(
                    lease_id,
                    Lease {
                        run: run.id,
                        agent: agent_id.clone(),
                        outstanding: tests.iter().map(|(i, _)| (*i, false)).collect(),
                        tests: tests.len() as u32,
                        failed: 0,
                    },
                );
                let group_slots = tests
                    .iter()
                    .filter_map(|(i, _)| run.group_slot_of(*i).map(|s| (*i, s)))
                    .collect();
                agent.send(AgentCommand::Lease(LeaseGrant {
                    lease_id,
                    run_id: run.id,
                    spec: run.spec.clone(),
                    tests,
                    group_slots,
                    traceparent: run.traceparent().to_owned(),
                }));
                break;
            }
        }
        for id in served {
            self.waiting.remove(&id);
        }
    }
}
