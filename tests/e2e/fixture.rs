//! The fixture model: every test of `tests/fixtures/basic` and the outcome it must end with.

use std::collections::BTreeMap;

use testfleet_model::Outcome;

pub struct Expected {
    pub binary_id: &'static str,
    pub name: &'static str,
    /// With `--retries 1` or more.
    pub with_retries: Outcome,
    /// With no retries: a flaky test is just a failure.
    pub without_retries: Outcome,
}

const fn t(
    binary_id: &'static str,
    name: &'static str,
    with_retries: Outcome,
    without_retries: Outcome,
) -> Expected {
    Expected {
        binary_id,
        name,
        with_retries,
        without_retries,
    }
}

use Outcome::*;

pub const BASIC: &[Expected] = &[
    t("fixture-basic", "tests::adds", Passed, Passed),
    t("fixture-basic", "tests::adds_zero", Passed, Passed),
    t("fixture-basic", "tests::fails", Failed, Failed),
    t("fixture-basic", "tests::flaky_first_attempt", Flaky, Failed),
    t("fixture-basic", "tests::slow", Passed, Passed),
    t("fixture-basic", "tests::hangs", TimedOut, TimedOut),
    t("fixture-basic", "tests::crashes", Failed, Failed),
    t("fixture-basic", "tests::noisy", Passed, Passed),
    t("fixture-basic", "tests::ignored", Skipped, Skipped),
    t("fixture-basic", "tests::sees_testfleet_env", Passed, Passed),
    t("fixture-basic", "tests::pattern_flaky", Passed, Passed),
    t("fixture-basic", "tests::reads_bundled_file", Passed, Passed),
    t(
        "fixture-basic::integration",
        "integration_passes",
        Passed,
        Passed,
    ),
    t(
        "fixture-basic::integration",
        "integration_passes_too",
        Passed,
        Passed,
    ),
];

pub fn expected(retries: bool) -> BTreeMap<(String, String), Outcome> {
    BASIC
        .iter()
        .map(|e| {
            let o = if retries {
                e.with_retries
            } else {
                e.without_retries
            };
            ((e.binary_id.to_owned(), e.name.to_owned()), o)
        })
        .collect()
}

pub fn manifest() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/basic/Cargo.toml")
}

/// The suite whose tests need services (one service per scope), with its `testfleet.toml`.
pub fn services_manifest() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/services/Cargo.toml")
}
