//! Cutting a lease from a run's queue for one agent: which tests (affinity, services, warm
//! containers), how many, and settling the tests no connected agent can serve.

use std::collections::{HashMap, HashSet};

use super::*;
use testfleet_model::TestFinished;

impl Run {
    fn binary_of(&self, index: u32) -> usize {
        self.spec.tests[index as usize].binary as usize
    }

    /// Whether test `index` needs services.
    pub(super) fn needs_docker(&self, index: u32) -> bool {
        self.needs_docker[self.binary_of(index)]
    }

    /// Whether any queued test needs services.
    pub fn queued_need_docker(&self) -> bool {
        // Asked on every dispatch: a run without services answers without a scan of its queue.
        self.is_running()
            && self.needs_docker.contains(&true)
            && self.queue.iter().any(|i| self.needs_docker(*i))
    }

    /// Takes the next batch for `agent` out of the queue, marking each test as leased. Tests that
    /// need services go only to an agent with Docker; tests whose agent-scope services are
    /// already running on this agent (`warm`) come first, then tests whose images its engine
    /// holds (no pull), then the rest.
    pub fn take_batch(
        &mut self,
        agent: &Candidate<'_>,
        max_tests: usize,
        budget: Duration,
        at_least_one: bool,
        lease: LeaseId,
    ) -> Vec<(u32, u32)> {
        // A retry avoids the agent that failed it only when another agent could run it: without
        // that, a test needing services whose only other agent lacks Docker would wait forever.
        let now = tokio::time::Instant::now();
        let eligible = |i: u32| {
            let t = &self.tests[i as usize];
            if t.not_before().is_some_and(|at| at > now) {
                return false;
            }
            let needs_docker = self.needs_docker(i);
            let others = if needs_docker {
                agent.others_with_docker
            } else {
                agent.others_connected
            };
            (!others || self.tests[i as usize].avoid() != Some(agent.id))
                && (agent.docker || !needs_docker)
        };
        // Warm: the agent runs the test's agent-scope services already, or its workers ran the
        // test's module or class last and may hold its fixtures.
        let recent = self.recent_shares.get(agent.id);
        let warm = |i: u32| {
            let profile = &self.agent_profile[self.binary_of(i)];
            (!profile.is_empty() && profile.iter().all(|f| agent.warm.contains(f)))
                || self.spec.tests[i as usize]
                    .shares()
                    .is_some_and(|k| recent.is_some_and(|r| r.contains(k)))
        };
        // Its engine holds every registry image the test's services run: no pull before it starts.
        let pulled = |i: u32| {
            let images = &self.images[self.binary_of(i)];
            !images.is_empty() && images.iter().all(|im| agent.images.contains(im))
        };
        let holds_images = self
            .images
            .iter()
            .flatten()
            .any(|im| agent.images.contains(im));
        let affinity = !agent.warm.is_empty() || recent.is_some() || holds_images;
        let window = if affinity { AFFINITY_WINDOW } else { max_tests };
        let mut chosen: Vec<usize> = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, i)| eligible(**i))
            .map(|(pos, _)| pos)
            .take(window.max(max_tests))
            .collect();
        if affinity {
            // Stable: queue order is kept within the warm tests, within those whose images are
            // there, and within the rest.
            chosen.sort_by_key(|p| {
                let i = self.queue[*p];
                (!warm(i), !pulled(i))
            });
        }
        self.admit_constrained(&mut chosen, agent);
        chosen.truncate(max_tests);
        let n = take_count(
            chosen
                .iter()
                .map(|p| self.tests[self.queue[*p] as usize].estimate()),
            budget,
            max_tests,
            at_least_one,
        );
        chosen.truncate(n);
        self.fill_with_mates(&mut chosen, &eligible);
        self.add_groups(&mut chosen, eligible);
        let shared: HashSet<String> = chosen
            .iter()
            .filter_map(|p| {
                self.spec.tests[self.queue[*p] as usize]
                    .shares()
                    .map(str::to_owned)
            })
            .collect();
        if shared.is_empty() {
            self.recent_shares.remove(agent.id);
        } else {
            self.recent_shares.insert(agent.id.clone(), shared);
        }
        let batch: Vec<(u32, u32)> = chosen
            .iter()
            .map(|p| {
                let index = self.queue[*p];
                (index, self.tests[index as usize].attempt())
            })
            .collect();
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        for pos in chosen {
            let index = self
                .queue
                .remove(pos)
                .expect("position came from the queue");
            let t = &mut self.tests[index as usize];
            t.set_leased(Some(lease));
            if t.take_not_before().is_some() {
                self.delayed -= 1;
            }
            self.queued_estimate = self.queued_estimate.saturating_sub(t.estimate());
            self.hold_group_slot(index);
        }
        batch
    }

    /// The slot of its test group test `index` holds while leased, if it is in one.
    pub fn group_slot_of(&self, index: u32) -> Option<u32> {
        self.tests[index as usize].group_slot()
    }

    /// Drops from `chosen` (queue positions, in lease order) the tests that cannot start at once
    /// on the agent: a test that takes several slots needs that many idle ones left after the
    /// tests before it, and a test of a test group needs a free slot of the group, across all
    /// agents. Other tests stay, and may wait behind busy slots as usual.
    fn admit_constrained(&self, chosen: &mut Vec<usize>, agent: &Candidate<'_>) {
        if self.spec.settings.is_empty() {
            return;
        }
        let mut idle = agent.free_slots;
        let mut group_free: Vec<usize> = self
            .group_held
            .iter()
            .map(|h| h.iter().filter(|held| !**held).count())
            .collect();
        chosen.retain(|pos| {
            let index = self.queue[*pos];
            let Some(s) = self.settings_of(index) else {
                idle = idle.saturating_sub(1);
                return true;
            };
            let need = s.slots_on(agent.slots);
            let group = s.test_group.map(|g| g as usize);
            let constrained = need > 1 || group.is_some();
            if constrained && (need > idle || group.is_some_and(|g| group_free[g] == 0)) {
                return false;
            }
            if let Some(g) = group {
                group_free[g] -= 1;
            }
            idle = idle.saturating_sub(need);
            true
        });
    }

    /// Marks the lowest free slot of test `index`'s group as held by it.
    fn hold_group_slot(&mut self, index: u32) {
        let Some(group) = self.settings_of(index).and_then(|s| s.test_group) else {
            return;
        };
        let held = &mut self.group_held[group as usize];
        if let Some(slot) = held.iter().position(|h| !*h) {
            held[slot] = true;
            self.tests[index as usize].set_group_slot(slot as u32);
        }
    }

    /// Keeps the batch's size but fills it, head first, with queued tests that share fixtures
    /// with the tests already in it ([`testfleet_model::TestSpec::shares`]: a pytest module's or class's), so that
    /// a worker sets those fixtures up once for them all instead of once per lease. The longest
    /// tests still come first; only which tests follow them changes.
    fn fill_with_mates(&self, chosen: &mut Vec<usize>, eligible: &impl Fn(u32) -> bool) {
        let shares = |pos: usize| self.spec.tests[self.queue[pos] as usize].shares();
        let keys: HashSet<&str> = chosen.iter().filter_map(|p| shares(*p)).collect();
        if keys.is_empty() {
            return;
        }
        // One pass over the queue: each key's queued mates, in queue order.
        let mut mates: HashMap<&str, Vec<usize>> = HashMap::new();
        for pos in 0..self.queue.len() {
            if let Some(k) = shares(pos).filter(|k| keys.contains(k))
                && eligible(self.queue[pos])
            {
                mates.entry(k).or_default().push(pos);
            }
        }
        let size = chosen.len();
        let mut filled = Vec::with_capacity(size);
        let mut taken = HashSet::with_capacity(size);
        for &pos in chosen.iter() {
            if filled.len() == size {
                break;
            }
            if taken.insert(pos) {
                filled.push(pos);
            }
            let Some(key) = shares(pos) else { continue };
            for &mate in mates.get(key).into_iter().flatten() {
                if filled.len() == size {
                    break;
                }
                if taken.insert(mate) {
                    filled.push(mate);
                }
            }
        }
        *chosen = filled;
    }

    /// Adds to `chosen` (queue positions) every queued test that shares a group with one of them:
    /// a group's tests go in one lease, to run one after another in one process on its agent.
    fn add_groups(&self, chosen: &mut Vec<usize>, eligible: impl Fn(u32) -> bool) {
        let group = |pos: usize| self.spec.tests[self.queue[pos] as usize].group();
        let groups: HashSet<&str> = chosen.iter().filter_map(|p| group(*p)).collect();
        if groups.is_empty() {
            return;
        }
        let taken: HashSet<usize> = chosen.iter().copied().collect();
        let more: Vec<usize> = (0..self.queue.len())
            .filter(|p| !taken.contains(p))
            .filter(|p| group(*p).is_some_and(|g| groups.contains(&g)))
            .filter(|p| eligible(self.queue[*p]))
            .collect();
        chosen.extend(more);
    }

    /// Settles every queued test that needs services as an infrastructure error: no connected
    /// agent can start them.
    pub fn fail_unservable(&mut self, why: &str) {
        let needs = self.needs_docker.clone();
        let spec = self.spec.clone();
        let (unservable, rest): (Vec<u32>, Vec<u32>) = self
            .queue
            .drain(..)
            .partition(|i| needs[spec.tests[*i as usize].binary as usize]);
        self.queue = rest.into();
        let message = format!("{} test(s) cannot run: {why}", unservable.len());
        self.notice(NoticeLevel::Error, message);
        for index in unservable {
            let t = &mut self.tests[index as usize];
            self.queued_estimate = self.queued_estimate.saturating_sub(t.estimate());
            t.outcome = Some(Outcome::InfraError);
            let (attempt, quarantined) = (t.attempt(), t.quarantined);
            let test = self.test_ref(index);
            self.emit(EventKind::TestFinished(TestFinished {
                test,
                attempt,
                agent_id: String::new(),
                result: AttemptResult::infra_error(why),
                final_outcome: Some(Outcome::InfraError),
                lease_id: None,
                quarantined,
            }));
            self.settle(index, Outcome::InfraError);
        }
    }
}
