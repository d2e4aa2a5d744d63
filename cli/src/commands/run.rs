//! `testfleet run`: build the workspace's tests, list them, submit the run (to an embedded fleet or
//! a coordinator), follow it live, and end with the run's exit code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use testfleet_model::{Binary, ImageSource, RunId, RunSpec, TestSpec};
use testfleet_proto::pb;

use crate::args::RunArgs;
use crate::cargo::{self, TestBinary, Workspace};
use crate::error::{CliError, CliResult};
use crate::local::LocalFleet;
use crate::prepare::cargo_layout::{self, CargoLayout};
use crate::prepare::{pack, workspace_files};
use crate::remote;
use crate::reporter::Report;
use crate::suite_manifest::{self, SuiteManifest};
use crate::tool_suite;

/// A cheap owned copy of what `prepare` needs, for the blocking task.
fn suite_manifest_ref(s: &SuiteManifest) -> SuiteManifest {
    SuiteManifest {
        manifest: s.manifest.clone(),
        dir: s.dir.clone(),
    }
}

pub async fn run(args: Box<RunArgs>) -> CliResult<i32> {
    // Fail fast on an unreachable coordinator, before spending minutes on a build.
    let mut remote_client = match &args.coordinator {
        Some(url) => Some(remote::connect(url, &args.connect.security()?).await?),
        None => None,
    };
    let remote = args.coordinator.as_deref().zip(remote_client.as_mut());
    let prepared = prepare(&args, remote).await?;
    let mode;
    let mut fleet = None;
    let (url, mut client) = match (&args.coordinator, remote_client.take()) {
        (Some(url), Some(client)) => {
            mode = format!("on {url}");
            (url.clone(), client)
        }
        _ => {
            let agents = args.local.unwrap_or(2).max(1);
            let slots = args
                .slots
                .unwrap_or_else(|| (super::default_slots() / agents).max(1));
            let data_dir = args
                .data_dir
                .clone()
                .unwrap_or_else(|| prepared.workspace_root.join(".testfleet"));
            let docker = prepared.needs_services && !args.no_docker;
            let f = LocalFleet::start(&data_dir, agents, slots, docker).await?;
            mode = format!("on {agents} local agent(s) × {slots} slot(s)");
            let url = f.url.clone();
            let client = remote::connect(&url, &f.security).await?;
            fleet = Some(f);
            (url, client)
        }
    };

    let result = submit_and_follow(&mut client, &url, &prepared.spec, &args, mode).await;
    if let Some(f) = fleet {
        f.shutdown().await;
    }
    result
}

/// A run ready to submit.
pub(crate) struct Prepared {
    pub spec: RunSpec,
    pub needs_services: bool,
    pub workspace_root: PathBuf,
}

/// Builds the workspace's tests, lists them, runs the suite's prepare commands, and makes the
/// run's spec; for a coordinator (`remote`), also packs the bundle and uploads it unless the
/// coordinator has it.
pub(crate) async fn prepare(
    args: &RunArgs,
    remote: Option<(&str, &mut remote::Client)>,
) -> CliResult<Prepared> {
    // A suite whose manifest names a runner is not a Cargo workspace's tests.
    if args.cargo.manifest_path.is_none()
        && let Some(suite) = suite_manifest::load_tool_suite(args.manifest.as_deref())?
    {
        return prepare_tool(args, remote, suite).await;
    }
    let cargo_args = args.cargo.clone();
    let ws = tokio::task::spawn_blocking(move || cargo::locate_workspace(&cargo_args))
        .await
        .map_err(|e| CliError::Internal(e.into()))??;
    // A bad manifest is reported before anything is built.
    let suite = suite_manifest::load(args.manifest.as_deref(), &ws)?;
    match suite {
        Some(s) if s.manifest.runner.is_some() => prepare_tool(args, remote, s).await,
        suite => prepare_cargo(args, remote, ws, suite).await,
    }
}

