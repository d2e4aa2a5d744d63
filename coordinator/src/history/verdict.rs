//! Keeping a test's summary true to its log: each recorded attempt updates the incremental fields
//! (totals, decayed flip rate, first/last seen), and the window fields (flaky revisions, evidence,
//! failure-probability inputs, percentiles, slowdown) are recomputed from the bounded log.

use std::collections::HashMap;

use super::records::{Evidence, LoggedAttempt, TestLog, TestSummary};
use super::stats::{SlowdownRule, decayed_flip, p50_p95_p99, slowdown};

/// Evidence entries kept per test.
pub const EVIDENCE_KEEP: usize = 20;

/// Appends `a` to the log and brings the summary up to date.
pub fn record(summary: &mut TestSummary, log: &mut TestLog, a: LoggedAttempt) {
    let failed = a.failed();
    summary.attempts += 1;
    summary.failures += u64::from(failed);
    if let Some(prev) = summary.last_failed {
        summary.flip_rate = decayed_flip(summary.flip_rate, prev != failed);
    }
    summary.last_failed = Some(failed);
    if summary.first_seen_ms == 0 || a.at_unix_ms < summary.first_seen_ms {
        summary.first_seen_ms = a.at_unix_ms;
    }
    summary.last_seen_ms = summary.last_seen_ms.max(a.at_unix_ms);
    log.push(a);
    recompute_window(summary, log);
}

/// Recomputes everything that depends on the log window alone.
pub fn recompute_window(s: &mut TestSummary, log: &TestLog) {
    let mut per_revision: HashMap<&str, (u64, u64)> = HashMap::new();
    for a in &log.attempts {
        let e = per_revision.entry(a.revision.as_str()).or_default();
        if a.failed() {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    let flaky = |rev: &str| per_revision.get(rev).is_some_and(|(p, f)| *p > 0 && *f > 0);
    let good = |rev: &str| per_revision.get(rev).is_some_and(|(p, _)| *p > 0);
    s.flaky_revisions = per_revision
        .values()
        .filter(|(p, f)| *p > 0 && *f > 0)
        .count() as u32;
    let evidence: Vec<&LoggedAttempt> =
        log.attempts.iter().filter(|a| flaky(&a.revision)).collect();
    s.evidence = evidence[evidence.len().saturating_sub(EVIDENCE_KEEP)..]
        .iter()
        .map(|a| Evidence {
            run_id: a.run_id,
            attempt: a.attempt,
            revision: a.revision.clone(),
            agent_id: a.agent_id.clone(),
            failed: a.failed(),
        })
        .collect();
    if let Some(last) = evidence.last() {
        let first = evidence
            .first()
            .map(|a| a.at_unix_ms)
            .unwrap_or(last.at_unix_ms);
        s.first_flaky_ms = Some(s.first_flaky_ms.map_or(first, |f| f.min(first)));
        s.last_flaky_ms = Some(
            s.last_flaky_ms
                .map_or(last.at_unix_ms, |l| l.max(last.at_unix_ms)),
        );
    }
    let on_good: Vec<&LoggedAttempt> = log.attempts.iter().filter(|a| good(&a.revision)).collect();
    s.good_attempts = on_good.len() as u64;
    s.good_failures = on_good.iter().filter(|a| a.failed()).count() as u64;
    let passing: Vec<u64> = log
        .attempts
        .iter()
        .filter(|a| !a.failed())
        .map(|a| a.duration_ms)
        .collect();
    s.samples = passing.len() as u32;
    let pct = p50_p95_p99(&passing);
    s.p50_ms = pct.map(|p| p.0);
    s.p95_ms = pct.map(|p| p.1);
    s.p99_ms = pct.map(|p| p.2);
    s.slowdown = slowdown(&passing, SlowdownRule::default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use testfleet_model::AttemptStatus;

    fn attempt(run: u64, attempt: u32, rev: &str, failed: bool, ms: u64) -> LoggedAttempt {
        LoggedAttempt {
            run_id: run,
            attempt,
            revision: rev.into(),
            status: if failed {
                AttemptStatus::Failed
            } else {
                AttemptStatus::Passed
            },
            duration_ms: ms,
            agent_id: format!("agent-{}", run % 2),
            at_unix_ms: 1_000 + run,
        }
    }

    fn replay(attempts: Vec<LoggedAttempt>) -> (TestSummary, TestLog) {
        let (mut s, mut log) = (TestSummary::default(), TestLog::default());
        for a in attempts {
            record(&mut s, &mut log, a);
        }
        (s, log)
    }

    #[test]
    fn pass_and_fail_on_one_revision_is_flaky_with_evidence() {
        // Run 1: fail then pass on retry; run 2: pass; run 3: fail, pass.
        let (s, _) = replay(vec![
            attempt(1, 1, "abc", true, 90),
            attempt(1, 2, "abc", false, 10),
            attempt(2, 1, "abc", false, 12),
            attempt(3, 1, "abc", true, 95),
            attempt(3, 2, "abc", false, 11),
        ]);
        assert_eq!(s.flaky_revisions, 1);
        assert_eq!((s.attempts, s.failures), (5, 2));
        assert_eq!((s.good_attempts, s.good_failures), (5, 2));
        assert_eq!(s.evidence.len(), 5);
        let failing_runs: Vec<u64> = s
            .evidence
            .iter()
            .filter(|e| e.failed)
            .map(|e| e.run_id)
            .collect();
        assert_eq!(failing_runs, [1, 3]);
        assert_eq!(
            (s.first_flaky_ms, s.last_flaky_ms),
            (Some(1001), Some(1003))
        );
        // Percentiles over passing durations only: failures would distort them.
        assert_eq!((s.p50_ms, s.p95_ms, s.samples), (Some(11), Some(12), 3));
    }

    #[test]
    fn failing_on_one_revision_and_passing_on_the_next_is_a_fix_not_a_flake() {
        let (s, _) = replay(vec![
            attempt(1, 1, "broken", true, 5),
            attempt(1, 2, "broken", true, 5),
            attempt(2, 1, "fixed", false, 5),
        ]);
        assert_eq!(s.flaky_revisions, 0);
        assert!(s.evidence.is_empty());
        // Only the good revision counts towards the failure probability.
        assert_eq!((s.good_attempts, s.good_failures), (1, 0));
    }

    #[test]
    fn the_log_stays_bounded_and_totals_stay_right() {
        let attempts: Vec<_> = (0..250)
            .map(|i| attempt(i, 1, "r", i % 10 == 0, 10))
            .collect();
        let (s, log) = replay(attempts);
        assert_eq!(log.attempts.len(), TestLog::KEEP);
        assert_eq!(log.compacted.attempts, 150);
        assert_eq!(log.compacted.failures, 15);
        assert_eq!((s.attempts, s.failures), (250, 25));
        assert_eq!(s.evidence.len(), EVIDENCE_KEEP);
    }

    #[test]
    fn a_steady_test_is_never_flaky() {
        let (s, _) = replay(
            (0..50)
                .map(|i| attempt(i, 1, &format!("r{i}"), false, 10 + i))
                .collect(),
        );
        assert_eq!(s.flaky_revisions, 0);
        assert_eq!(s.flip_rate, 0.0);
        assert_eq!(s.failures, 0);
    }
}
