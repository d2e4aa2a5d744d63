//! Identifiers: runs and leases are numbered by the coordinator, agents name themselves.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("invalid {kind} id `{value}`: {reason}")]
    Invalid {
        kind: &'static str,
        value: String,
        reason: &'static str,
    },
}

macro_rules! numeric_id {
    ($name:ident, $kind:literal) => {
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                s.parse().map($name).map_err(|_| IdError::Invalid {
                    kind: $kind,
                    value: s.chars().take(64).collect(),
                    reason: "expected a decimal number",
                })
            }
        }
    };
}

numeric_id!(RunId, "run");
numeric_id!(LeaseId, "lease");

/// Whether a test's name already starts with its binary (a pytest node id starts with its file,
/// which is its binary), so people need not be shown the binary again.
pub fn name_shows_binary(binary_id: &str, name: &str) -> bool {
    name.strip_prefix(binary_id)
        .is_some_and(|rest| rest.starts_with("::"))
}

/// A test as people are shown it: `BINARY NAME`, or the name alone when it names its binary.
pub fn test_label(binary_id: &str, name: &str) -> String {
    if name_shows_binary(binary_id, name) {
        name.to_owned()
    } else {
        format!("{binary_id} {name}")
    }
}

/// An agent's self-chosen name: stable across restarts so that its leftovers can be found again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentId(String);

impl AgentId {
    pub const MAX_LEN: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AgentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let invalid = |reason| IdError::Invalid {
            kind: "agent",
            value: s.chars().take(64).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(invalid("longer than 128 bytes"));
        }
        // Agent ids end up in container labels, file names and log lines: keep them plain.
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "only ASCII letters, digits, '-', '_' and '.' are allowed",
            ));
        }
        Ok(AgentId(s.to_owned()))
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A test's identity across runs: the binary it lives in and its full name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TestId {
    pub binary_id: String,
    pub name: String,
}

impl fmt::Display for TestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.binary_id, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_is_shown_with_its_binary_unless_its_name_starts_with_it() {
        assert_eq!(
            test_label("tests/test_x.py", "tests/test_x.py::test_y"),
            "tests/test_x.py::test_y"
        );
        assert_eq!(test_label("basic", "tests::adds"), "basic tests::adds");
        assert_eq!(
            test_label("tests/a.py", "tests/a.pyc::x"),
            "tests/a.py tests/a.pyc::x"
        );
    }

    #[test]
    fn agent_ids_are_plain() {
        assert!("build-7.ci_a".parse::<AgentId>().is_ok());
        assert!("".parse::<AgentId>().is_err());
        assert!("a b".parse::<AgentId>().is_err());
        assert!("../x".parse::<AgentId>().is_err());
        assert!("x".repeat(129).parse::<AgentId>().is_err());
    }

    #[test]
    fn numeric_ids_round_trip() {
        let id: RunId = "42".parse().unwrap();
        assert_eq!(id, RunId(42));
        assert_eq!(id.to_string(), "42");
        let err = "r42".parse::<RunId>().unwrap_err();
        assert!(err.to_string().contains("invalid run id `r42`"), "{err}");
    }
}
