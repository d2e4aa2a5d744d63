//! The history pipeline end to end inside one process: events through the writer into sled, then
//! the queries. Synthetic runs with known answers.

use std::sync::Arc;
use std::time::Duration;

use testfleet_model::{
    AttemptResult, AttemptStatus, EventKind, Outcome, QuarantinePolicy, RunEvent, RunId, RunState,
    RunSummary, TestFinished, TestId, TestRef,
};

use super::*;

struct Pipeline {
    store: Arc<SledStore>,
    _dir: tempfile::TempDir,
    next_run: u64,
    /// The branch of the runs made from now on.
    branch: &'static str,
    /// Whether the coordinator stops (the writer's senders go) before the runs' leases and the
    /// runs themselves finish.
    stop_mid_run: bool,
}

/// One attempt of test `name` in a run: (name, status, duration ms, final outcome).
type Step = (&'static str, AttemptStatus, u64, Option<Outcome>);

impl Pipeline {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Pipeline {
            store: Arc::new(SledStore::open(dir.path()).unwrap()),
            _dir: dir,
            next_run: 1,
            branch: "main",
            stop_mid_run: false,
        }
    }

    /// Runs the steps through a writer, each lease holding `per_lease` consecutive steps.
    fn run(
        &mut self,
        revision: &str,
        policy: QuarantinePolicy,
        steps: &[Step],
        per_lease: usize,
    ) -> RunId {
        let run = RunId(self.next_run);
        self.next_run += 1;
        let (tx, writer) = spawn_writer(self.store.clone(), None);
        tx.send(HistoryUpdate::RunCreated(Box::new(RunRecord {
            run_id: run.0,
            suite: "s".into(),
            total_tests: steps.len() as u32,
            revision: revision.into(),
            branch: self.branch.into(),
            created_unix_ms: 1000 * run.0,
            state: RunState::Running,
            summary: None,
            quarantine: policy,
            resumes: 0,
        })))
        .unwrap();
        let mut seq = 0;
        let mut send = |kind: EventKind| {
            seq += 1;
            tx.send(HistoryUpdate::Event {
                credit: None,
                suite: "s".into(),
                event: Box::new(RunEvent {
                    seq,
                    run_id: run,
                    at_unix_ms: 1000 * run.0 + seq,
                    kind,
                }),
            })
            .unwrap();
        };
        for (lease, chunk) in steps.chunks(per_lease).enumerate() {
            let mut failed = 0;
            for (name, status, ms, outcome) in chunk {
                failed += u32::from(status.is_test_failure());
                let mut result = AttemptResult::infra_error("");
                result.status = *status;
                result.duration = Duration::from_millis(*ms);
                // A test's index in the run: where its name first appears.
                let index = steps.iter().position(|s| s.0 == *name).unwrap_or(0) as u32;
                send(EventKind::TestFinished(TestFinished {
                    test: TestRef {
                        index,
                        binary_id: "b".into(),
                        name: (*name).into(),
                    },
                    attempt: 1,
                    agent_id: format!("agent-{lease}"),
                    result,
                    final_outcome: *outcome,
                    lease_id: Some(lease as u64),
                    quarantined: false,
                }));
            }
            if self.stop_mid_run {
                continue;
            }
            send(EventKind::LeaseFinished {
                lease_id: lease as u64,
                agent_id: format!("agent-{lease}"),
                tests: chunk.len() as u32,
                failed,
            });
        }
        if !self.stop_mid_run {
            send(EventKind::RunFinished {
                summary: RunSummary::default(),
                state: RunState::Finished,
            });
        }
        drop(tx);
        writer.join().unwrap();
        run
    }

    fn summary(&self, name: &str) -> TestSummary {
        let id = TestId {
            binary_id: "b".into(),
            name: name.into(),
        };
        self.store.test_log("s", &id).unwrap().unwrap().0
    }

    fn quarantined(&self, name: &str) -> bool {
        let id = TestId {
            binary_id: "b".into(),
            name: name.into(),
        };
        self.store.quarantined("s", &[id]).unwrap()[0]
    }
}

use AttemptStatus::{Failed, InfraError, Passed};