/// Builds a Cargo workspace's tests and lists them; for a coordinator, gathers the bundle's
/// contents (the workspace's files and what the tests need of the target dir).
async fn prepare_cargo(
    args: &RunArgs,
    remote: Option<(&str, &mut remote::Client)>,
    ws: Workspace,
    suite: Option<SuiteManifest>,
) -> CliResult<Prepared> {
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
    let mut spec = build_spec(args, &ws, listed, bundled, suite.as_ref(), 1)?;
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

/// The suite's own files for its bundle: what git would not ignore under `root`, as the manifest
/// and `--include` adjust it (their paths are relative to the manifest and to `root`).
fn suite_files(
    args: &RunArgs,
    root: &Path,
    skip: Vec<PathBuf>,
    suite: Option<&SuiteManifest>,
) -> CliResult<Vec<testfleet_bundle::BundleEntry>> {
    let mut include = args.includes.clone();
    let mut exclude = vec![];
    if let Some(s) = suite {
        let rel = s.dir.strip_prefix(root).unwrap_or(Path::new(""));
        include.extend(s.manifest.include.iter().map(|p| rel.join(p)));
        exclude.extend(
            s.manifest
                .exclude
                .iter()
                .map(|g| rel.join(g).display().to_string()),
        );
    }
    for inc in &include {
        if inc.is_absolute()
            || inc
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(CliError::Bundle(format!(
                "--include {} is not inside the workspace",
                inc.display()
            )));
        }
    }
    let sel = workspace_files::Selection {
        root,
        top: cargo_layout::WS,
        skip,
        exclude: &exclude,
        include: &include,
    };
    workspace_files::collect(&sel).map_err(CliError::Bundle)
}

