//! A run as submitted: the test binaries, the tests in them, and how to run them.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::test_spec::TestSpec;
use crate::{Runner, ServiceSpec, TestId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binary {
    /// Stable name across builds, e.g. `my-crate::integration`. Shared with the events that name
    /// its tests.
    pub binary_id: Arc<str>,
    /// Absolute in local runs; relative to the bundle root when the run has a bundle.
    pub path: String,
    /// Working directory of the binary's tests, under the same rule as `path`.
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    /// Services its tests need: indices into [`RunSpec::services`].
    pub services: Vec<u32>,
    /// How its tests are started and read back.
    #[serde(default)]
    pub runner: Runner,
    /// Variables whose values are files of the run (`OUT_DIR`, `CARGO_BIN_EXE_<name>`,
    /// `CARGO_TARGET_TMPDIR`): paths under the same rule as `path`, which each agent turns into
    /// the paths its tests see.
    #[serde(default)]
    pub path_env: BTreeMap<String, String>,
    /// Directories the binary loads shared libraries from (its tests' `LD_LIBRARY_PATH`), under
    /// the same rule as `path`.
    #[serde(default)]
    pub library_path: Vec<String>,
}

/// A tree of the bundle and where it was on the submitting machine: an agent that can shows it to
/// the tests at that path, so paths compiled into them (`env!("CARGO_MANIFEST_DIR")`) still hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginTree {
    /// The bundle's top directory (`ws`, `target`).
    pub bundle_dir: String,
    /// Absolute path on the submitting machine.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub suite: String,
    pub binaries: Vec<Binary>,
    pub tests: Vec<TestSpec>,
    /// `None`: the coordinator's default.
    pub retries: Option<u32>,
    pub test_timeout: Duration,
    pub kill_grace: Duration,
    pub output_cap_bytes: u64,
    /// `None` for local runs, whose agents share the submitter's filesystem.
    pub bundle_digest: Option<String>,
    pub revision: String,
    pub branch: String,
    pub services: Vec<ServiceSpec>,
    /// Workspace root for service build contexts (same rule as binary paths); empty if unused.
    pub workspace: String,
    pub quarantine: QuarantinePolicy,
    /// Batch mode: up to this many tests of one binary share a process (1: a process per test).
    #[serde(default = "one")]
    pub tests_per_process: u32,
    /// Where the bundle's trees came from; empty without a bundle.
    #[serde(default)]
    pub origin: Vec<OriginTree>,
    /// Variables of each agent's environment its tests may see besides the standard ones (the
    /// manifest's `pass_env`); a trailing `*` matches a prefix.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// The distinct per-test settings of the run's tests ([`TestSpec::settings`] points here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<crate::TestSettings>,
    /// Bounds on how many tests of a group run at once across the fleet
    /// ([`crate::TestSettings::test_group`] points here). Unlike [`TestSpec::group`], which runs
    /// tests together in one process, these keep them apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_groups: Vec<crate::TestGroup>,
}

fn one() -> u32 {
    1
}

/// How a suite's tests enter and leave quarantine (the manifest's `[quarantine]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinePolicy {
    /// Quarantine tests that turn out flaky without anyone asking.
    pub auto: bool,
    /// Release a quarantined test after this many clean runs in a row (0: never by itself).
    pub release_after: u32,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        QuarantinePolicy {
            auto: false,
            release_after: 5,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("the run has no test")]
    NoTests,
    #[error("the run has {count} tests, more than the limit of {limit}")]
    TooManyTests { count: usize, limit: usize },
    #[error("test `{name}` refers to binary #{index}, but the run has {count} binaries")]
    UnknownBinary {
        name: String,
        index: u32,
        count: usize,
    },
    #[error("test `{0}` appears twice")]
    DuplicateTest(TestId),
    #[error("binary #{0} has an empty binary id")]
    EmptyBinaryId(usize),
    #[error("binary ids must be unique, `{0}` appears twice")]
    DuplicateBinary(String),
    #[error("a test of binary `{0}` has an empty name")]
    EmptyTestName(String),
    #[error("{what} of binary `{binary}` is `{path}`: {reason}")]
    BadPath {
        what: &'static str,
        binary: String,
        path: String,
        reason: &'static str,
    },
    #[error("the test timeout must be at least 1 ms")]
    ZeroTimeout,
    #[error("the output cap must be at least {min} bytes, got {got}")]
    OutputCapTooSmall { min: u64, got: u64 },
    #[error("bundle digest `{0}` is not a sha256 hex digest (64 lowercase hex characters)")]
    BadDigest(String),
    #[error("tests per process must be between 1 and {limit}, got {0}", limit = RunSpec::MAX_TESTS_PER_PROCESS)]
    TestsPerProcess(u32),
    #[error("{0} retries requested, more than the limit of {limit}", limit = RunSpec::MAX_RETRIES)]
    TooManyRetries(u32),
    #[error("binary `{binary}` needs service #{index}, but the run declares {count} services")]
    UnknownService {
        binary: String,
        index: u32,
        count: usize,
    },
    #[error("{0}")]
    BadService(String),
    #[error("binary `{binary}`: {reason}")]
    BadRunner { binary: String, reason: String },
    #[error("the run declares {0} services, more than the limit of {limit}", limit = RunSpec::MAX_SERVICES)]
    TooManyServices(usize),
    #[error("origin of bundle tree `{bundle_dir}` is `{path}`: {reason}")]
    BadOrigin {
        bundle_dir: String,
        path: String,
        reason: &'static str,
    },
    #[error("per-test settings: {0}")]
    BadSettings(String),
    #[error("pass_env `{0}`: {1}")]
    BadPassEnv(String, &'static str),
}

