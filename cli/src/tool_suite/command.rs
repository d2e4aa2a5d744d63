//! The `command` runner's listing: the suite's `list` command prints one test id per line.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::cargo::ListedTest;
use crate::error::{CliError, CliResult};

pub fn list(
    argv: &[String],
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> CliResult<Vec<ListedTest>> {
    let (_, stdout) = super::run_listing(argv, &[0], dir, env)?;
    let mut seen = HashSet::new();
    let tests: Vec<ListedTest> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && seen.insert(l.to_owned()))
        .map(|name| ListedTest {
            name: name.to_owned(),
            ignored: false,
            group: None,
            shares: None,
        })
        .collect();
    if tests.is_empty() {
        return Err(CliError::NoTests(format!(
            "`{}` listed no test in {}",
            argv.join(" "),
            dir.display()
        )));
    }
    Ok(tests)
}
