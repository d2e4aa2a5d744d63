//! What a run's per-test settings ask of it: each test's settings, its retries, the slot of its
//! test group it holds while leased, and the retries that wait for their backoff.

use super::*;

impl Run {
    /// The test's settings ([`RunSpec::settings`]), if it has any.
    pub(super) fn settings_of(&self, index: u32) -> Option<&testfleet_model::TestSettings> {
        self.spec.settings_of(index)
    }

    /// Retries of the test: its own policy's, else the run's.
    pub(super) fn retries_of(&self, index: u32) -> u32 {
        self.settings_of(index)
            .and_then(|s| s.retries)
            .map_or(self.retries, |r| r.count)
    }

    /// The test is no longer leased: the slot of its test group is free again.
    pub(super) fn unlease(&mut self, index: u32) {
        let group = self.settings_of(index).and_then(|s| s.test_group);
        let t = &mut self.tests[index as usize];
        t.set_leased(None);
        if let (Some(slot), Some(group)) = (t.take_group_slot(), group) {
            self.group_held[group as usize][slot as usize] = false;
        }
    }

    /// When the first retry still waiting for its backoff may go, if one waits. A retry whose
    /// time has come waits for an agent like any queued test: it is no reason to wake again.
    pub fn next_delayed(&self) -> Option<tokio::time::Instant> {
        if self.delayed == 0 || !self.is_running() {
            return None;
        }
        let now = tokio::time::Instant::now();
        self.queue
            .iter()
            .filter_map(|i| self.tests[*i as usize].not_before())
            .filter(|at| *at > now)
            .min()
    }
}
