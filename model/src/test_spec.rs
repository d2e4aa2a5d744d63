//! One test of a run's spec, small in memory: a coordinator holds every test of the runs it runs
//! (a million of them is common), and few tests belong to a group or share fixtures, so what only
//! those need is apart, allocated for them alone. Its serialised form is the flat one.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Fields", into = "Fields")]
pub struct TestSpec {
    /// Shared, not copied, between runs of the same suite held at once (see
    /// `RunSpec::share_names_with`): a name is the bulk of what a test's spec holds.
    pub name: Arc<str>,
    /// Index into [`crate::RunSpec::binaries`].
    pub binary: u32,
    /// Index into [`crate::RunSpec::settings`]; `None`: the run's defaults.
    pub settings: Option<u32>,
    /// Ignored tests are recorded as skipped and never leased.
    pub ignored: bool,
    mates: Option<Box<Mates>>,
}

/// The tests a test goes with; see [`TestSpec::group`] and [`TestSpec::shares`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Mates {
    group: Option<String>,
    shares: Option<String>,
}

impl TestSpec {
    /// A test outside any group, with the run's settings.
    pub fn new(binary: u32, name: impl Into<Arc<str>>, ignored: bool) -> TestSpec {
        TestSpec {
            name: name.into(),
            binary,
            settings: None,
            ignored,
            mates: None,
        }
    }

    /// Tests of one group are leased together and run one after another in one process (a pytest
    /// suite's `xdist_group` marks, or its `dist` mode).
    pub fn group(&self) -> Option<&str> {
        self.mates.as_ref()?.group.as_deref()
    }

    /// The pytest module or class whose class-, module- or package-scoped fixtures the test uses.
    /// A lease is filled with such mates before other tests, so that a worker sets those fixtures
    /// up once for them all; unlike a group, never beyond the lease's size, so parallelism comes
    /// first.
    pub fn shares(&self) -> Option<&str> {
        self.mates.as_ref()?.shares.as_deref()
    }

    pub fn set_group(&mut self, group: Option<String>) {
        let shares = self.mates.take().and_then(|m| m.shares);
        self.mates = Mates::boxed(group, shares);
    }

    pub fn set_shares(&mut self, shares: Option<String>) {
        let group = self.mates.take().and_then(|m| m.group);
        self.mates = Mates::boxed(group, shares);
    }

    /// This test with its group and the fixtures it shares.
    pub fn with_mates(mut self, group: Option<String>, shares: Option<String>) -> TestSpec {
        self.mates = Mates::boxed(group, shares);
        self
    }
}

impl Mates {
    fn boxed(group: Option<String>, shares: Option<String>) -> Option<Box<Mates>> {
        (group.is_some() || shares.is_some()).then(|| Box::new(Mates { group, shares }))
    }
}

/// The serialised form: every field flat, as specs stored before this form was packed.
#[derive(Serialize, Deserialize)]
struct Fields {
    binary: u32,
    name: Arc<str>,
    ignored: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shares: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<u32>,
}

impl From<Fields> for TestSpec {
    fn from(f: Fields) -> TestSpec {
        TestSpec {
            name: f.name,
            binary: f.binary,
            settings: f.settings,
            ignored: f.ignored,
            mates: Mates::boxed(f.group, f.shares),
        }
    }
}

impl From<TestSpec> for Fields {
    fn from(t: TestSpec) -> Fields {
        let Mates { group, shares } = t.mates.map(|m| *m).unwrap_or_default();
        Fields {
            binary: t.binary,
            name: t.name,
            ignored: t.ignored,
            group,
            shares,
            settings: t.settings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_small_and_serialised_flat() {
        assert!(std::mem::size_of::<TestSpec>() <= 40);
        let mut t = TestSpec::new(2, "a::b", false);
        t.set_shares(Some("tests/test_m.py".into()));
        t.set_group(Some("db".into()));
        assert_eq!(
            (t.group(), t.shares()),
            (Some("db"), Some("tests/test_m.py"))
        );
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"{"binary":2,"name":"a::b","ignored":false,"group":"db","shares":"tests/test_m.py"}"#
        );
        assert_eq!(serde_json::from_str::<TestSpec>(&json).unwrap(), t);
        let plain = TestSpec::new(0, "c", true);
        let json = serde_json::to_string(&plain).unwrap();
        assert_eq!(json, r#"{"binary":0,"name":"c","ignored":true}"#);
        assert_eq!(serde_json::from_str::<TestSpec>(&json).unwrap(), plain);
        t.set_group(None);
        t.set_shares(None);
        assert_eq!(t, TestSpec::new(2, "a::b", false));
    }
}
