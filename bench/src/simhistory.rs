//! Synthetic runs sent through the real history writer, as the scheduler would send them: each
//! test's attempts, its settled outcome, and a `LeaseFinished` after every lease of tests.

use std::time::Duration;

use testfleet_coordinator::history::{HistoryUpdate, RunRecord};
use testfleet_model::{
    AttemptResult, AttemptStatus, EventKind, Outcome, QuarantinePolicy, RunEvent, RunId, RunState,
    RunSummary, TestFinished, TestRef,
};
use tokio::sync::mpsc::UnboundedSender;

/// One attempt: whether it failed, and how long it took.
#[derive(Clone, Copy)]
pub struct Attempt {
    pub failed: bool,
    pub ms: u64,
}

/// Sends one whole run (created, every test's attempts, finished) to the writer. Tests are leased
/// `lease_size` at a time, in order.
pub fn send_run(
    tx: &UnboundedSender<HistoryUpdate>,
    run: u64,
    suite: &str,
    tests: &[(String, Vec<Attempt>)],
    lease_size: usize,
) -> anyhow::Result<()> {
    let gone = || anyhow::anyhow!("the history writer stopped");
    tx.send(HistoryUpdate::RunCreated(Box::new(RunRecord {
        run_id: run,
        suite: suite.into(),
        total_tests: tests.len() as u32,
        revision: format!("rev{run}"),
        branch: "main".into(),
        created_unix_ms: run * 1_000_000,
        state: RunState::Running,
        summary: None,
        quarantine: QuarantinePolicy::default(),
        resumes: 0,
    })))
    .map_err(|_| gone())?;
    let suite: std::sync::Arc<str> = suite.into();
    let mut seq = 0;
    let mut send = |kind: EventKind| {
        seq += 1;
        let event = RunEvent {
            seq,
            run_id: RunId(run),
            at_unix_ms: run * 1_000_000 + seq,
            kind,
        };
        tx.send(HistoryUpdate::Event {
            credit: None,
            suite: suite.clone(),
            event: Box::new(event),
        })
        .map_err(|_| gone())
    };
    for (lease, chunk) in tests.chunks(lease_size.max(1)).enumerate() {
        let mut failed = 0;
        for (offset, (name, attempts)) in chunk.iter().enumerate() {
            let index = (lease * lease_size + offset) as u32;
            let first_failed = attempts.first().is_some_and(|a| a.failed);
            let last_failed = attempts.last().is_some_and(|a| a.failed);
            let outcome = match (first_failed, last_failed) {
                (false, _) => Outcome::Passed,
                (true, false) => Outcome::Flaky,
                (true, true) => Outcome::Failed,
            };
            for (i, a) in attempts.iter().enumerate() {
                let mut result = AttemptResult::infra_error("");
                result.message.clear();
                result.status = if a.failed {
                    failed += 1;
                    AttemptStatus::Failed
                } else {
                    AttemptStatus::Passed
                };
                result.duration = Duration::from_millis(a.ms);
                send(EventKind::TestFinished(TestFinished {
                    test: TestRef {
                        index,
                        binary_id: "sim".into(),
                        name: name.as_str().into(),
                    },
                    attempt: i as u32 + 1,
                    agent_id: format!("agent-{}", lease % 8),
                    result,
                    final_outcome: (i + 1 == attempts.len()).then_some(outcome),
                    lease_id: Some(lease as u64),
                    quarantined: false,
                }))?;
            }
        }
        send(EventKind::LeaseFinished {
            lease_id: lease as u64,
            agent_id: format!("agent-{}", lease % 8),
            tests: chunk.len() as u32,
            failed,
        })?;
    }
    send(EventKind::RunFinished {
        summary: RunSummary::default(),
        state: RunState::Finished,
    })
}
