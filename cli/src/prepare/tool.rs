//! A tool suite's run (pytest, a command): its tests listed by the tool, its spec, and for a
//! coordinator its directory as the bundle's workspace.

use std::path::Path;

use testfleet_model::Binary;

use crate::args::RunArgs;
use crate::cargo::Workspace;
use crate::error::{CliError, CliResult};
use crate::remote;
use crate::suite_manifest::SuiteManifest;
use crate::tool_suite;

use super::cargo_layout;
use super::{Prepared, finish, suite_files};

/// Lists a tool suite's tests (pytest, a command) and makes its spec: the program runs from the
/// manifest's directory (in a bundle, its copy), which holds the suite's files.
pub(super) async fn prepare(
    args: &RunArgs,
    remote: Option<(&str, &mut remote::Client)>,
    suite: SuiteManifest,
) -> CliResult<Prepared> {
    if args.cargo.any_build_option() {
        return Err(CliError::Config(format!(
            "{} runs its tests with a [runner]: Cargo options do not apply to it",
            suite
                .dir
                .join(testfleet_model::manifest::FILE_NAME)
                .display()
        )));
    }
    let runner = suite
        .manifest
        .runner
        .clone()
        .expect("a tool suite has a runner");
    let dir = suite.dir.clone();
    let listed = tokio::task::spawn_blocking(move || tool_suite::list(&runner, &dir))
        .await
        .map_err(|e| CliError::Internal(e.into()))??;
    // A tool suite has no build dir: its bundle is packed outside it, so a run leaves nothing in
    // the suite's directory but the local history it keeps there (`.testfleet`).
    let scratch = format!(
        "testfleet-suite-{:08x}",
        crate::process::short_hash(suite.dir.as_os_str().as_encoded_bytes())
    );
    let ws = Workspace {
        root: suite.dir.clone(),
        target_dir: std::env::temp_dir().join(scratch),
        packages: Default::default(),
        member_deps: Default::default(),
    };
    let bundled = remote.is_some();
    // The suite's directory: its copy in the bundle, or itself. A program named by a path is
    // inside it; a bare name is looked up on each agent's PATH.
    let cwd = match bundled {
        true => "ws".to_owned(),
        false => suite.dir.display().to_string(),
    };
    let program = match listed.program.contains('/') {
        true => Path::new(&cwd)
            .join(listed.program.trim_start_matches("./"))
            .display()
            .to_string(),
        false => listed.program.clone(),
    };
    let binaries = listed
        .binaries
        .into_iter()
        .map(|(binary_id, tests)| {
            let b = Binary {
                binary_id: binary_id.into(),
                path: program.clone(),
                cwd: cwd.clone(),
                env: listed.env.clone(),
                services: vec![],
                runner: listed.runner.clone(),
                path_env: Default::default(),
                library_path: vec![],
            };
            (b, tests)
        })
        .collect();
    let spec = super::spec::build(
        args,
        &ws,
        binaries,
        bundled,
        Some(&suite),
        tool_suite::DEFAULT_BATCH,
        None,
    )?;
    let mut spec = spec;
    let mut content = vec![];
    if bundled {
        // The suite's directory is shown to its tests where it is here.
        spec.origin = vec![testfleet_model::OriginTree {
            bundle_dir: cargo_layout::WS.into(),
            path: cargo_layout::lexical(&suite.dir),
        }];
        content = suite_files(args, &suite.dir, vec![ws.target_dir.clone()], Some(&suite))?;
    }
    finish(args, remote, &ws, spec, Some(suite), content).await
}