impl RunSpec {
    /// Makes each of this spec's test names the same allocation as the equal name in `other`
    /// (an earlier spec of the suite still held): runs of one suite share their names instead of
    /// holding a copy each.
    pub fn share_names_with(&mut self, other: &RunSpec) {
        let names: std::collections::HashMap<&str, &std::sync::Arc<str>> =
            other.tests.iter().map(|t| (&*t.name, &t.name)).collect();
        for t in self.tests.iter_mut() {
            if let Some(name) = names.get(&*t.name) {
                t.name = std::sync::Arc::clone(name);
            }
        }
    }

    /// Test `index` as run events name it: its place, its binary and its name.
    pub fn test_ref(&self, index: u32) -> crate::TestRef {
        let t = &self.tests[index as usize];
        crate::TestRef {
            index,
            binary_id: self.binaries[t.binary as usize].binary_id.clone(),
            name: t.name.clone(),
        }
    }

    /// Test `index`'s settings ([`RunSpec::settings`]), if it has any.
    pub fn settings_of(&self, index: u32) -> Option<&crate::TestSettings> {
        let i = self.tests.get(index as usize)?.settings()?;
        self.settings.get(i as usize)
    }

    /// How the suite's tool names its tests in its own reports, when its ids say (pytest).
    pub fn case_style(&self) -> Option<crate::IdStyle> {
        self.binaries.iter().find_map(|b| match &b.runner {
            crate::Runner::Junit {
                ids: crate::IdStyle::Pytest,
                ..
            } => Some(crate::IdStyle::Pytest),
            _ => None,
        })
    }

    pub const MAX_TESTS: usize = 1_000_000;
    pub const MAX_RETRIES: u32 = 20;
    pub const MIN_OUTPUT_CAP: u64 = 1024;
    pub const MAX_SERVICES: usize = 64;
    pub const MAX_TESTS_PER_PROCESS: u32 = 1000;
    /// Distinct per-test settings and test groups a run may declare.
    pub const MAX_SETTINGS: usize = 4096;
    /// The longest retry wait a test may ask for.
    pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

