//! `testfleet run`: build the workspace's tests, list them, submit the run (to an embedded fleet or
//! a coordinator), follow it live, and end with the run's exit code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use testfleet_bundle::BundleEntry;
use testfleet_model::{Binary, ImageSource, RunId, RunSpec, Runner, TestSpec};
use testfleet_proto::pb;

use crate::args::RunArgs;
use crate::cargo::{self, TestBinary, Workspace};
use crate::error::{CliError, CliResult};
use crate::local::LocalFleet;
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

/// Builds a Cargo workspace's tests and lists them.
async fn prepare_cargo(
    args: &RunArgs,
    remote: Option<(&str, &mut remote::Client)>,
    ws: Workspace,
    suite: Option<SuiteManifest>,
) -> CliResult<Prepared> {
    let (cargo_args, ws2) = (args.cargo.clone(), ws.clone());
    let binaries = tokio::task::spawn_blocking(move || -> CliResult<_> {
        let binaries = cargo::build_tests(&cargo_args, &ws2)?;
        let mut listed = Vec::new();
        for b in binaries {
            let tests = cargo::list_tests(&b)?;
            listed.push((b, tests));
        }
        Ok(listed)
    })
    .await
    .map_err(|e| CliError::Internal(e.into()))??;

    let bundled = remote.is_some();
    let listed = binaries
        .iter()
        .map(|(b, tests)| (cargo_binary(&ws, b, bundled), tests.clone()))
        .collect();
    let spec = build_spec(args, &ws, listed, bundled, suite.as_ref(), 1)?;
    let executables = binaries
        .iter()
        .map(|(b, _)| BundleEntry {
            archive_path: bundle_paths(&ws, b).0,
            source: b.executable.clone(),
        })
        .collect();
    finish(args, remote, &ws, spec, suite, executables, None).await
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
    // The suite's files are what its tests run from: all of them unless the manifest lists some.
    let project = suite.manifest.include.is_empty().then(|| suite.dir.clone());
    finish(args, remote, &ws, spec, Some(suite), vec![], project).await
}

