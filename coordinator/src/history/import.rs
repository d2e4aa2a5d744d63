//! Results from other tools (JUnit XML, read by the CLI) entering history as a finished run of
//! their own: each imported test's attempts become the events a testfleet run would have had, so
//! durations, flakiness verdicts and quarantine learn from them like from any run.

use std::collections::BTreeMap;
use std::time::Duration;

use testfleet_model::{
    AttemptResult, AttemptStatus, EventKind, Outcome, RunEvent, RunId, RunState, RunSummary,
    TestFinished, TestRef,
};
use tokio::sync::mpsc::UnboundedSender;

use super::{HistoryUpdate, RunRecord};

/// Attempts of imported tests are logged as run by this agent.
pub const IMPORT_AGENT: &str = "import";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedTest {
    pub binary_id: String,
    pub name: String,
    /// In the order they ran; empty for a skipped test.
    pub attempts: Vec<AttemptResult>,
    pub skipped: bool,
}

/// What a test's attempts add up to, by the rule testfleet's own runs follow: the last attempt
/// decides, and a pass after a failure is flaky.
pub fn outcome_of(t: &ImportedTest) -> Outcome {
    let Some(last) = t.attempts.last() else {
        return Outcome::Skipped;
    };
    if t.skipped {
        return Outcome::Skipped;
    }
    match last.status {
        AttemptStatus::Passed if t.attempts.iter().any(|a| a.status.is_test_failure()) => {
            Outcome::Flaky
        }
        AttemptStatus::Passed => Outcome::Passed,
        AttemptStatus::Failed => Outcome::Failed,
        AttemptStatus::TimedOut => Outcome::TimedOut,
        AttemptStatus::InfraError => Outcome::InfraError,
        AttemptStatus::Skipped => Outcome::Skipped,
    }
}

