//! History's decisions, apart from how they are stored: how a test's quarantine moves after a run
//! (entry by the auto policy, a clean streak towards release, a reset), and which leases are left
//! out of the tests' statistics because nearly all of them failed at once. Pure functions, shaped
//! like `testfleet_model::decide_after_attempt`: the store reads, decides here, and writes.

use testfleet_model::{Outcome, QuarantinePolicy};

use super::records::QuarantineEntry;

/// A lease at least this large, with at least this share of failures, is excluded.
pub const MASS_FAILURE_MIN_TESTS: u32 = 4;
pub const MASS_FAILURE_PERCENT: u32 = 80;

/// Whether a finished lease points at its machine rather than at its tests: nearly every test
/// failed at once (see `docs/design/history.md`).
pub fn is_mass_failure(tests: u32, failed: u32) -> bool {
    tests >= MASS_FAILURE_MIN_TESTS && failed * 100 >= tests * MASS_FAILURE_PERCENT
}

/// What a run does to one test's quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuarantineChange {
    /// Nothing to write.
    None,
    /// The entry stays, with its clean streak updated.
    Keep(QuarantineEntry),
    /// Released after enough clean runs in a row.
    Release { streak: u32 },
    /// Quarantined by the auto policy.
    Enter(QuarantineEntry),
}

/// The run that settled a test.
#[derive(Debug, Clone, Copy)]
pub struct SettledIn {
    pub run_id: u64,
    pub created_unix_ms: u64,
}

/// How a test's quarantine moves after a run in which it ended with `outcome`: clean runs count
/// towards release, a flaky or failing run resets the count, and the auto policy quarantines a
/// test that proved flaky (flaky in this run, or `proved_flaky`: it passed and failed on the same
/// revision before). A test that only ever fails is broken, not flaky: it stays visible.
/// `proved_flaky` is asked only when it decides.
pub fn settle_quarantine<E>(
    entry: Option<QuarantineEntry>,
    outcome: Outcome,
    policy: QuarantinePolicy,
    run: SettledIn,
    proved_flaky: impl FnOnce() -> Result<bool, E>,
) -> Result<QuarantineChange, E> {
    let failed = matches!(
        outcome,
        Outcome::Flaky | Outcome::Failed | Outcome::TimedOut
    );
    Ok(match entry {
        Some(mut e) if outcome == Outcome::Passed => {
            e.clean_streak += 1;
            if policy.release_after > 0 && e.clean_streak >= policy.release_after {
                QuarantineChange::Release {
                    streak: e.clean_streak,
                }
            } else {
                QuarantineChange::Keep(e)
            }
        }
        Some(mut e) if failed => {
            e.clean_streak = 0;
            QuarantineChange::Keep(e)
        }
        None if failed && policy.auto => {
            let reason = if outcome == Outcome::Flaky {
                format!("failed, then passed on retry in run {}", run.run_id)
            } else if proved_flaky()? {
                format!(
                    "passed and failed on the same revision (run {})",
                    run.run_id
                )
            } else {
                return Ok(QuarantineChange::None);
            };
            QuarantineChange::Enter(QuarantineEntry {
                since_ms: run.created_unix_ms,
                by: "auto".into(),
                reason,
                clean_streak: 0,
            })
        }
        _ => QuarantineChange::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: SettledIn = SettledIn {
        run_id: 7,
        created_unix_ms: 1000,
    };

    fn entry(streak: u32) -> QuarantineEntry {
        QuarantineEntry {
            since_ms: 1,
            by: "alice".into(),
            reason: "flaky since #1".into(),
            clean_streak: streak,
        }
    }

    fn policy(auto: bool, release_after: u32) -> QuarantinePolicy {
        QuarantinePolicy {
            auto,
            release_after,
        }
    }

    fn settle(
        e: Option<QuarantineEntry>,
        o: Outcome,
        p: QuarantinePolicy,
        flaky_before: bool,
    ) -> QuarantineChange {
        settle_quarantine::<()>(e, o, p, RUN, || Ok(flaky_before)).unwrap()
    }

    #[test]
    fn clean_runs_release_after_the_streak_and_a_failure_resets_it() {
        assert_eq!(
            settle(Some(entry(1)), Outcome::Passed, policy(false, 3), false),
            QuarantineChange::Keep(entry(2))
        );
        assert_eq!(
            settle(Some(entry(2)), Outcome::Passed, policy(false, 3), false),
            QuarantineChange::Release { streak: 3 }
        );
        assert_eq!(
            settle(Some(entry(2)), Outcome::Passed, policy(false, 0), false),
            QuarantineChange::Keep(entry(3)),
            "0 never releases"
        );
        for o in [Outcome::Flaky, Outcome::Failed, Outcome::TimedOut] {
            assert_eq!(
                settle(Some(entry(2)), o, policy(false, 3), false),
                QuarantineChange::Keep(entry(0))
            );
        }
        assert_eq!(
            settle(Some(entry(2)), Outcome::Skipped, policy(true, 3), true),
            QuarantineChange::None
        );
    }

    #[test]
    fn the_auto_policy_quarantines_proved_flaky_tests_and_never_broken_ones() {
        let QuarantineChange::Enter(e) = settle(None, Outcome::Flaky, policy(true, 3), false)
        else {
            panic!("a flaky run quarantines");
        };
        assert_eq!(
            (e.by.as_str(), e.since_ms, e.clean_streak),
            ("auto", 1000, 0)
        );
        assert!(e.reason.contains("run 7"), "{}", e.reason);
        assert!(matches!(
            settle(None, Outcome::Failed, policy(true, 3), true),
            QuarantineChange::Enter(e) if e.reason.contains("same revision")
        ));
        assert_eq!(
            settle(None, Outcome::Failed, policy(true, 3), false),
            QuarantineChange::None,
            "only ever failing: broken, not flaky"
        );
        assert_eq!(
            settle(None, Outcome::Flaky, policy(false, 3), true),
            QuarantineChange::None,
            "no auto policy"
        );
        let asked = std::cell::Cell::new(false);
        let _ = settle_quarantine::<()>(None, Outcome::Passed, policy(true, 3), RUN, || {
            asked.set(true);
            Ok(true)
        });
        assert!(!asked.get(), "history is read only when it decides");
    }

    #[test]
    fn a_lease_is_a_mass_failure_when_nearly_all_of_a_large_one_failed() {
        assert!(is_mass_failure(4, 4));
        assert!(is_mass_failure(10, 8));
        assert!(!is_mass_failure(10, 7));
        assert!(!is_mass_failure(3, 3), "too small to tell");
    }
}
