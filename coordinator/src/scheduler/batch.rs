//! Lease sizing by guided self-scheduling: big batches while much work remains (few round trips),
//! single tests near the end (a short tail). A lease may hold more tests than the agent has free
//! slots: they queue on the agent, which then never waits for a round trip between tests.

use std::time::Duration;

/// How much estimated work one lease for an agent with `agent_slots` should carry, given the
/// estimated work still queued and the slots of every connected agent.
pub fn lease_budget(remaining: Duration, agent_slots: u32, total_slots: u32) -> Duration {
    let total = total_slots.max(1);
    remaining.mul_f64(agent_slots as f64 / (2.0 * total as f64))
}

/// Most tests leased per requesting slot at once (the budget usually allows fewer).
pub const TESTS_PER_SLOT: usize = 32;

/// Picks tests from `candidates` (queue order, with estimates) until the budget is used, never
/// more than `max_tests`; at least one if `at_least_one` (the agent has an idle slot), else none
/// that would exceed the budget (tests would only queue behind others). Returns how many to take.
pub fn take_count(
    estimates: impl Iterator<Item = Duration>,
    budget: Duration,
    max_tests: usize,
    at_least_one: bool,
) -> usize {
    let mut used = Duration::ZERO;
    let mut n = 0;
    for e in estimates {
        if n >= max_tests || ((n > 0 || !at_least_one) && used + e > budget) {
            break;
        }
        used += e;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn early_leases_are_big_and_late_ones_single() {
        // 100 one-second tests, two agents of 4 slots: a quarter of the remaining work, capped by slots.
        let budget = lease_budget(100 * S, 4, 8);
        assert_eq!(budget, 25 * S);
        assert_eq!(take_count(std::iter::repeat_n(S, 100), budget, 4, true), 4);
        assert_eq!(
            take_count(std::iter::repeat_n(S, 100), budget, 100, true),
            25
        );
        // Near the end, a lease holds a single test even with free slots...
        let budget = lease_budget(3 * S, 4, 8);
        assert_eq!(take_count(std::iter::repeat_n(S, 3), budget, 4, true), 1);
        // ...and none to queue behind busy slots.
        assert_eq!(take_count(std::iter::repeat_n(S, 3), budget, 4, false), 0);
        assert_eq!(
            take_count(std::iter::repeat_n(S, 100), 10 * S, 100, false),
            10
        );
    }

    #[test]
    fn at_least_one_test_even_when_it_exceeds_the_budget() {
        assert_eq!(take_count([10 * S, S].into_iter(), S, 4, true), 1);
        assert_eq!(take_count(std::iter::empty(), S, 4, true), 0);
        assert_eq!(take_count([S].into_iter(), S, 0, true), 0);
    }
}
