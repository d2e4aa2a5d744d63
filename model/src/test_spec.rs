//! One test of a run's spec, small in memory: a coordinator holds every test of the runs it runs
//! (a million of them is common), and few tests belong to a group, share fixtures or are ignored,
//! so what only those need is apart, allocated for them alone. Its serialised form is the flat one.

use std::num::NonZeroU32;
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
    /// One more than the index into [`crate::RunSpec::settings`] (see [`TestSpec::settings`]),
    /// so that with `None` it takes four bytes.
    settings: Option<NonZeroU32>,
    rare: Option<Box<Rare>>,
}

/// What few tests have: the tests a test goes with ([`TestSpec::group`], [`TestSpec::shares`]),
/// and whether it is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rare {
    group: Option<String>,
    shares: Option<String>,
    ignored: bool,
}

impl TestSpec {
    /// A test outside any group, with the run's settings.
    pub fn new(binary: u32, name: impl Into<Arc<str>>, ignored: bool) -> TestSpec {
        TestSpec {
            name: name.into(),
            binary,
            settings: None,
            rare: Rare::boxed(None, None, ignored),
        }
    }

    /// Index into [`crate::RunSpec::settings`]; `None`: the run's defaults.
    pub fn settings(&self) -> Option<u32> {
        self.settings.map(|i| i.get() - 1)
    }

    /// Sets [`TestSpec::settings`]. An index of `u32::MAX` reads back one less: still beyond any
    /// run's settings, so a spec naming it is refused as out of range, as it was.
    pub fn set_settings(&mut self, index: Option<u32>) {
        self.settings = index.map(|i| NonZeroU32::MIN.saturating_add(i));
    }

    /// Ignored tests are recorded as skipped and never leased.
    pub fn ignored(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.ignored)
    }

    pub fn set_ignored(&mut self, ignored: bool) {
        let (group, shares) = self.take_mates();
        self.rare = Rare::boxed(group, shares, ignored);
    }

    /// Tests of one group are leased together and run one after another in one process (a pytest
    /// suite's `xdist_group` marks, or its `dist` mode).
    pub fn group(&self) -> Option<&str> {
        self.rare.as_ref()?.group.as_deref()
    }

    /// The pytest module or class whose class-, module- or package-scoped fixtures the test uses.
    /// A lease is filled with such mates before other tests, so that a worker sets those fixtures
    /// up once for them all; unlike a group, never beyond the lease's size, so parallelism comes
    /// first.
    pub fn shares(&self) -> Option<&str> {
        self.rare.as_ref()?.shares.as_deref()
    }

    pub fn set_group(&mut self, group: Option<String>) {
        let ignored = self.ignored();
        let (_, shares) = self.take_mates();
        self.rare = Rare::boxed(group, shares, ignored);
    }

    pub fn set_shares(&mut self, shares: Option<String>) {
        let ignored = self.ignored();
        let (group, _) = self.take_mates();
        self.rare = Rare::boxed(group, shares, ignored);
    }

    /// This test with its group and the fixtures it shares.
    pub fn with_mates(mut self, group: Option<String>, shares: Option<String>) -> TestSpec {
        let ignored = self.ignored();
        self.rare = Rare::boxed(group, shares, ignored);
        self
    }

    fn take_mates(&mut self) -> (Option<String>, Option<String>) {
        self.rare
            .take()
            .map(|r| (r.group, r.shares))
            .unwrap_or_default()
    }
}

impl Rare {
    fn boxed(group: Option<String>, shares: Option<String>, ignored: bool) -> Option<Box<Rare>> {
        (group.is_some() || shares.is_some() || ignored).then(|| {
            Box::new(Rare {
                group,
                shares,
                ignored,
            })
        })
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
        let mut t = TestSpec {
            name: f.name,
            binary: f.binary,
            settings: None,
            rare: Rare::boxed(f.group, f.shares, f.ignored),
        };
        t.set_settings(f.settings);
        t
    }
}

impl From<TestSpec> for Fields {
    fn from(t: TestSpec) -> Fields {
        let settings = t.settings();
        let Rare {
            group,
            shares,
            ignored,
        } = t.rare.map(|r| *r).unwrap_or_default();
        Fields {
            binary: t.binary,
            name: t.name,
            ignored,
            group,
            shares,
            settings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_small_and_serialised_flat() {
        assert!(std::mem::size_of::<TestSpec>() <= 32);
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
        // Ignored and settings survive the mates' changes, and the wire form.
        t.set_ignored(true);
        t.set_settings(Some(0));
        t.set_group(Some("g".into()));
        assert!(t.ignored() && t.group() == Some("g") && t.settings() == Some(0));
        t.set_group(None);
        assert!(t.ignored() && t.settings() == Some(0));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"{"binary":2,"name":"a::b","ignored":true,"settings":0}"#
        );
        assert_eq!(serde_json::from_str::<TestSpec>(&json).unwrap(), t);
        t.set_settings(Some(u32::MAX));
        assert!(
            t.settings().is_some(),
            "an index out of every range stays one"
        );
        t.set_ignored(false);
        t.set_settings(None);
        assert_eq!(t, TestSpec::new(2, "a::b", false));
    }
}
