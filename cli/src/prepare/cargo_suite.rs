//! A Cargo workspace's run: its tests built and listed, its spec, and for a coordinator the
//! bundle's contents (the workspace's files and what the tests need of the target dir).

use crate::args::RunArgs;
use crate::cargo::{self, TestBinary, Workspace};
use crate::error::{CliError, CliResult};
use crate::nextest_config::NextestConfig;
use crate::remote;
use crate::suite_manifest::SuiteManifest;

use super::cargo_layout::CargoLayout;
use super::{Prepared, finish, suite_files};

/// Builds a Cargo workspace's tests and lists them; for a coordinator, gathers the bundle's
/// contents (the workspace's files and what the tests need of the target dir).
pub(super) async fn prepare(
    args: &RunArgs,
    remote: Option<(&str, &mut remote::Client)>,
    ws: Workspace,
    suite: Option<SuiteManifest>,
) -> CliResult<Prepared> {
    // The workspace's nextest profile is read, and a mistake in it said, before anything is built.
    let nextest = NextestConfig::load(
        &ws.root,
        args.nextest_profile.as_deref(),
        crate::process::default_slots(),
    )?;
    if let Some(w) = nextest.as_ref().and_then(NextestConfig::warning) {
        eprintln!("{w}");
    }
    let (cargo_args, ws2) = (args.cargo.clone(), ws.clone());
    let (binaries, outputs) = tokio::task::spawn_blocking(move || -> CliResult<_> {
        let (binaries, outputs) = cargo::build_tests(&cargo_args, &ws2)?;
        let mut listed = Vec::new();
        for b in binaries {
            let tests = cargo::list_tests(&b)?;
            listed.push((b, tests));
        }
        Ok((listed, outputs))
    })
    .await
    .map_err(|e| CliError::Internal(e.into()))??;

    let bundled = remote.is_some();
    let layout = CargoLayout {
        ws: &ws,
        outputs: &outputs,
        bundled,
    };
    let listed = binaries
        .iter()
        .map(|(b, tests)| (layout.binary(b), tests.clone()))
        .collect();
    let mut spec = super::spec::build(
        args,
        &ws,
        listed,
        bundled,
        suite.as_ref(),
        1,
        nextest.as_ref(),
    )?;
    let mut content = vec![];
    if bundled {
        spec.origin = layout.origin();
        let tests: Vec<TestBinary> = binaries.iter().map(|(b, _)| b.clone()).collect();
        content = layout
            .target_entries(&tests)
            .map_err(|e| CliError::Bundle(format!("cannot bundle the build's outputs: {e}")))?;
        content.extend(suite_files(
            args,
            &ws.root,
            vec![ws.target_dir.clone()],
            suite.as_ref(),
        )?);
    }
    finish(args, remote, &ws, spec, suite, content).await
}
