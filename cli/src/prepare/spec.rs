//! A run's spec from its binaries and their listed tests: the filters, the manifest's services,
//! quarantine and passed variables, and the revision the run is of.

use std::path::Path;
use std::time::Duration;

use testfleet_model::{Binary, ImageSource, RunSpec, TestSpec};

use crate::args::RunArgs;
use crate::cargo::{self, Workspace};
use crate::error::{CliError, CliResult};
use crate::nextest_config::NextestConfig;
use crate::suite_manifest::SuiteManifest;

/// The run's spec from its binaries and their listed tests (filtered), with the settings of the
/// workspace's nextest profile (`nextest`) for each test; `batch` is the tests per process unless
/// `--tests-per-process` says otherwise.
pub(super) fn build(
    args: &RunArgs,
    ws: &Workspace,
    binaries: Vec<(Binary, Vec<cargo::ListedTest>)>,
    bundled: bool,
    suite: Option<&SuiteManifest>,
    batch: u32,
    nextest: Option<&NextestConfig>,
) -> CliResult<RunSpec> {
    let (binary_count, listed_count) = (
        binaries.len(),
        binaries.iter().map(|(_, t)| t.len()).sum::<usize>(),
    );
    let mut spec_binaries = Vec::new();
    let mut tests = Vec::new();
    let filtersets = crate::filterset::from_args(&args.filtersets)?;
    let graph = crate::filterset::Packages {
        deps: ws.member_deps.clone(),
    };
    for (mut b, listed) in binaries {
        let target = crate::filterset::Target::of(&b);
        let selected: Vec<_> = listed
            .iter()
            .filter(|t| {
                args.filters.is_empty() || args.filters.iter().any(|f| t.name.contains(f.as_str()))
            })
            .filter(|t| {
                filtersets.is_empty()
                    || filtersets
                        .iter()
                        .any(|f| f.matches(&target.item(&t.name), &graph))
            })
            .filter(|t| {
                args.ignore_default_filter
                    || nextest.is_none_or(|c| c.selects(&target.item(&t.name), &graph))
            })
            .collect();
        if selected.is_empty() {
            continue;
        }
        let index = spec_binaries.len() as u32;
        b.services = suite
            .map(|s| s.manifest.services_for(&b.binary_id))
            .unwrap_or_default();
        spec_binaries.push(b);
        tests.extend(selected.into_iter().map(|t| {
            TestSpec::new(index, t.name.clone(), t.ignored)
                .with_mates(t.group.clone(), t.shares.clone())
        }));
    }
    let runnable = tests.iter().filter(|t| !t.ignored()).count();
    if runnable == 0 {
        let mut filters = if args.filters.is_empty() {
            String::new()
        } else {
            format!(" matching {:?}", args.filters)
        };
        for f in &args.filtersets {
            filters.push_str(&format!(" selected by -E {f:?}"));
        }
        if let Some(c) = nextest.filter(|_| !args.ignore_default_filter)
            && c.has_default_filter()
        {
            filters.push_str(&format!(
                " in the default-filter of nextest profile `{}` (--ignore-default-filter runs the others)",
                c.profile
            ));
        }
        return Err(CliError::NoTests(format!(
            "no test to run{filters}: {binary_count} test binaries hold {listed_count} tests, {} selected, all others ignored",
            tests.len()
        )));
    }
    let suite_name = ws
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "workspace".to_owned());
    let (revision, branch) = git_revision(&ws.root);
    let mut spec = RunSpec {
        suite: suite_name,
        binaries: spec_binaries,
        tests,
        retries: if bundled {
            args.retries
        } else {
            Some(args.retries.unwrap_or(0))
        },
        test_timeout: Duration::from_secs_f64(args.timeout),
        kill_grace: Duration::from_secs_f64(args.kill_grace),
        output_cap_bytes: args.output_cap.max(RunSpec::MIN_OUTPUT_CAP),
        bundle_digest: None,
        revision: args.revision.clone().unwrap_or(revision),
        branch: args.branch.clone().unwrap_or_else(|| ci_branch(branch)),
        services: suite
            .map(|s| s.manifest.services.clone())
            .unwrap_or_default(),
        workspace: match suite {
            Some(s) if has_workspace_files(&s.manifest) => {
                if bundled {
                    s.bundle_dir(ws)
                } else {
                    s.dir.display().to_string()
                }
            }
            _ => String::new(),
        },
        quarantine: suite.map(|s| s.manifest.quarantine).unwrap_or_default(),
        tests_per_process: args.tests_per_process.unwrap_or(batch),
        origin: vec![],
        pass_env: suite
            .map(|s| s.manifest.pass_env.clone())
            .unwrap_or_default(),
        settings: vec![],
        test_groups: vec![],
    };
    if let Some(c) = nextest {
        crate::nextest_config::apply(c, &mut spec, &graph, args.retries.is_some());
    }
    Ok(spec)
}

/// Whether an agent reads service files from the workspace: build contexts, compose files.
fn has_workspace_files(m: &testfleet_model::Manifest) -> bool {
    m.services.iter().any(|s| {
        matches!(
            s.source,
            ImageSource::Build { .. } | ImageSource::Compose { .. }
        )
    })
}

/// The branch git names, unless the checkout is detached (CI checkouts often are): then the one
/// GitHub Actions names, if any.
fn ci_branch(git: String) -> String {
    if !git.is_empty() && git != "HEAD" {
        return git;
    }
    ["GITHUB_HEAD_REF", "GITHUB_REF_NAME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|b| !b.is_empty())
        .unwrap_or(git)
}

fn git_revision(root: &Path) -> (String, String) {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    (
        git(&["rev-parse", "HEAD"]),
        git(&["rev-parse", "--abbrev-ref", "HEAD"]),
    )
}
