//! Preparing a run before it is submitted: building and listing the suite's tests (`cargo`,
//! `tool`), its spec (`spec`), and for a coordinator the bundle: what it holds (the workspace's
//! files, the Cargo layout) and packing it.

pub mod cargo_layout;
mod cargo_suite;
mod digest_cache;
pub mod file_manifest;
pub mod pack;
mod spec;
mod tool;
pub mod workspace_files;

use std::path::{Path, PathBuf};

use testfleet_model::{ImageSource, RunSpec};

use crate::args::{BundleFormat, RunArgs};
use crate::cargo::{self, Workspace};
use crate::error::{CliError, CliResult};
use crate::suite_manifest::{self, SuiteManifest};
use crate::{remote, upload_files};

/// A cheap owned copy of what `prepare` needs, for the blocking task.
fn suite_manifest_ref(s: &SuiteManifest) -> SuiteManifest {
    SuiteManifest {
        manifest: s.manifest.clone(),
        dir: s.dir.clone(),
    }
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
    // A filterset that does not parse is said before anything is built.
    crate::filterset::from_args(&args.filtersets)?;
    // A suite whose manifest names a runner is not a Cargo workspace's tests.
    if args.cargo.manifest_path.is_none()
        && let Some(suite) = suite_manifest::load_tool_suite(args.manifest.as_deref())?
    {
        return tool::prepare(args, remote, suite).await;
    }
    let cargo_args = args.cargo.clone();
    let ws = tokio::task::spawn_blocking(move || cargo::locate_workspace(&cargo_args))
        .await
        .map_err(|e| CliError::Internal(e.into()))??;
    // A bad manifest is reported before anything is built.
    let suite = suite_manifest::load(args.manifest.as_deref(), &ws)?;
    match suite {
        Some(s) if s.manifest.runner.is_some() => tool::prepare(args, remote, s).await,
        suite => cargo_suite::prepare(args, remote, ws, suite).await,
    }
}

/// The suite's own files for its bundle: what git would not ignore under `root`, as the manifest
/// and `--include` adjust it (their paths are relative to the manifest and to `root`).
pub(crate) fn suite_files(
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

/// Runs the suite's prepare commands; for a coordinator, packs the bundle (`content` and the
/// services' build contexts) and uploads it unless the coordinator has it.
pub(crate) async fn finish(
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
        let entries = bundle_entries(ws, content, suite.as_ref())?;
        pack::check_size(&entries, args.max_bundle_bytes)?;
        let digest = match args.bundle_format {
            BundleFormat::Files => send_files(args, ws, url, client, &entries).await?,
            BundleFormat::Archive => None,
        };
        spec.bundle_digest = Some(match digest {
            Some(d) => d,
            None => send_archive(args, ws, url, client, &entries).await?,
        });
    }
    Ok(Prepared {
        spec,
        needs_services,
        workspace_root: ws.root.clone(),
    })
}

/// Sends the bundle as a manifest and the files the coordinator lacks; `None` when the
/// coordinator takes only archives.
async fn send_files(
    args: &RunArgs,
    ws: &Workspace,
    url: &str,
    client: &remote::Client,
    entries: &[testfleet_bundle::BundleEntry],
) -> CliResult<Option<String>> {
    let entries = entries.to_vec();
    let cache = ws.target_dir.join("testfleet").join("digests.v1");
    let packing = ws.target_dir.join("testfleet").join("bundles");
    let bundle = tokio::task::spawn_blocking(move || {
        // Archives runs killed midway left go, whichever way this run sends its bundle.
        pack::remove_stale(&packing);
        file_manifest::build(entries, &cache)
    })
    .await
    .map_err(|e| CliError::Internal(e.into()))??;
    let Some(sent) = upload_files::upload(client, url, &bundle, args.connect.wait()).await? else {
        eprintln!("the coordinator at {url} takes bundles only as archives: sending one");
        return Ok(None);
    };
    let short = &bundle.digest[..12];
    if sent.present {
        eprintln!(
            "bundle {short} ({} files) already on the coordinator",
            sent.files
        );
    } else {
        eprintln!(
            "bundle {short}: uploaded {} of {} files, {} ({} sent)",
            sent.new_files,
            sent.files,
            pack::human(sent.new_bytes),
            pack::human(sent.sent_bytes)
        );
    }
    Ok(Some(bundle.digest))
}

/// Packs the bundle into one archive and uploads it unless the coordinator has it.
async fn send_archive(
    args: &RunArgs,
    ws: &Workspace,
    url: &str,
    client: &remote::Client,
    entries: &[testfleet_bundle::BundleEntry],
) -> CliResult<String> {
    let dir = ws.target_dir.join("testfleet").join("bundles");
    let packed = pack::pack(entries.to_vec(), &dir).await?;
    let sent = remote::upload_bundle(client, url, &packed, args.connect.wait()).await;
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
    Ok(packed.digest)
}

/// The bundle's files: `entries`, the services' build contexts (agents build their images from
/// them) and the compose stacks' files with the `.env` beside them (what they build or mount is
/// in the workspace's files), each path once.
fn bundle_entries(
    ws: &Workspace,
    mut entries: Vec<testfleet_bundle::BundleEntry>,
    suite: Option<&SuiteManifest>,
) -> CliResult<Vec<testfleet_bundle::BundleEntry>> {
    for s in suite
        .iter()
        .flat_map(|s| s.manifest.services.iter().map(move |svc| (s, svc)))
    {
        let (suite, svc) = s;
        let dirs: Vec<(String, &str)> = match &svc.source {
            ImageSource::Build { context, .. } => vec![(context.clone(), "build context")],
            ImageSource::Compose { files, .. } => files
                .iter()
                .flat_map(|f| {
                    let env = Path::new(f).with_file_name(".env");
                    let env = suite
                        .dir
                        .join(&env)
                        .is_file()
                        .then(|| (env.to_string_lossy().into_owned(), "compose .env"));
                    std::iter::once((f.clone(), "compose file")).chain(env)
                })
                .collect(),
            ImageSource::Image { .. } => vec![],
        };
        for (dir, what) in dirs {
            // (A directory or, for a stack, a file.)
            let src = suite.dir.join(&dir);
            let rel = Path::new(&suite.bundle_dir(ws)).join(&dir);
            pack::collect_files(&src, &rel, &mut entries).map_err(|e| {
                CliError::Bundle(format!(
                    "cannot bundle the {what} of service `{}` ({}): {e}",
                    svc.name,
                    src.display()
                ))
            })?;
        }
    }
    // A build context inside the bundled workspace is listed twice: once is enough.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert(e.archive_path.clone()));
    Ok(entries)
}
