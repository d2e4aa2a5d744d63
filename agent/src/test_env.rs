//! The environment a test starts with. A remote run's tests get an allowlist of the agent's
//! variables (what any program needs, and what the suite's `pass_env` names), never the agent's
//! own settings and secrets; a local run's tests get the submitter's environment, as `cargo test`
//! gives it, less testfleet's own variables.

use std::collections::BTreeMap;

/// Variables every test may see: finding programs, the user, the locale and the terminal.
const STANDARD: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR",
];

/// Whether a variable of the agent's environment reaches a test.
pub(crate) fn passes(name: &str, remote: bool, pass_env: &[String]) -> bool {
    if name.starts_with("TESTFLEET_") {
        return false; // tokens, the coordinator's address, the data dir: never the test's
    }
    if !remote {
        return true;
    }
    STANDARD.contains(&name)
        || name.starts_with("LC_")
        || pass_env.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        })
}

/// The agent's variables a test of this run sees.
pub(crate) fn inherited(remote: bool, pass_env: &[String]) -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| passes(k, remote, pass_env))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_tests_see_the_allowlist_and_what_the_suite_passes() {
        let pass = vec!["DATABASE_URL".to_owned(), "AWS_*".to_owned()];
        for ok in ["PATH", "HOME", "LC_ALL", "DATABASE_URL", "AWS_REGION"] {
            assert!(passes(ok, true, &pass), "{ok}");
        }
        for no in [
            "TESTFLEET_TOKEN",
            "TESTFLEET_COORDINATOR",
            "SSH_AUTH_SOCK",
            "DATABASE_URL_2",
            "AWS",
        ] {
            assert!(!passes(no, true, &pass), "{no}");
        }
    }

    #[test]
    fn local_tests_see_everything_but_testfleet_s_own_variables() {
        assert!(passes("SSH_AUTH_SOCK", false, &[]));
        assert!(!passes("TESTFLEET_TOKEN", false, &[]));
    }
}
