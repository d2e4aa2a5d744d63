//! A run's tests given the settings the nextest profile has for each of them: the distinct
//! settings and the test groups they use go into the spec once, each test points at its own.

use std::collections::HashMap;

use testfleet_model::{RunSpec, TestGroup, TestSettings};

use super::NextestConfig;
use super::values::Settings;
use crate::filterset::{Packages, Target, TestItem};

impl NextestConfig {
    /// Whether the profile's `default-filter` selects the test (all tests without one).
    pub fn has_default_filter(&self) -> bool {
        self.default_filter.is_some()
    }

    pub fn selects(&self, item: &TestItem<'_>, packages: &Packages) -> bool {
        self.default_filter
            .as_ref()
            .is_none_or(|f| f.matches(item, packages))
    }
}

/// Gives each test of `spec` the settings the profile has for it. With `retries_given` (the
/// command line's `--retries`, which nextest also puts above every override), the profile's
/// retries are left out.
pub fn apply(config: &NextestConfig, spec: &mut RunSpec, packages: &Packages, retries_given: bool) {
    let targets: Vec<Target> = spec.binaries.iter().map(Target::of).collect();
    let mut interned: HashMap<TestSettings, u32> = HashMap::new();
    let mut groups: HashMap<String, u32> = HashMap::new();
    for test in &mut spec.tests {
        let item = targets[test.binary as usize].item(&test.name);
        let s = config.settings_for(|f| f.matches(&item, packages));
        let mut settings = to_model(&s, retries_given);
        if let Some(Some(name)) = &s.test_group {
            let next = spec.test_groups.len() as u32;
            let index = *groups.entry(name.clone()).or_insert_with(|| {
                spec.test_groups.push(TestGroup {
                    name: name.clone(),
                    max_threads: config.groups[name],
                });
                next
            });
            settings.test_group = Some(index);
        }
        if settings == TestSettings::default() {
            test.set_settings(None);
            continue;
        }
        let next = spec.settings.len() as u32;
        let index = *interned.entry(settings.clone()).or_insert_with(|| {
            spec.settings.push(settings);
            next
        });
        test.set_settings(Some(index));
    }
}

/// The model's form of a test's settings (its test group set by the caller).
fn to_model(s: &Settings, retries_given: bool) -> TestSettings {
    let slow = s.slow_timeout;
    let terminates = slow.and_then(|t| t.terminate_after.map(|n| (t, n)));
    TestSettings {
        threads_required: s.threads_required.unwrap_or(1),
        test_group: None,
        retries: if retries_given { None } else { s.retries },
        flaky_fails: s.flaky_fails.unwrap_or(false),
        timeout: terminates.map(|(t, n)| t.period.saturating_mul(n)),
        kill_grace: terminates.map(|(t, _)| t.grace_period),
        slow_after: slow.map(|t| t.period),
        leak_timeout: s.leak_timeout,
    }
}