/// Lists a tool suite's tests (pytest, a command) and makes its spec: the program runs from the
/// manifest's directory (in a bundle, its copy), which holds the suite's files.
async fn prepare_tool(
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
    let ws = Workspace {
        root: suite.dir.clone(),
        target_dir: suite.dir.join(".testfleet").join("build"),
        packages: Default::default(),
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
                binary_id,
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
    let spec = build_spec(
        args,
        &ws,
        binaries,
        bundled,
        Some(&suite),
        tool_suite::DEFAULT_BATCH,
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

/// Runs the suite's prepare commands; for a coordinator, packs the bundle (`content` and the
/// services' build contexts) and uploads it unless the coordinator has it.
async fn finish(
    args: &RunArgs,
    remote: Option<(&str, &mut remote::Client)>,
    ws: &Workspace,
    mut spec: RunSpec,
    suite: Option<SuiteManifest>,
    content: Vec<testfleet_bundle::BundleEntry>,
) -> CliResult<Prepared> {
    let used: Vec<u32> = {
        let mut u: Vec<u32> = spec
            .binaries
            .iter()
            .flat_map(|b| b.services.clone())
            .collect();
        u.sort_unstable();
        u.dedup();
        u
    };
    if let Some(suite) = &suite {
        let s = suite_manifest_ref(suite);
        tokio::task::spawn_blocking(move || s.prepare(&used))
            .await
            .map_err(|e| CliError::Internal(e.into()))??;
    }
    let needs_services = spec.binaries.iter().any(|b| !b.services.is_empty());
    if let Some((url, client)) = remote {
        let packed = pack_bundle(args, ws, content, suite.as_ref()).await?;
        let sent = remote::upload_bundle(client, url, &packed).await;
        // The next run packs afresh: once sent (or refused), the archive is of no more use here.
        if let Some(own) = packed.path.parent() {
            pack::remove_packed(own);
        }
        let sent = sent?;
        eprintln!(
            "bundle {} ({} bytes) {}",
            &packed.digest[..12],
            packed.size,
            if sent {
                "uploaded"
            } else {
                "already on the coordinator"
            }
        );
        spec.bundle_digest = Some(packed.digest);
    }
    Ok(Prepared {
        spec,
        needs_services,
        workspace_root: ws.root.clone(),
    })
}

async fn submit_and_follow(
    client: &mut remote::Client,
    url: &str,
    spec: &RunSpec,
    args: &RunArgs,
    mode: String,
) -> CliResult<i32> {
    let signals = crate::watch::StopSignals::new();
    // The root of the run's trace (when traces are on): the coordinator's run span continues it.
    let span = tracing::info_span!(
        target: testfleet_coordinator::run_trace::TRACE_TARGET,
        "testfleet run",
        otel.kind = "client",
        testfleet.suite = %spec.suite,
        testfleet.tests = spec.tests.len() as u64,
        testfleet.run_id = tracing::field::Empty,
    );
    let run_id: RunId = client
        .submit_run(traced(
            &span,
            pb::SubmitRunRequest {
                spec: Some(spec.into()),
                ..Default::default()
            },
        ))
        .await
        .map_err(|s| CliError::from_status(url, s))?
        .into_inner()
        .run_id
        .parse()
        .map_err(|e| {
            CliError::Internal(anyhow::anyhow!("coordinator returned a bad run id: {e}"))
        })?;
    span.record("testfleet.run_id", run_id.to_string());
    if args.detach {
        // Machine-readable: the id alone on stdout.
        println!("{run_id}");
        eprintln!("run {run_id} submitted to {url}; it goes on without this process");
        return Ok(testfleet_model::exit_code::SUCCESS);
    }
    let mut report = Report::new(args.json, args.junit.clone(), mode)
        .with_markdown(args.markdown_summary.clone());
    let (summary, _state) =
        crate::watch::follow(client, url, run_id, &mut report, Some(signals)).await?;
    report.finish()?;
    Ok(summary.exit_code())
}

/// A request carrying `span`'s trace context.
pub(crate) fn traced<T>(span: &tracing::Span, message: T) -> tonic::Request<T> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut request = tonic::Request::new(message);
    testfleet_proto::trace::inject(&span.context(), request.metadata_mut());
    request
}

/// The run's spec from its binaries and their listed tests (filtered); `batch` is the tests per
/// process unless `--tests-per-process` says otherwise.
fn build_spec(
    args: &RunArgs,
    ws: &Workspace,
    binaries: Vec<(Binary, Vec<cargo::ListedTest>)>,
    bundled: bool,
    suite: Option<&SuiteManifest>,
    batch: u32,
) -> CliResult<RunSpec> {
    let (binary_count, listed_count) = (
        binaries.len(),
        binaries.iter().map(|(_, t)| t.len()).sum::<usize>(),
    );
    let mut spec_binaries = Vec::new();
    let mut tests = Vec::new();
    for (mut b, listed) in binaries {
        let selected: Vec<_> = listed
            .iter()
            .filter(|t| {
                args.filters.is_empty() || args.filters.iter().any(|f| t.name.contains(f.as_str()))
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
        tests.extend(selected.into_iter().map(|t| TestSpec {
            binary: index,
            name: t.name.clone(),
            ignored: t.ignored,
        }));
    }
    let runnable = tests.iter().filter(|t| !t.ignored).count();
    if runnable == 0 {
        let filters = if args.filters.is_empty() {
            String::new()
        } else {
            format!(" matching {:?}", args.filters)
        };
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
    Ok(RunSpec {
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
        branch,
        services: suite
            .map(|s| s.manifest.services.clone())
            .unwrap_or_default(),
        workspace: match suite {
            Some(s) if has_builds(&s.manifest) => {
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
    })
}

fn has_builds(m: &testfleet_model::Manifest) -> bool {
    m.services
        .iter()
        .any(|s| matches!(s.source, ImageSource::Build { .. }))
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

/// Packs `content` and the services' build contexts (agents build their images from them) into
/// a content-addressed bundle.
async fn pack_bundle(
    args: &RunArgs,
    ws: &Workspace,
    mut entries: Vec<testfleet_bundle::BundleEntry>,
    suite: Option<&SuiteManifest>,
) -> CliResult<testfleet_bundle::PackedBundle> {
    for s in suite
        .iter()
        .flat_map(|s| s.manifest.services.iter().map(move |svc| (s, svc)))
    {
        if let (suite, ImageSource::Build { context, .. }) = (s.0, &s.1.source) {
            let src = suite.dir.join(context);
            let rel = Path::new(&suite.bundle_dir(ws)).join(context);
            pack::collect_files(&src, &rel, &mut entries).map_err(|e| {
                CliError::Bundle(format!(
                    "cannot bundle the build context of service `{}` ({}): {e}",
                    s.1.name,
                    src.display()
                ))
            })?;
        }
    }
    // A build context inside the bundled workspace is listed twice: once is enough.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert(e.archive_path.clone()));
    let dir = ws.target_dir.join("testfleet").join("bundles");
    pack::pack(entries, &dir, args.max_bundle_bytes).await
}