#[test]
fn a_lease_that_failed_almost_whole_is_left_out_of_the_statistics() {
    let mut p = Pipeline::new();
    let names = ["a", "b", "c", "d", "e"];
    // One lease of five where every test failed at once (a broken machine), then a normal run.
    let broken: Vec<Step> = names
        .iter()
        .map(|n| (*n, Failed, 5, Some(Outcome::Failed)))
        .collect();
    p.run("r1", QuarantinePolicy::default(), &broken, 5);
    let fine: Vec<Step> = names
        .iter()
        .map(|n| (*n, Passed, 5, Some(Outcome::Passed)))
        .collect();
    p.run("r1", QuarantinePolicy::default(), &fine, 5);
    for n in names {
        let s = p.summary(n);
        assert_eq!(
            (s.attempts, s.failures, s.excluded),
            (1, 0, 1),
            "{n}: {s:?}"
        );
        assert_eq!(
            s.flaky_revisions, 0,
            "a mass failure must not make anything flaky"
        );
    }
    assert!(
        super::query::flaky(p.store.as_ref(), None)
            .unwrap()
            .is_empty()
    );
}

/// A test's outcome is written with its attempt once its lease finishes; a coordinator that stops
/// first still writes both (and its runs' records) before its writer ends.
#[test]
fn attempts_and_outcomes_of_leases_still_open_at_a_stop_are_written() {
    let mut p = Pipeline::new();
    p.stop_mid_run = true;
    let run = p.run(
        "r1",
        QuarantinePolicy::default(),
        &[
            ("a", Passed, 10, Some(Outcome::Passed)),
            ("b", Failed, 20, None),
            ("b", Passed, 30, Some(Outcome::Flaky)),
        ],
        2,
    );
    let a = p.summary("a");
    assert_eq!(
        (a.attempts, a.runs, a.last_outcome),
        (1, 1, Some(Outcome::Passed))
    );
    let b = p.summary("b");
    assert_eq!((b.attempts, b.failures, b.runs), (2, 1, 1));
    assert_eq!(b.last_outcome, Some(Outcome::Flaky));
    let records = p.store.run_tests(run).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].attempts.len(), 2);
}

#[test]
fn infrastructure_errors_never_reach_a_test_s_record() {
    let mut p = Pipeline::new();
    p.run(
        "r1",
        QuarantinePolicy::default(),
        &[
            ("t", InfraError, 0, None),
            ("t", Passed, 5, Some(Outcome::Passed)),
        ],
        1,
    );
    let s = p.summary("t");
    assert_eq!((s.attempts, s.failures, s.flaky_revisions), (1, 0, 0));
}

#[test]
fn flaky_tests_are_found_with_counts_and_evidence_and_stable_ones_are_not() {
    let mut p = Pipeline::new();
    let pol = QuarantinePolicy::default();
    // "flaky": fails then passes in runs 1 and 3; "broken": always fails; "fine": always passes.
    for run in 1..=4 {
        let mut steps: Vec<Step> = vec![
            ("fine", Passed, 10, Some(Outcome::Passed)),
            ("broken", Failed, 10, Some(Outcome::Failed)),
        ];
        if run % 2 == 1 {
            steps.push(("flaky", Failed, 30, None));
            steps.push(("flaky", Passed, 20, Some(Outcome::Flaky)));
        } else {
            steps.push(("flaky", Passed, 20, Some(Outcome::Passed)));
        }
        p.run("rev", pol, &steps, 1);
    }
    let flaky = super::query::flaky(p.store.as_ref(), Some("s")).unwrap();
    assert_eq!(flaky.len(), 1, "{flaky:?}");
    let f = &flaky[0];
    assert_eq!(f.test.name, "flaky");
    assert_eq!((f.attempts, f.failures, f.flaky_revisions), (6, 2, 1));
    let failing: Vec<u64> = f
        .evidence
        .iter()
        .filter(|e| e.failed)
        .map(|e| e.run_id)
        .collect();
    assert_eq!(failing, [1, 3]);
    assert!((f.failure_probability - 2.0 / 6.0).abs() < 1e-9);
    assert!(
        f.probability_low < f.failure_probability && f.failure_probability < f.probability_high
    );
    assert_eq!(p.summary("flaky").runs, 4);
}

