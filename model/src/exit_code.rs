//! Exit codes of the `testfleet` binary. They are part of the interface: scripts and CI branch on them.

/// Every test passed (or was flaky, skipped or quarantined).
pub const SUCCESS: i32 = 0;
/// An unexpected internal error; the message says what happened.
pub const INTERNAL_ERROR: i32 = 1;
/// The command line could not be parsed (clap's own code).
pub const USAGE: i32 = 2;
/// The run finished and at least one test failed or timed out.
pub const TESTS_FAILED: i32 = 10;
/// The run could not complete: tests ended in infrastructure errors, or the run was cancelled.
pub const RUN_INCOMPLETE: i32 = 11;
/// The directory is neither a Cargo project (no manifest found, or cargo could not read it) nor a
/// tool suite (a `testfleet.toml` naming a `[runner]`).
pub const NOT_A_CARGO_PROJECT: i32 = 20;
/// A selected package does not exist in the workspace.
pub const UNKNOWN_PACKAGE: i32 = 21;
/// Building the tests failed; cargo's errors were shown.
pub const BUILD_FAILED: i32 = 22;
/// A test binary could not list its tests.
pub const TEST_LIST_FAILED: i32 = 23;
/// The selection contains no test to run.
pub const NO_TESTS: i32 = 24;
/// The suite manifest (`testfleet.toml`) is invalid, or one of its `prepare` commands failed.
pub const BAD_MANIFEST: i32 = 25;
/// The coordinator could not be reached or refused the connection.
pub const COORDINATOR_UNREACHABLE: i32 = 30;
/// The coordinator rejected the request (invalid run, unknown run id, ...).
pub const REQUEST_REJECTED: i32 = 31;
/// A bundle could not be built, uploaded or verified.
pub const BUNDLE_ERROR: i32 = 32;
/// A server (coordinator or agent) could not start: address in use, data dir locked, ...
pub const SERVER_ERROR: i32 = 40;

/// Every documented code with its meaning, for `--help` texts and the README.
pub const ALL: &[(i32, &str)] = &[
    (
        SUCCESS,
        "every test passed (flaky and skipped tests do not fail a run)",
    ),
    (INTERNAL_ERROR, "unexpected internal error"),
    (USAGE, "invalid command line"),
    (TESTS_FAILED, "at least one test failed or timed out"),
    (
        RUN_INCOMPLETE,
        "tests ended in infrastructure errors, or the run was cancelled",
    ),
    (
        NOT_A_CARGO_PROJECT,
        "neither a Cargo project nor a tool suite (a testfleet.toml naming a [runner])",
    ),
    (
        UNKNOWN_PACKAGE,
        "a selected package is not in the workspace",
    ),
    (BUILD_FAILED, "building the tests failed"),
    (TEST_LIST_FAILED, "a test binary could not list its tests"),
    (NO_TESTS, "no test selected"),
    (
        BAD_MANIFEST,
        "the suite manifest is invalid or a prepare command failed",
    ),
    (
        COORDINATOR_UNREACHABLE,
        "the coordinator could not be reached",
    ),
    (REQUEST_REJECTED, "the coordinator rejected the request"),
    (
        BUNDLE_ERROR,
        "the test bundle could not be built, uploaded or verified",
    ),
    (SERVER_ERROR, "a coordinator or agent could not start"),
];

#[cfg(test)]
mod tests {
    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<i32> = super::ALL.iter().map(|(c, _)| *c).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), super::ALL.len());
    }
}
