//! Read-side queries over history: each answers from the precomputed summaries (one scan of a small
//! tree), never from attempt logs, except `test_history` which reads the one test's log.

use std::collections::{BTreeMap, HashSet};

use testfleet_model::TestId;
use testfleet_model::report::{
    FlakyTest, HistoryAttempt, QuarantineInfo, RunOverview, Slowdown, SuiteTiming, TestHistory,
    TestName, TestTiming, Timings,
};

use super::stats::{p50_p95_p99, wilson};
use super::{HistoryError, HistoryStore, QuarantineEntry, RunRecord, TestSummary};

fn name(s: &TestSummary) -> TestName {
    TestName {
        suite: s.suite.clone(),
        binary_id: s.binary_id.clone(),
        name: s.name.clone(),
    }
}

fn quarantine_set(
    store: &dyn HistoryStore,
) -> Result<HashSet<(String, String, String)>, HistoryError> {
    Ok(store
        .quarantine_list()?
        .into_iter()
        .map(|(suite, id, _)| (suite, id.binary_id, id.name))
        .collect())
}

fn flaky_of(s: &TestSummary, quarantined: bool) -> FlakyTest {
    let p = wilson(s.good_failures, s.good_attempts);
    FlakyTest {
        test: name(s),
        attempts: s.attempts,
        failures: s.failures,
        flaky_revisions: s.flaky_revisions,
        flip_rate: s.flip_rate,
        failure_probability: p.map(|p| p.estimate).unwrap_or(0.0),
        probability_low: p.map(|p| p.low).unwrap_or(0.0),
        probability_high: p.map(|p| p.high).unwrap_or(0.0),
        first_flaky_ms: s.first_flaky_ms,
        last_flaky_ms: s.last_flaky_ms,
        first_seen_ms: s.first_seen_ms,
        last_seen_ms: s.last_seen_ms,
        evidence: s.evidence.clone(),
        quarantined,
        excluded: s.excluded,
    }
}

/// Tests that passed and failed on the same revision, most flip-prone first.
pub fn flaky(
    store: &dyn HistoryStore,
    suite: Option<&str>,
) -> Result<Vec<FlakyTest>, HistoryError> {
    let q = quarantine_set(store)?;
    let mut out: Vec<FlakyTest> = Vec::new();
    store.for_each_summary(suite, &mut |s| {
        if s.flaky_revisions > 0 {
            let quarantined = q.contains(&(s.suite.clone(), s.binary_id.clone(), s.name.clone()));
            out.push(flaky_of(s, quarantined));
        }
    })?;
    out.sort_by(|a, b| {
        b.flip_rate
            .total_cmp(&a.flip_rate)
            .then(b.failure_probability.total_cmp(&a.failure_probability))
            .then_with(|| (&a.test.binary_id, &a.test.name).cmp(&(&b.test.binary_id, &b.test.name)))
    });
    Ok(out)
}

/// The `top` slowest tests by p95 (all with `slowdowns_only`: only the ones that got slower), and
/// per-suite figures.
pub fn timings(
    store: &dyn HistoryStore,
    suite: Option<&str>,
    top: usize,
    slowdowns_only: bool,
) -> Result<Timings, HistoryError> {
    let order = |a: &TestTiming, b: &TestTiming| {
        b.p95_ms
            .cmp(&a.p95_ms)
            .then_with(|| a.test.name.cmp(&b.test.name))
    };
    // The top `top` by p95, kept as the scan goes: only candidates are copied.
    let mut tests: Vec<TestTiming> = Vec::new();
    let mut floor: Option<u64> = None;
    let mut per_suite: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    store.for_each_summary(suite, &mut |s| {
        if let Some(p50) = s.p50_ms {
            match per_suite.get_mut(s.suite.as_str()) {
                Some(v) => v.push(p50),
                None => {
                    per_suite.insert(s.suite.clone(), vec![p50]);
                }
            }
        }
        if slowdowns_only && s.slowdown.is_none() {
            return;
        }
        let (Some(p50_ms), Some(p95_ms), Some(p99_ms)) = (s.p50_ms, s.p95_ms, s.p99_ms) else {
            return;
        };
        if top == 0 || floor.is_some_and(|f| p95_ms < f) {
            return;
        }
        tests.push(TestTiming {
            test: name(s),
            samples: s.samples,
            p50_ms,
            p95_ms,
            p99_ms,
            slowdown: s.slowdown.map(|d| Slowdown {
                baseline_ms: d.baseline_ms,
                recent_ms: d.recent_ms,
            }),
        });
        if tests.len() >= 2 * top {
            tests.sort_by(order);
            tests.truncate(top);
            floor = tests.last().map(|t| t.p95_ms);
        }
    })?;
    tests.sort_by(order);
    tests.truncate(top);
    let suites = per_suite
        .into_iter()
        .filter_map(|(suite, p50s)| {
            let (p50, p95, p99) = p50_p95_p99(&p50s)?;
            Some(SuiteTiming {
                suite,
                tests: p50s.len() as u32,
                p50_ms: p50,
                p95_ms: p95,
                p99_ms: p99,
                total_p50_ms: p50s.iter().sum(),
            })
        })
        .collect();
    Ok(Timings { tests, suites })
}

