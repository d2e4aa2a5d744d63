//! What history says about a run's tests before it starts (or resumes): each test's estimate and
//! whether it is quarantined.

use std::time::Duration;

use testfleet_model::{RunSpec, TestId};

use super::{HistoryError, HistoryStore, estimate_all};

pub struct Plan {
    /// Per test: its estimate, and whether it came from its own history.
    pub estimates: Vec<(Duration, bool)>,
    pub quarantined: Vec<bool>,
}

pub fn plan(store: &dyn HistoryStore, spec: &RunSpec) -> Result<Plan, HistoryError> {
    let ids: Vec<TestId> = (0..spec.tests.len()).map(|i| spec.test_id(i)).collect();
    let p95s: Vec<Option<Duration>> = store
        .p95s_of(&spec.suite, &ids)?
        .into_iter()
        .map(|p95| p95.map(Duration::from_millis))
        .collect();
    let binary_ids: Vec<&str> = spec
        .tests
        .iter()
        .map(|t| &*spec.binaries[t.binary as usize].binary_id)
        .collect();
    Ok(Plan {
        estimates: estimate_all(&binary_ids, &p95s),
        quarantined: store.quarantined(&spec.suite, &ids)?,
    })
}
