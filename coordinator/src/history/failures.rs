//! A run's failures as history explains them: quarantined, already failing on the default branch,
//! known to be flaky, or new. What a CI summary needs to tell the change's own failures apart.

use std::collections::HashMap;

use testfleet_model::report::{FailureClass, FailureKind};
use testfleet_model::{RunId, TestId};

use super::{HistoryError, HistoryStore};

/// Failures classified per run: more are left out (the summary says how many failed anyway).
pub const MAX_CLASSIFIED: usize = 500;
/// Runs of a test's log looked at, newest first, for one on the default branch.
const RUNS_LOOKED_AT: usize = 50;

/// Classifies the tests that failed run `run` (failed or timed out), `default_branch` naming the
/// branch whose last run of each test says whether it was failing already.
pub fn classify_failures(
    store: &dyn HistoryStore,
    run: RunId,
    default_branch: &str,
) -> Result<Vec<FailureClass>, HistoryError> {
    let Some(record) = store.run(run)? else {
        return Ok(vec![]);
    };
    let failed: Vec<_> = store
        .run_tests(run)?
        .into_iter()
        .filter(|t| t.outcome.is_some_and(|o| o.fails_run()))
        .take(MAX_CLASSIFIED)
        .collect();
    let ids: Vec<TestId> = failed
        .iter()
        .map(|t| TestId {
            binary_id: t.binary_id.clone(),
            name: t.name.clone(),
        })
        .collect();
    let quarantined = store.quarantined(&record.suite, &ids)?;
    let summaries = store.summaries_of(&record.suite, &ids)?;
    let mut branches: HashMap<u64, Option<String>> = HashMap::new();
    let mut out = Vec::with_capacity(failed.len());
    for (i, (t, id)) in failed.iter().zip(&ids).enumerate() {
        let kind = if t.quarantined || quarantined[i] {
            FailureKind::Quarantined
        } else if let Some(run_id) = failing_on(
            store,
            &record.suite,
            id,
            run.0,
            default_branch,
            &mut branches,
        )? {
            FailureKind::FailingOnDefault {
                branch: default_branch.to_owned(),
                run_id,
            }
        } else if summaries[i].as_ref().is_some_and(|s| s.flaky_revisions > 0) {
            FailureKind::Flaky
        } else {
            FailureKind::New
        };
        out.push(FailureClass {
            binary_id: t.binary_id.clone(),
            name: t.name.clone(),
            kind,
        });
    }
    Ok(out)
}

/// The last run on `branch` (other than `current`) that ran the test, if the test did not pass in
/// it: every attempt there failed.
fn failing_on(
    store: &dyn HistoryStore,
    suite: &str,
    id: &TestId,
    current: u64,
    branch: &str,
    branches: &mut HashMap<u64, Option<String>>,
) -> Result<Option<u64>, HistoryError> {
    let Some((_, log)) = store.test_log(suite, id)? else {
        return Ok(None);
    };
    // The log is oldest first; a run's attempts are together.
    let mut runs: Vec<(u64, bool)> = vec![];
    for a in log.attempts.iter().rev().filter(|a| a.run_id != current) {
        match runs.last_mut() {
            Some((r, all_failed)) if *r == a.run_id => *all_failed &= a.failed(),
            _ => runs.push((a.run_id, a.failed())),
        }
    }
    for (run_id, all_failed) in runs.into_iter().take(RUNS_LOOKED_AT) {
        let on = match branches.get(&run_id) {
            Some(b) => b.clone(),
            None => {
                let b = store.run(testfleet_model::RunId(run_id))?.map(|r| r.branch);
                branches.insert(run_id, b.clone());
                b
            }
        };
        if on.as_deref() == Some(branch) {
            return Ok(all_failed.then_some(run_id));
        }
    }
    Ok(None)
}
