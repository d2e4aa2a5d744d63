//! Keeping a test's summary true to its log: each recorded attempt updates the incremental fields
//! (totals, decayed flip rate, first/last seen), and the window fields (flaky revisions, evidence,
//! failure-probability inputs, percentiles, slowdown) are recomputed from the bounded log.

use super::records::{AttemptView, Evidence, LogView, LoggedAttempt, TestLog, TestSummary};
use super::stats::{SlowdownRule, decayed_flip, p50_p95_p99, slowdown};

/// Evidence entries kept per test.
pub const EVIDENCE_KEEP: usize = 20;

/// Appends `a` to the log and brings the summary up to date.
pub fn record(summary: &mut TestSummary, log: &mut TestLog, a: LoggedAttempt) {
    count(summary, &AttemptView::of(&a));
    log.push(a);
    let view = LogView::of(log);
    recompute_window(summary, &view);
}

/// [`record`] on a log read as views: what the writer does for every result.
pub fn record_view<'a>(summary: &mut TestSummary, log: &mut LogView<'a>, a: AttemptView<'a>) {
    count(summary, &a);
    log.push(a);
    recompute_window(summary, log);
}

/// The incremental fields: totals, the decayed flip rate, first and last seen.
fn count(summary: &mut TestSummary, a: &AttemptView<'_>) {
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
}

/// Passes and failures on each revision of a log window, sorted by revision. A window holds at
/// most [`TestLog::KEEP`] attempts, and usually a few revisions: a sorted list is cheaper than a
/// hash map here, which this runs once per result.
struct PerRevision<'a>(Vec<(&'a str, u64, u64)>);

impl<'a> PerRevision<'a> {
    fn of(log: &LogView<'a>) -> Self {
        let mut revs: Vec<(&str, u64, u64)> = Vec::with_capacity(log.attempts.len());
        for a in &log.attempts {
            match revs.binary_search_by(|(r, _, _)| (*r).cmp(a.revision)) {
                Ok(i) => tally(&mut revs[i], a.failed()),
                Err(i) => {
                    revs.insert(i, (a.revision, 0, 0));
                    tally(&mut revs[i], a.failed());
                }
            }
        }
        PerRevision(revs)
    }

    fn get(&self, rev: &str) -> Option<(u64, u64)> {
        let i = self.0.binary_search_by(|(r, _, _)| (*r).cmp(rev)).ok()?;
        Some((self.0[i].1, self.0[i].2))
    }
}

fn tally(counts: &mut (&str, u64, u64), failed: bool) {
    if failed {
        counts.2 += 1;
    } else {
        counts.1 += 1;
    }
}

/// Recomputes everything that depends on the log window alone.
pub fn recompute_window(s: &mut TestSummary, log: &LogView<'_>) {
    let per_revision = PerRevision::of(log);
    let flaky = |rev: &str| per_revision.get(rev).is_some_and(|(p, f)| p > 0 && f > 0);
    let good = |rev: &str| per_revision.get(rev).is_some_and(|(p, _)| p > 0);
    s.flaky_revisions = per_revision
        .0
        .iter()
        .filter(|(_, p, f)| *p > 0 && *f > 0)
        .count() as u32;
    let evidence: Vec<&AttemptView<'_>> =
        log.attempts.iter().filter(|a| flaky(a.revision)).collect();
    s.evidence = evidence[evidence.len().saturating_sub(EVIDENCE_KEEP)..]
        .iter()
        .map(|a| Evidence {
            run_id: a.run_id,
            attempt: a.attempt,
            revision: a.revision.to_owned(),
            agent_id: a.agent_id.to_owned(),
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
    let (mut good_attempts, mut good_failures) = (0, 0);
    for a in log.attempts.iter().filter(|a| good(a.revision)) {
        good_attempts += 1;
        good_failures += u64::from(a.failed());
    }
    s.good_attempts = good_attempts;
    s.good_failures = good_failures;
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

    /// The writer's way (a log read as views, one attempt at a time from its encoded form) ends
    /// with the same summary, and the same bytes, as recording into an owned log.
    #[test]
    fn recording_into_a_viewed_log_matches_an_owned_one() {
        use crate::history::records::{TestLogPart, encode_test, view_test_log};
        let attempts: Vec<_> = (0..130)
            .map(|i| attempt(i, 1, &format!("r{}", i % 4), i % 3 == 0, 10 + i % 17))
            .collect();
        let (owned_summary, owned_log) = replay(attempts.clone());
        let mut summary = TestSummary::default();
        let mut bytes = encode_test(&summary, TestLogPart::Decoded(&TestLog::default()));
        for a in &attempts {
            let (_, log) = crate::history::records::decode_test_summary(b"k", &bytes).unwrap();
            let mut log = view_test_log(b"k", log).unwrap();
            record_view(&mut summary, &mut log, AttemptView::of(a));
            bytes = encode_test(&summary, TestLogPart::Viewed(&log));
        }
        assert_eq!(summary, owned_summary);
        assert_eq!(
            bytes,
            encode_test(&owned_summary, TestLogPart::Decoded(&owned_log))
        );
        assert!(summary.flaky_revisions > 0 && !summary.evidence.is_empty());
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
