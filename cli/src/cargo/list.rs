//! Asking each test binary for its tests: `BIN --list --format terse`, and again with `--ignored`
//! to learn which of them are ignored.

use std::collections::HashSet;
use std::process::Command;

use super::TestBinary;
use crate::error::{CliError, CliResult};

#[derive(Debug, Clone)]
pub struct ListedTest {
    pub name: String,
    pub ignored: bool,
    /// Tests that must run together (a pytest suite's `xdist_group`, or its `dist` mode).
    pub group: Option<String>,
    /// What the test shares with others: see [`testfleet_model::TestSpec::shares`].
    pub shares: Option<String>,
}

fn list(binary: &TestBinary, ignored: bool) -> CliResult<Vec<String>> {
    let mut cmd = Command::new(&binary.executable);
    cmd.args(["--list", "--format", "terse"]);
    if ignored {
        cmd.arg("--ignored");
    }
    let out = cmd
        .current_dir(&binary.package_dir)
        .env("CARGO_MANIFEST_DIR", &binary.package_dir)
        .output()
        .map_err(|e| {
            CliError::TestListFailed(format!(
                "cannot run test binary {} ({}): {e}",
                binary.binary_id,
                binary.executable.display()
            ))
        })?;
    if !out.status.success() {
        return Err(CliError::TestListFailed(format!(
            "test binary {} ({}) failed to list its tests ({}):\n{}",
            binary.binary_id,
            binary.executable.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// The tests of one binary, each marked ignored or not (benchmarks are left out).
pub fn list_tests(binary: &TestBinary) -> CliResult<Vec<ListedTest>> {
    let all = list(binary, false)?;
    let ignored: HashSet<String> = list(binary, true)?.into_iter().collect();
    Ok(all
        .into_iter()
        .map(|name| ListedTest {
            ignored: ignored.contains(&name),
            name,
            group: None,
            shares: None,
        })
        .collect())
}