#[test]
fn quarantine_enters_by_policy_and_is_released_after_a_clean_streak() {
    let mut p = Pipeline::new();
    let auto = QuarantinePolicy {
        auto: true,
        release_after: 2,
    };
    // Always failing is a bug, not a flake: never quarantined automatically.
    p.run(
        "r",
        auto,
        &[("broken", Failed, 5, Some(Outcome::Failed))],
        1,
    );
    p.run(
        "r",
        auto,
        &[("broken", Failed, 5, Some(Outcome::Failed))],
        1,
    );
    assert!(!p.quarantined("broken"));
    // Pass on retry quarantines.
    p.run(
        "r",
        auto,
        &[
            ("f", Failed, 5, None),
            ("f", Passed, 5, Some(Outcome::Flaky)),
        ],
        1,
    );
    assert!(p.quarantined("f"));
    // One clean run is not enough; a flaky one resets the count; two clean in a row release.
    p.run("r", auto, &[("f", Passed, 5, Some(Outcome::Passed))], 1);
    assert!(p.quarantined("f"));
    p.run(
        "r",
        auto,
        &[
            ("f", Failed, 5, None),
            ("f", Passed, 5, Some(Outcome::Flaky)),
        ],
        1,
    );
    p.run("r", auto, &[("f", Passed, 5, Some(Outcome::Passed))], 1);
    assert!(
        p.quarantined("f"),
        "the streak restarted after the flaky run"
    );
    p.run("r", auto, &[("f", Passed, 5, Some(Outcome::Passed))], 1);
    assert!(!p.quarantined("f"));
    // Without the auto policy, flakiness alone quarantines nothing.
    p.run(
        "r",
        QuarantinePolicy::default(),
        &[
            ("g", Failed, 5, None),
            ("g", Passed, 5, Some(Outcome::Flaky)),
        ],
        1,
    );
    assert!(!p.quarantined("g"));
}

#[test]
fn timings_report_exact_percentiles_of_passing_attempts() {
    let mut p = Pipeline::new();
    for ms in [100, 300, 200, 500, 400] {
        p.run(
            "r",
            QuarantinePolicy::default(),
            &[("t", Passed, ms, Some(Outcome::Passed))],
            1,
        );
    }
    // A failure's duration must not count.
    p.run(
        "r",
        QuarantinePolicy::default(),
        &[("t", Failed, 9_000, Some(Outcome::Failed))],
        1,
    );
    let t = super::query::timings(p.store.as_ref(), None, 10, false).unwrap();
    let x = &t.tests[0];
    assert_eq!(
        (x.samples, x.p50_ms, x.p95_ms, x.p99_ms),
        (5, 300, 500, 500)
    );
    assert_eq!(t.suites[0].total_p50_ms, 300);
}

/// A run's failures as history explains them: already failing in the default branch's last run of
/// the test, known to be flaky, quarantined, or new.
#[test]
fn failures_are_told_apart_by_what_history_says_of_them() {
    use testfleet_model::report::FailureKind;
    let mut p = Pipeline::new();
    let pol = QuarantinePolicy::default();
    p.run(
        "r1",
        pol,
        &[
            ("broken", Failed, 10, Some(Outcome::Failed)),
            ("regressed", Passed, 10, Some(Outcome::Passed)),
            ("flaky", Failed, 10, None),
            ("flaky", Passed, 10, Some(Outcome::Flaky)),
            ("muted", Passed, 10, Some(Outcome::Passed)),
        ],
        1,
    );
    // A feature branch's run in between does not count as the default branch's.
    p.branch = "feature";
    p.run(
        "r2",
        pol,
        &[("regressed", Failed, 10, Some(Outcome::Failed))],
        1,
    );
    let id = |n: &str| TestId {
        binary_id: "b".into(),
        name: n.into(),
    };
    let entry = QuarantineEntry {
        since_ms: 0,
        by: "manual".into(),
        reason: "known".into(),
        clean_streak: 0,
    };
    p.store
        .set_quarantine("s", &id("muted"), Some(&entry))
        .unwrap();
    let run = p.run(
        "r3",
        pol,
        &[
            ("broken", Failed, 10, Some(Outcome::Failed)),
            ("regressed", Failed, 10, Some(Outcome::Failed)),
            ("flaky", Failed, 10, Some(Outcome::Failed)),
            ("muted", Failed, 10, Some(Outcome::Failed)),
            (
                "fresh",
                AttemptStatus::TimedOut,
                10,
                Some(Outcome::TimedOut),
            ),
            ("fine", Passed, 10, Some(Outcome::Passed)),
        ],
        1,
    );
    let classes: std::collections::BTreeMap<String, FailureKind> =
        super::failures::classify_failures(p.store.as_ref(), run, "main")
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.kind))
            .collect();
    let expected: std::collections::BTreeMap<String, FailureKind> = [
        (
            "broken",
            FailureKind::FailingOnDefault {
                branch: "main".into(),
                run_id: 1,
            },
        ),
        ("regressed", FailureKind::New),
        ("flaky", FailureKind::Flaky),
        ("muted", FailureKind::Quarantined),
        ("fresh", FailureKind::New),
    ]
    .into_iter()
    .map(|(n, k)| (n.to_owned(), k))
    .collect();
    assert_eq!(classes, expected);
}
