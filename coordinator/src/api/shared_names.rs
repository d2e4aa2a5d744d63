//! Test names shared between the specs of one suite's runs held at once. A coordinator serving
//! CI holds several runs of the same suite (branches, commits, reruns), each with the same tens of
//! thousands of test names: a spec admitted while an earlier one of its suite is still in memory
//! takes its names from it instead of holding a copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use testfleet_model::RunSpec;

/// The last admitted spec of each suite, while a run still holds it.
#[derive(Default)]
pub(crate) struct SharedNames(Mutex<HashMap<String, Weak<RunSpec>>>);

impl SharedNames {
    /// Points `spec`'s test names at the equal names of the last spec of its suite still held.
    pub fn share(&self, spec: &mut RunSpec) {
        let earlier = self
            .0
            .lock()
            .expect("shared names lock")
            .get(&spec.suite)
            .and_then(Weak::upgrade);
        if let Some(earlier) = earlier {
            spec.share_names_with(&earlier);
        }
    }

    /// Remembers `spec` for the next of its suite (without keeping it in memory), and forgets
    /// suites whose specs are gone.
    pub fn remember(&self, spec: &Arc<RunSpec>) {
        let mut last = self.0.lock().expect("shared names lock");
        last.retain(|_, s| s.strong_count() > 0);
        last.insert(spec.suite.clone(), Arc::downgrade(spec));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_takes_the_names_of_the_last_one_of_its_suite_still_held() {
        let names = SharedNames::default();
        let spec = |suite: &str| RunSpec {
            suite: suite.into(),
            ..testfleet_model::test_support::spec(50)
        };
        let first = Arc::new(spec("s"));
        names.remember(&first);
        let mut second = spec("s");
        let mut other = spec("t");
        names.share(&mut second);
        names.share(&mut other);
        for (a, b) in first.tests.iter().zip(&second.tests) {
            assert!(Arc::ptr_eq(&a.name, &b.name), "{}", a.name);
        }
        assert!(!Arc::ptr_eq(&first.tests[0].name, &other.tests[0].name));
        // Once the first is gone, nothing is shared and its suite is forgotten.
        drop(first);
        let mut third = spec("s");
        names.share(&mut third);
        names.remember(&Arc::new(spec("u")));
        assert_eq!(names.0.lock().unwrap().len(), 1);
    }
}