    /// Test groups with a positive bound and distinct names; settings that point at a group the
    /// run has, retries within the limit, waits and timeouts that are not absurd.
    fn validate_settings(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::BadSettings(m));
        if self.settings.len() > Self::MAX_SETTINGS || self.test_groups.len() > Self::MAX_SETTINGS {
            return bad(format!(
                "{} settings and {} test groups, more than the limit of {}",
                self.settings.len(),
                self.test_groups.len(),
                Self::MAX_SETTINGS
            ));
        }
        let mut names = HashSet::new();
        for g in &self.test_groups {
            if g.name.is_empty() || g.max_threads == 0 {
                return bad(format!(
                    "test group `{}` needs a name and a max-threads of at least 1",
                    g.name
                ));
            }
            if !names.insert(g.name.as_str()) {
                return bad(format!("test group `{}` is declared twice", g.name));
            }
        }
        for s in &self.settings {
            if let Some(g) = s
                .test_group
                .filter(|g| *g as usize >= self.test_groups.len())
            {
                return bad(format!(
                    "settings refer to test group #{g}, but the run has {}",
                    self.test_groups.len()
                ));
            }
            if let Some(r) = &s.retries {
                if r.count > Self::MAX_RETRIES {
                    return Err(SpecError::TooManyRetries(r.count));
                }
                if r.delay > Self::MAX_RETRY_DELAY
                    || r.max_delay.is_some_and(|d| d > Self::MAX_RETRY_DELAY)
                {
                    return bad(format!(
                        "a retry delay is longer than {} s",
                        Self::MAX_RETRY_DELAY.as_secs()
                    ));
                }
            }
            if s.timeout.is_some_and(|t| t.is_zero()) {
                return Err(SpecError::ZeroTimeout);
            }
        }
        Ok(())
    }

    /// Checks everything the coordinator relies on; called at the edge before a run is accepted.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.tests.is_empty() {
            return Err(SpecError::NoTests);
        }
        if self.tests.len() > Self::MAX_TESTS {
            return Err(SpecError::TooManyTests {
                count: self.tests.len(),
                limit: Self::MAX_TESTS,
            });
        }
        if self.test_timeout.is_zero() {
            return Err(SpecError::ZeroTimeout);
        }
        if self.output_cap_bytes < Self::MIN_OUTPUT_CAP {
            return Err(SpecError::OutputCapTooSmall {
                min: Self::MIN_OUTPUT_CAP,
                got: self.output_cap_bytes,
            });
        }
        if !(1..=Self::MAX_TESTS_PER_PROCESS).contains(&self.tests_per_process) {
            return Err(SpecError::TestsPerProcess(self.tests_per_process));
        }
        if let Some(r) = self.retries.filter(|r| *r > Self::MAX_RETRIES) {
            return Err(SpecError::TooManyRetries(r));
        }
        if let Some(d) = &self.bundle_digest
            && !is_sha256_hex(d)
        {
            return Err(SpecError::BadDigest(d.chars().take(80).collect()));
        }
        if self.services.len() > Self::MAX_SERVICES {
            return Err(SpecError::TooManyServices(self.services.len()));
        }
        let mut names = HashSet::new();
        for s in &self.services {
            s.validate().map_err(SpecError::BadService)?;
            if !names.insert(s.name.as_str()) {
                return Err(SpecError::BadService(format!(
                    "service `{}` is declared twice",
                    s.name
                )));
            }
        }
        self.validate_settings()?;
        self.validate_origin()?;
        for name in &self.pass_env {
            check_pass_env(name).map_err(|why| SpecError::BadPassEnv(name.clone(), why))?;
        }
        if !self.workspace.is_empty() {
            let ws = Binary {
                binary_id: "(workspace)".into(),
                path: String::new(),
                cwd: String::new(),
                env: BTreeMap::new(),
                services: vec![],
                runner: Runner::Libtest,
                path_env: BTreeMap::new(),
                library_path: vec![],
            };
            check_path(
                "workspace",
                &ws,
                &self.workspace,
                self.bundle_digest.is_some(),
            )?;
        }
        let mut binary_ids = HashSet::new();
        for (i, b) in self.binaries.iter().enumerate() {
            if b.binary_id.is_empty() {
                return Err(SpecError::EmptyBinaryId(i));
            }
            if !binary_ids.insert(&*b.binary_id) {
                return Err(SpecError::DuplicateBinary(b.binary_id.to_string()));
            }
            if let Some(&index) = b
                .services
                .iter()
                .find(|i| **i as usize >= self.services.len())
            {
                return Err(SpecError::UnknownService {
                    binary: b.binary_id.to_string(),
                    index,
                    count: self.services.len(),
                });
            }
            let bundled = self.bundle_digest.is_some();
            b.runner.validate().map_err(|reason| SpecError::BadRunner {
                binary: b.binary_id.to_string(),
                reason,
            })?;
            // A tool's program may be a bare name, looked up on each agent's PATH.
            let on_path =
                b.runner != Runner::Libtest && !b.path.contains('/') && !b.path.is_empty();
            if !on_path {
                check_path("path", b, &b.path, bundled)?;
            }
            check_path("cwd", b, &b.cwd, bundled)?;
            for p in b.path_env.values() {
                check_path("a path variable", b, p, bundled)?;
            }
            for p in &b.library_path {
                check_path("a library directory", b, p, bundled)?;
            }
        }
        let mut seen = HashSet::new();
        for t in &self.tests {
            let binary =
                self.binaries
                    .get(t.binary as usize)
                    .ok_or_else(|| SpecError::UnknownBinary {
                        name: t.name.to_string(),
                        index: t.binary,
                        count: self.binaries.len(),
                    })?;
            if t.name.is_empty() {
                return Err(SpecError::EmptyTestName(binary.binary_id.to_string()));
            }
            if let Some(i) = t.settings().filter(|i| *i as usize >= self.settings.len()) {
                return Err(SpecError::BadSettings(format!(
                    "test `{}` refers to settings #{i}, but the run has {}",
                    t.name,
                    self.settings.len()
                )));
            }
            if !seen.insert((t.binary, &*t.name)) {
                return Err(SpecError::DuplicateTest(TestId {
                    binary_id: binary.binary_id.to_string(),
                    name: t.name.to_string(),
                }));
            }
        }
        Ok(())
    }

    /// Origins name distinct top directories of the bundle, at distinct absolute paths other than
    /// `/`, and only runs with a bundle have them.
    fn validate_origin(&self) -> Result<(), SpecError> {
        let mut dirs = HashSet::new();
        let mut paths = HashSet::new();
        for o in &self.origin {
            let bad = |reason| {
                Err(SpecError::BadOrigin {
                    bundle_dir: o.bundle_dir.clone(),
                    path: o.path.clone(),
                    reason,
                })
            };
            if self.bundle_digest.is_none() {
                return bad("only a run with a bundle has origins");
            }
            let top = Path::new(&o.bundle_dir);
            if o.bundle_dir.is_empty()
                || top.components().count() != 1
                || !matches!(
                    top.components().next(),
                    Some(std::path::Component::Normal(_))
                )
            {
                return bad("the bundle directory must be one plain name");
            }
            let p = Path::new(&o.path);
            if !p.is_absolute()
                || p.components().any(|c| {
                    !matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                })
            {
                return bad("must be an absolute path without `.` or `..`");
            }
            if p.parent().is_none() {
                return bad("must not be the root directory");
            }
            if !dirs.insert(o.bundle_dir.as_str()) {
                return bad("the bundle directory appears twice");
            }
            if !paths.insert(p) {
                return bad("two bundle trees share this path");
            }
        }
        Ok(())
    }

    pub fn test_id(&self, index: usize) -> TestId {
        let t = &self.tests[index];
        TestId {
            binary_id: self.binaries[t.binary as usize].binary_id.to_string(),
            name: t.name.to_string(),
        }
    }
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A variable name, or a prefix ending in `*`; never one of testfleet's own variables, which
/// carry its secrets.
pub fn check_pass_env(name: &str) -> Result<(), &'static str> {
    let stem = name.strip_suffix('*').unwrap_or(name);
    let valid = stem
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if stem.is_empty() && name.is_empty() || !valid {
        return Err("must be a variable name (letters, digits, `_`), or a prefix ending in `*`");
    }
    if "TESTFLEET_".starts_with(stem) || stem.starts_with("TESTFLEET_") {
        return Err("testfleet's own variables (TESTFLEET_*) are never passed to tests");
    }
    Ok(())
}