/// Runs the suite's prepare commands; for a coordinator, packs the bundle (`executables`, the
/// included files, or all of `project`) and uploads it unless the coordinator has it.
async fn finish(
    args: &RunArgs,
    remote: Option<(&str, &mut remote::Client)>,
    ws: &Workspace,
    mut spec: RunSpec,
    suite: Option<SuiteManifest>,
    executables: Vec<BundleEntry>,
    project: Option<PathBuf>,
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
        // Files the manifest lists travel like `--include`d ones (its paths are relative to it).
        let mut includes = args.includes.clone();
        if let Some(s) = &suite {
            let rel = s.dir.strip_prefix(&ws.root).unwrap_or(Path::new(""));
            includes.extend(s.manifest.include.iter().map(|p| rel.join(p)));
        }
        let packed = pack_bundle(ws, executables, &includes, project, suite.as_ref()).await?;
        let sent = remote::upload_bundle(client, url, &packed).await;
        // The next run packs afresh: once sent (or refused), the archive is of no more use here.
        if let Some(own) = packed.path.parent() {
            remove_packed(own);
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

/// Where a binary and its package dir go inside a bundle.
fn bundle_paths(ws: &Workspace, b: &TestBinary) -> (String, String) {
    let file = b
        .executable
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| b.binary_id.replace([':', '/'], "_"));
    let cwd = match b.package_dir.strip_prefix(&ws.root) {
        Ok(rel) if rel.as_os_str().is_empty() => "ws".to_owned(),
        Ok(rel) => format!("ws/{}", rel.display()),
        Err(_) => format!("ws/.packages/{}", b.package),
    };
    (format!("bin/{file}"), cwd)
}

/// A Cargo test binary as the spec names it: bundle paths for a coordinator, its own otherwise.
fn cargo_binary(ws: &Workspace, b: &TestBinary, bundled: bool) -> Binary {
    let (path, cwd) = if bundled {
        bundle_paths(ws, b)
    } else {
        (
            b.executable.display().to_string(),
            b.package_dir.display().to_string(),
        )
    };
    let mut env = BTreeMap::new();
    env.insert("CARGO_PKG_NAME".to_owned(), b.package.clone());
    env.insert("CARGO_PKG_VERSION".to_owned(), b.package_version.clone());
    Binary {
        binary_id: b.binary_id.clone(),
        path,
        cwd,
        env,
        services: vec![],
        runner: Runner::Libtest,
    }
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

/// Packs the test binaries, the `--include`d files and the `project`'s files into a
/// content-addressed bundle.
async fn pack_bundle(
    ws: &Workspace,
    executables: Vec<BundleEntry>,
    includes: &[PathBuf],
    project: Option<PathBuf>,
    suite: Option<&SuiteManifest>,
) -> CliResult<testfleet_bundle::PackedBundle> {
    let mut entries = Vec::new();
    if let Some(dir) = project {
        collect_project(&dir, Path::new(""), &mut entries)
            .map_err(|e| CliError::Bundle(format!("cannot bundle {}: {e}", dir.display())))?;
    }
    // Service build contexts travel with the tests: agents build their images from them.
    for s in suite
        .iter()
        .flat_map(|s| s.manifest.services.iter().map(move |svc| (s, svc)))
    {
        if let (suite, ImageSource::Build { context, .. }) = (s.0, &s.1.source) {
            let rel = suite
                .bundle_dir(ws)
                .trim_start_matches("ws")
                .trim_start_matches('/')
                .to_owned();
            let src = suite.dir.join(context);
            collect_files(&src, &Path::new(&rel).join(context), &mut entries).map_err(|e| {
                CliError::Bundle(format!(
                    "cannot bundle the build context of service `{}` ({}): {e}",
                    s.1.name,
                    src.display()
                ))
            })?;
        }
    }
    entries.extend(executables);
    // A build context inside a bundled project is listed twice: once is enough.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert(e.archive_path.clone()));
    for inc in includes {
        let src = ws.root.join(inc);
        let rel = src
            .strip_prefix(&ws.root)
            .ok()
            .filter(|r| {
                !r.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            })
            .ok_or_else(|| {
                CliError::Bundle(format!(
                    "--include {} is not inside the workspace",
                    inc.display()
                ))
            })?
            .to_path_buf();
        collect_files(&src, &rel, &mut entries)
            .map_err(|e| CliError::Bundle(format!("cannot include {}: {e}", src.display())))?;
    }
    let dir = ws.target_dir.join("testfleet").join("bundles");
    // A directory of this run's own: runs of the same workspace at once (against one coordinator
    // or several) each pack, send and remove their own archive, whatever the others do.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let own = dir.join(format!("run-{}-{nanos}", std::process::id()));
    tokio::task::spawn_blocking(move || {
        remove_stale_bundles(&dir, SystemTime::now() - STALE_BUNDLE_AGE);
        let packed = testfleet_bundle::pack(&entries, &own);
        if packed.is_err() {
            remove_packed(&own);
        }
        packed
    })
    .await
    .map_err(|e| CliError::Internal(e.into()))?
    .map_err(|e| CliError::Bundle(format!("cannot build the bundle: {e}")))
}

/// Packed bundles older than this in `target/testfleet/bundles` were left by a run that was killed
/// before it could remove its own; a day is far longer than any run takes to upload.
const STALE_BUNDLE_AGE: Duration = Duration::from_secs(86_400);

/// Removes what runs left in `dir` before `cutoff`: their own directories (`run-*`), and archives
/// and unfinished packings of versions that packed into `dir` itself.
fn remove_stale_bundles(dir: &Path, cutoff: SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours =
            name.starts_with("run-") || name.ends_with(".tar.zst") || name.starts_with(".packing-");
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if ours && old {
            remove_packed(&entry.path());
        }
    }
}

/// Removes a run's packing directory (or a lone archive), saying so if it cannot.
fn remove_packed(path: &Path) {
    if let Err(e) = testfleet_bundle::remove(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a packed bundle");
    }
}

/// A tool suite's files: everything but hidden entries (`.git`, `.testfleet`, a `.venv`) and
/// Python's bytecode caches, at any depth. Linked directories are not followed.
fn collect_project(dir: &Path, rel: &Path, out: &mut Vec<BundleEntry>) -> std::io::Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|e| e.file_name());
    for c in children {
        let name = c.file_name();
        let text = name.to_string_lossy();
        if text.starts_with('.') || text == "__pycache__" {
            continue;
        }
        let found = match c.file_type() {
            Ok(t) if t.is_dir() => collect_project(&c.path(), &rel.join(&name), out),
            Ok(_) => collect_files(&c.path(), &rel.join(&name), out),
            Err(e) => Err(e),
        };
        match found {
            // Listed, then gone: a temporary file of some other process, not bundled.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

fn collect_files(src: &Path, rel: &Path, out: &mut Vec<BundleEntry>) -> std::io::Result<()> {
    // Linked directories are not followed (a link loop would never end); linked files are.
    if std::fs::symlink_metadata(src)?.file_type().is_symlink() && std::fs::metadata(src)?.is_dir()
    {
        tracing::warn!(path = %src.display(), "not bundling a symlinked directory");
        return Ok(());
    }
    let meta = std::fs::metadata(src)?;
    if meta.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(src)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for c in children {
            match collect_files(&c.path(), &rel.join(c.file_name()), out) {
                // Listed, then gone: a temporary file of some other process, not bundled.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    } else if meta.is_file() {
        out.push(BundleEntry {
            archive_path: format!("ws/{}", rel.display()),
            source: src.to_path_buf(),
        });
    }
    Ok(())
}
