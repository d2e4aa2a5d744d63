//! Running again what did not pass: an earlier run's tests and outcomes, read from the
//! coordinator's history (`GetRunTests`), and a run's spec cut down to some of its tests. Serves
//! `run --failed` and a retried `ci` job.

use std::collections::HashSet;

use testfleet_model::{Outcome, RunId, RunSpec, RunState};
use testfleet_proto::pb;

use crate::error::{CliError, CliResult};
use crate::remote::Client;

/// A test as runs name it: (binary id, name).
pub type TestKey = (String, String);

/// An earlier run's tests, by how they ended.
#[derive(Debug)]
pub struct Earlier {
    pub suite: String,
    pub state: RunState,
    /// Passed, flaky, or skipped.
    pub passed: HashSet<TestKey>,
    /// Failed, timed out, an infrastructure error, cancelled, or started and never settled.
    pub not_passed: HashSet<TestKey>,
}

/// How many runs `last_of_suite` looks through, newest first, for one of the suite.
const LOOK_BACK: usize = 2000;

/// The tests of run `run_id` and how they ended.
pub async fn tests_of(client: &mut Client, url: &str, run_id: RunId) -> CliResult<Earlier> {
    let reply = client
        .get_run_tests(pb::GetRunRequest {
            run_id: run_id.to_string(),
        })
        .await
        .map_err(|s| CliError::from_status(url, s))?
        .into_inner();
    let info = reply.run.unwrap_or_default();
    let mut earlier = Earlier {
        suite: info.suite,
        state: testfleet_proto::run_state_from_wire(info.state).unwrap_or(RunState::Running),
        passed: HashSet::new(),
        not_passed: HashSet::new(),
    };
    for t in reply.tests {
        // Unspecified: the test never settled.
        let outcome = testfleet_proto::outcome_from_wire(t.outcome).ok();
        let key = (t.binary_id, t.name);
        match outcome {
            Some(Outcome::Passed | Outcome::Flaky | Outcome::Skipped) => {
                earlier.passed.insert(key);
            }
            _ => {
                earlier.not_passed.insert(key);
            }
        }
    }
    Ok(earlier)
}

/// The newest run of `suite` that is not running, looked for among the coordinator's newest runs.
pub async fn last_of_suite(client: &mut Client, url: &str, suite: &str) -> CliResult<RunId> {
    let mut before = String::new();
    let mut seen = 0;
    while seen < LOOK_BACK {
        let page = client
            .list_runs(pb::ListRunsRequest {
                limit: 200,
                before_run_id: before.clone(),
            })
            .await
            .map_err(|s| CliError::from_status(url, s))?
            .into_inner()
            .runs;
        let Some(last) = page.last() else { break };
        before = last.run_id.clone();
        seen += page.len();
        let found = page.iter().find(|r| {
            r.suite == suite
                && testfleet_proto::run_state_from_wire(r.state)
                    .is_ok_and(|s| s != RunState::Running)
        });
        if let Some(r) = found {
            return r.run_id.parse().map_err(|e| {
                CliError::Internal(anyhow::anyhow!("the coordinator named a bad run id: {e}"))
            });
        }
    }
    Err(CliError::NoTests(format!(
        "no finished run of suite `{suite}` in the history of {url}: nothing to run again"
    )))
}

/// Keeps only the tests of `spec` that `keep` names; returns how many are left.
pub fn keep_only(spec: &mut RunSpec, keep: &HashSet<TestKey>) -> usize {
    let binaries = &spec.binaries;
    spec.tests.retain(|t| {
        let id = &binaries[t.binary as usize].binary_id;
        keep.contains(&(id.to_string(), t.name.to_string()))
    });
    spec.tests.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_tests_stay() {
        let mut spec = testfleet_model::test_support::spec(4);
        let keep: HashSet<TestKey> = [1, 3]
            .iter()
            .map(|i| {
                let t = &spec.tests[*i];
                (
                    spec.binaries[t.binary as usize].binary_id.to_string(),
                    t.name.to_string(),
                )
            })
            .collect();
        let names: Vec<String> = [1, 3]
            .iter()
            .map(|i| spec.tests[*i].name.to_string())
            .collect();
        assert_eq!(keep_only(&mut spec, &keep), 2);
        let left: Vec<String> = spec.tests.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(left, names);
        assert!(spec.validate().is_ok());
    }
}