fn check_path(what: &'static str, b: &Binary, path: &str, bundled: bool) -> Result<(), SpecError> {
    let bad = |reason| {
        Err(SpecError::BadPath {
            what,
            binary: b.binary_id.to_string(),
            path: path.to_owned(),
            reason,
        })
    };
    let p = Path::new(path);
    if path.is_empty() {
        return bad("must not be empty");
    }
    if bundled {
        // Bundle paths are resolved under the extraction dir; they must not climb out of it.
        if p.is_absolute() {
            return bad("must be relative to the bundle root");
        }
        if p.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        }) {
            return bad("must not contain `..`");
        }
    } else if !p.is_absolute() {
        return bad("must be absolute in a run without a bundle");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        let mut s = crate::test_support::spec(1);
        s.binaries[0].binary_id = "crate".into();
        s.tests[0].name = "a".into();
        s.retries = None;
        s
    }

    #[test]
    fn a_valid_spec_passes() {
        spec().validate().unwrap();
    }

    #[test]
    fn each_defect_is_named() {
        let mut s = spec();
        s.tests.clear();
        assert_eq!(s.validate(), Err(SpecError::NoTests));

        let mut s = spec();
        s.tests.push(s.tests[0].clone());
        assert!(matches!(s.validate(), Err(SpecError::DuplicateTest(_))));

        let mut s = spec();
        s.tests[0].binary = 3;
        assert!(matches!(
            s.validate(),
            Err(SpecError::UnknownBinary { index: 3, .. })
        ));

        let mut s = spec();
        s.bundle_digest = Some("abc".into());
        assert!(matches!(s.validate(), Err(SpecError::BadDigest(_))));

        let mut s = spec();
        s.bundle_digest = Some("a".repeat(64));
        assert!(
            matches!(s.validate(), Err(SpecError::BadPath { reason, .. }) if reason.contains("relative"))
        );
        s.binaries[0].path = "bin/../../etc/passwd".into();
        s.binaries[0].cwd = "ws".into();
        assert!(
            matches!(s.validate(), Err(SpecError::BadPath { reason, .. }) if reason.contains(".."))
        );

        let mut s = spec();
        s.test_timeout = Duration::ZERO;
        assert_eq!(s.validate(), Err(SpecError::ZeroTimeout));

        let mut s = spec();
        s.binaries[0].services = vec![0];
        assert!(matches!(
            s.validate(),
            Err(SpecError::UnknownService { index: 0, .. })
        ));
    }

    #[test]
    fn origins_and_passed_variables_are_checked() {
        let mut s = spec();
        s.bundle_digest = Some("a".repeat(64));
        s.binaries[0].path = "target/debug/deps/t".into();
        s.binaries[0].cwd = "ws".into();
        let tree = |d: &str, p: &str| OriginTree {
            bundle_dir: d.into(),
            path: p.into(),
        };
        s.origin = vec![
            tree("ws", "/home/me/p"),
            tree("target", "/home/me/p/target"),
        ];
        assert_eq!(s.validate(), Ok(()));
        for bad in [
            vec![tree("ws", "home/me")],
            vec![tree("ws", "/")],
            vec![tree("ws", "/a/../etc")],
            vec![tree("../ws", "/a")],
            vec![tree("ws/x", "/a")],
            vec![tree("ws", "/a"), tree("ws", "/b")],
            vec![tree("ws", "/a"), tree("target", "/a")],
        ] {
            s.origin = bad.clone();
            assert!(
                matches!(s.validate(), Err(SpecError::BadOrigin { .. })),
                "{bad:?}"
            );
        }
        s.origin.clear();
        s.binaries[0]
            .path_env
            .insert("OUT_DIR".into(), "/abs".into());
        assert!(matches!(s.validate(), Err(SpecError::BadPath { .. })));
        s.binaries[0]
            .path_env
            .insert("OUT_DIR".into(), "target/out".into());
        s.binaries[0].library_path = vec!["../lib".into()];
        assert!(matches!(s.validate(), Err(SpecError::BadPath { .. })));
        s.binaries[0].library_path.clear();
        s.pass_env = vec!["DATABASE_URL".into(), "AWS_*".into()];
        assert_eq!(s.validate(), Ok(()));
        for bad in [
            "TESTFLEET_TOKEN",
            "TESTFLEET_*",
            "TEST*",
            "*",
            "1X",
            "A-B",
            "",
        ] {
            s.pass_env = vec![bad.into()];
            assert!(
                matches!(s.validate(), Err(SpecError::BadPassEnv(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_tool_s_program_may_be_on_the_path_and_its_command_must_be_whole() {
        let mut s = spec();
        s.binaries[0].path = "python3".into();
        assert!(matches!(s.validate(), Err(SpecError::BadPath { .. })));
        let args = |a: &[&str]| a.iter().map(|x| x.to_string()).collect();
        s.binaries[0].runner = Runner::Junit {
            args: args(&["-m", "pytest", "--junitxml={junit}", "{tests}"]),
            ids: crate::IdStyle::Pytest,
        };
        assert_eq!(s.validate(), Ok(()));
        s.binaries[0].path = "tools/run".into();
        assert!(matches!(s.validate(), Err(SpecError::BadPath { .. })));
        s.binaries[0].path = "python3".into();
        s.binaries[0].runner = Runner::Junit {
            args: args(&["{tests}"]),
            ids: crate::IdStyle::Plain,
        };
        assert!(matches!(s.validate(), Err(SpecError::BadRunner { .. })));
    }
}