/// Sends run `rec` (state running; it is finished here) and its tests' events to the history
/// writer; returns the run's summary. Tests are numbered in the order given.
pub fn import(
    history: &UnboundedSender<HistoryUpdate>,
    rec: RunRecord,
    tests: &[ImportedTest],
) -> RunSummary {
    let run_id = RunId(rec.run_id);
    let suite: std::sync::Arc<str> = std::sync::Arc::from(rec.suite.as_str());
    let at = rec.created_unix_ms;
    let rec_suite = rec.suite.clone();
    let _ = history.send(HistoryUpdate::RunCreated(Box::new(rec)));
    let mut seq = 0;
    let mut send = |kind: EventKind| {
        let _ = history.send(HistoryUpdate::Event {
            credit: None,
            suite: suite.clone(),
            event: Box::new(RunEvent {
                seq,
                run_id,
                at_unix_ms: at,
                kind,
            }),
        });
        seq += 1;
    };
    let refs: Vec<TestRef> = tests
        .iter()
        .enumerate()
        .map(|(i, t)| TestRef {
            index: i as u32,
            binary_id: t.binary_id.as_str().into(),
            name: t.name.as_str().into(),
        })
        .collect();
    let skipped: Vec<TestRef> = tests
        .iter()
        .zip(&refs)
        .filter(|(t, _)| outcome_of(t) == Outcome::Skipped)
        .map(|(_, r)| r.clone())
        .collect();
    send(EventKind::RunStarted {
        suite: rec_suite,
        total_tests: tests.len() as u32,
        skipped,
        quarantined: vec![],
    });
    let mut summary = RunSummary::default();
    let mut per_agent: BTreeMap<String, u32> = BTreeMap::new();
    let mut wall = Duration::ZERO;
    for (t, r) in tests.iter().zip(&refs) {
        let outcome = outcome_of(t);
        match outcome {
            Outcome::Passed => summary.passed += 1,
            Outcome::Failed => summary.failed += 1,
            Outcome::Flaky => summary.flaky += 1,
            Outcome::TimedOut => summary.timed_out += 1,
            Outcome::Skipped => {
                summary.skipped += 1;
                continue;
            }
            Outcome::InfraError => summary.infra_errors += 1,
            Outcome::Cancelled => summary.cancelled += 1,
        }
        for (i, a) in t.attempts.iter().enumerate() {
            wall += a.duration;
            *per_agent.entry(IMPORT_AGENT.into()).or_default() += 1;
            let last = i + 1 == t.attempts.len();
            send(EventKind::TestFinished(TestFinished {
                test: r.clone(),
                attempt: i as u32 + 1,
                agent_id: IMPORT_AGENT.into(),
                result: a.clone(),
                final_outcome: last.then_some(outcome),
                // Each test its own lease: never judged together as a lease that failed whole.
                lease_id: Some(u64::from(r.index)),
                quarantined: false,
            }));
        }
    }
    // The tools' own wall time is unknown: the sum of the attempts stands for it.
    summary.wall_ms = wall.as_millis() as u64;
    summary.attempts_per_agent = per_agent;
    send(EventKind::RunFinished {
        summary: summary.clone(),
        state: RunState::Finished,
    });
    summary
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::history::{HistoryStore, SledStore, query, spawn_writer};
    use testfleet_model::TestId;

    fn attempt(status: AttemptStatus, ms: u64) -> AttemptResult {
        let mut a = AttemptResult::infra_error("");
        a.status = status;
        a.duration = Duration::from_millis(ms);
        a.message = String::new();
        a
    }

    fn test(name: &str, attempts: Vec<AttemptResult>, skipped: bool) -> ImportedTest {
        ImportedTest {
            binary_id: "com.example.Suite".into(),
            name: name.into(),
            attempts,
            skipped,
        }
    }

    #[test]
    fn imported_results_become_a_finished_run_with_logs_and_flaky_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let (tx, writer) = spawn_writer(store.clone(), None);
        let run_id = store.next_run_id().unwrap();
        let rec = RunRecord {
            run_id: run_id.0,
            suite: "java".into(),
            total_tests: 3,
            revision: "abc".into(),
            branch: "main".into(),
            created_unix_ms: 1_000,
            state: RunState::Running,
            summary: None,
            quarantine: Default::default(),
            resumes: 0,
        };
        use AttemptStatus::{Failed, Passed};
        let tests = [
            test("passes", vec![attempt(Passed, 20)], false),
            test(
                "flakes",
                vec![attempt(Failed, 5), attempt(Passed, 7)],
                false,
            ),
            test("ignored", vec![], true),
            test("fails", vec![attempt(Failed, 3)], false),
        ];
        let summary = import(&tx, rec, &tests);
        drop(tx);
        writer.join().unwrap();
        assert_eq!(
            (
                summary.passed,
                summary.flaky,
                summary.skipped,
                summary.failed
            ),
            (1, 1, 1, 1)
        );
        let run = store.run(run_id).unwrap().unwrap();
        assert_eq!(run.state, RunState::Finished);
        assert_eq!(run.summary.as_ref(), Some(&summary));
        let outcomes: BTreeMap<String, Option<Outcome>> = store
            .run_tests(run_id)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.outcome))
            .collect();
        assert_eq!(outcomes["flakes"], Some(Outcome::Flaky));
        assert_eq!(outcomes["ignored"], Some(Outcome::Skipped));
        let id = TestId {
            binary_id: "com.example.Suite".into(),
            name: "flakes".into(),
        };
        let (s, log) = store.test_log("java", &id).unwrap().unwrap();
        assert_eq!(log.attempts.len(), 2);
        assert_eq!(log.attempts[0].revision, "abc");
        assert_eq!(s.flaky_revisions, 1);
        let flaky = query::flaky(store.as_ref(), Some("java")).unwrap();
        assert_eq!(flaky.len(), 1);
        assert_eq!(flaky[0].test.name, "flakes");
    }

    #[test]
    fn the_last_attempt_decides_and_a_pass_after_a_failure_is_flaky() {
        use AttemptStatus::{Failed, Passed, TimedOut};
        let o = |a: &[AttemptStatus]| {
            outcome_of(&test(
                "t",
                a.iter().map(|s| attempt(*s, 1)).collect(),
                false,
            ))
        };
        assert_eq!(o(&[Passed]), Outcome::Passed);
        assert_eq!(o(&[Failed, Passed]), Outcome::Flaky);
        assert_eq!(o(&[Passed, Failed]), Outcome::Failed);
        assert_eq!(o(&[TimedOut]), Outcome::TimedOut);
        assert_eq!(o(&[]), Outcome::Skipped);
    }
}
