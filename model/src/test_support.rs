//! For the workspace's tests (feature `test-support`): a valid run spec of one binary and `n`
//! tests, adjusted with struct update syntax (`RunSpec { retries: Some(2), ..spec(3) }`), so no
//! test spells out every field of a spec.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{Binary, QuarantinePolicy, RunSpec, Runner, TestSpec};

/// A binary `id` at `path`, run in `cwd`, with nothing else set.
pub fn binary(id: &str, path: &str, cwd: &str) -> Binary {
    Binary {
        binary_id: id.into(),
        path: path.into(),
        cwd: cwd.into(),
        env: BTreeMap::new(),
        services: vec![],
        runner: Runner::Libtest,
        path_env: BTreeMap::new(),
        library_path: vec![],
    }
}

/// Suite `s`, binary `b` (`/bin/true`, in `/`), tests `t0`..`t{n-1}`; no retries, 1 s timeout and
/// grace, 4 KiB of output, no bundle.
pub fn spec(n: usize) -> RunSpec {
    RunSpec {
        suite: "s".into(),
        binaries: vec![binary("b", "/bin/true", "/")],
        tests: (0..n)
            .map(|i| TestSpec::new(0, format!("t{i}"), false))
            .collect(),
        retries: Some(0),
        test_timeout: Duration::from_secs(1),
        kill_grace: Duration::from_secs(1),
        output_cap_bytes: 4096,
        bundle_digest: None,
        revision: String::new(),
        branch: String::new(),
        services: vec![],
        workspace: String::new(),
        quarantine: QuarantinePolicy::default(),
        tests_per_process: 1,
        origin: vec![],
        pass_env: vec![],
        settings: vec![],
        test_groups: vec![],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_spec_is_valid_as_it_is() {
        assert_eq!(super::spec(3).validate(), Ok(()));
    }
}