/// Every test whose `binary name` contains `pattern` (or whose name equals it), with its log.
pub fn test_history(
    store: &dyn HistoryStore,
    pattern: &str,
) -> Result<Vec<TestHistory>, HistoryError> {
    let quarantine: BTreeMap<(String, String, String), QuarantineEntry> = store
        .quarantine_list()?
        .into_iter()
        .map(|(suite, id, e)| ((suite, id.binary_id, id.name), e))
        .collect();
    let matches: Vec<TestSummary> = store
        .summaries(None)?
        .into_iter()
        .filter(|s| s.name == pattern || format!("{} {}", s.binary_id, s.name).contains(pattern))
        .collect();
    let mut out = Vec::new();
    for s in matches {
        let id = TestId {
            binary_id: s.binary_id.clone(),
            name: s.name.clone(),
        };
        let Some((summary, log)) = store.test_log(&s.suite, &id)? else {
            continue;
        };
        let key = (s.suite.clone(), s.binary_id.clone(), s.name.clone());
        let q = quarantine.get(&key);
        out.push(TestHistory {
            test: name(&summary),
            runs: summary.runs,
            attempts: summary.attempts,
            failures: summary.failures,
            last_outcome: summary.last_outcome,
            p50_ms: summary.p50_ms,
            p95_ms: summary.p95_ms,
            p99_ms: summary.p99_ms,
            flaky: (summary.flaky_revisions > 0).then(|| flaky_of(&summary, q.is_some())),
            quarantine: q.map(|e| quarantine_info(&key.0, &id, e)),
            log: log
                .attempts
                .iter()
                .map(|a| HistoryAttempt {
                    run_id: a.run_id,
                    attempt: a.attempt,
                    revision: a.revision.clone(),
                    status: a.status,
                    duration_ms: a.duration_ms,
                    agent_id: a.agent_id.clone(),
                    at_unix_ms: a.at_unix_ms,
                })
                .collect(),
        });
    }
    Ok(out)
}

pub fn quarantine_info(suite: &str, id: &TestId, e: &QuarantineEntry) -> QuarantineInfo {
    QuarantineInfo {
        suite: suite.to_owned(),
        binary_id: id.binary_id.clone(),
        name: id.name.clone(),
        since_ms: e.since_ms,
        by: e.by.clone(),
        reason: e.reason.clone(),
        clean_streak: e.clean_streak,
    }
}

pub fn quarantine_list(store: &dyn HistoryStore) -> Result<Vec<QuarantineInfo>, HistoryError> {
    Ok(store
        .quarantine_list()?
        .iter()
        .map(|(suite, id, e)| quarantine_info(suite, id, e))
        .collect())
}

/// Finds the one test `pattern` names (exactly `NAME`, or `BINARY NAME`), for quarantine commands.
pub fn resolve_test(
    store: &dyn HistoryStore,
    suite: Option<&str>,
    pattern: &str,
) -> Result<Vec<(String, TestId)>, HistoryError> {
    Ok(store
        .summaries(suite)?
        .into_iter()
        .filter(|s| s.name == pattern || format!("{} {}", s.binary_id, s.name) == pattern)
        .map(|s| {
            (
                s.suite,
                TestId {
                    binary_id: s.binary_id,
                    name: s.name,
                },
            )
        })
        .collect())
}

pub fn run_overview(r: RunRecord) -> RunOverview {
    RunOverview {
        run_id: r.run_id,
        suite: r.suite,
        revision: r.revision,
        branch: r.branch,
        created_unix_ms: r.created_unix_ms,
        state: r.state,
        total_tests: r.total_tests,
        summary: r.summary,
    }
}

/// Puts the test `pattern` names into quarantine (`reason` given) or takes it out. Answers the
/// entries touched, or why nothing was: no such test, or a name that is ambiguous.
pub fn quarantine_change(
    store: &dyn HistoryStore,
    suite: Option<&str>,
    pattern: &str,
    reason: Option<&str>,
) -> Result<Result<Vec<QuarantineInfo>, String>, HistoryError> {
    let found = resolve_test(store, suite, pattern)?;
    let (suite, id) = match found.as_slice() {
        [] => {
            return Ok(Err(format!(
                "no test named `{pattern}` in history; run it once first"
            )));
        }
        [one] => one.clone(),
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|(s, t)| format!("{s}: {} {}", t.binary_id, t.name))
                .collect();
            return Ok(Err(format!(
                "`{pattern}` names {} tests; give `BINARY NAME` or --suite: {}",
                many.len(),
                names.join("; ")
            )));
        }
    };
    match reason {
        Some(reason) => {
            let entry = QuarantineEntry {
                since_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                by: "manual".into(),
                reason: if reason.is_empty() {
                    "quarantined by hand".into()
                } else {
                    reason.to_owned()
                },
                clean_streak: 0,
            };
            store.set_quarantine(&suite, &id, Some(&entry))?;
            Ok(Ok(vec![quarantine_info(&suite, &id, &entry)]))
        }
        None => {
            let existing: Vec<QuarantineInfo> = quarantine_list(store)?
                .into_iter()
                .filter(|q| q.suite == suite && q.binary_id == id.binary_id && q.name == id.name)
                .collect();
            if existing.is_empty() {
                return Ok(Err(format!(
                    "`{} {}` is not in quarantine",
                    id.binary_id, id.name
                )));
            }
            store.set_quarantine(&suite, &id, None)?;
            Ok(Ok(existing))
        }
    }
}
