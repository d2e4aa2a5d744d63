//! Finding and preparing the suite manifest (`testfleet.toml`): the services a suite's tests need,
//! and the commands that make their build contexts ready before anything is bundled.

use std::path::{Path, PathBuf};
use std::process::Command;

use testfleet_model::Manifest;
use testfleet_model::manifest::FILE_NAME;

use crate::cargo::Workspace;
use crate::error::{CliError, CliResult};

/// A loaded manifest and the directory its relative paths start from.
pub struct SuiteManifest {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

/// The manifest given with `--manifest`, or `testfleet.toml` at the workspace root if present.
pub fn load(explicit: Option<&Path>, ws: &Workspace) -> CliResult<Option<SuiteManifest>> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let default = ws.root.join(FILE_NAME);
            if !default.is_file() {
                return Ok(None);
            }
            default
        }
    };
    open(&path).map(Some)
}

/// The manifest given with `--manifest`, or `testfleet.toml` in the current directory, when it
/// names a `[runner]`: a suite that is no Cargo workspace's tests.
pub fn load_tool_suite(explicit: Option<&Path>) -> CliResult<Option<SuiteManifest>> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(FILE_NAME),
    };
    if explicit.is_none() && !path.is_file() {
        return Ok(None);
    }
    let suite = open(&path)?;
    Ok(suite.manifest.runner.is_some().then_some(suite))
}

/// How the tool suite here (`--manifest`, or `testfleet.toml` in the current directory) names its
/// tests in its own reports, if it is one whose ids say (pytest).
pub fn tool_id_style(explicit: Option<&Path>) -> Option<testfleet_model::IdStyle> {
    let runner = load_tool_suite(explicit).ok()??.manifest.runner?;
    match runner.tool {
        testfleet_model::manifest::Tool::Pytest { .. } => Some(testfleet_model::IdStyle::Pytest),
        testfleet_model::manifest::Tool::Command { .. } => None,
    }
}

/// Reads the manifest at `path`; its directory is where its relative paths start.
fn open(path: &Path) -> CliResult<SuiteManifest> {
    let manifest = Manifest::load(path).map_err(|e| CliError::BadManifest(e.to_string()))?;
    let dir = path
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| CliError::BadManifest(format!("cannot resolve {}", path.display())))?;
    Ok(SuiteManifest { manifest, dir })
}

impl SuiteManifest {
    /// Runs the `prepare` command of every service in `used`, in the manifest's directory, with
    /// its output shown on stderr.
    pub fn prepare(&self, used: &[u32]) -> CliResult<()> {
        for i in used {
            let service = &self.manifest.services[*i as usize];
            let Some(cmd) = self.manifest.prepare.get(&service.name) else {
                continue;
            };
            eprintln!("preparing service `{}`: {}", service.name, cmd.join(" "));
            // Its output goes to stderr: stdout is the run's report (`--json` events).
            let status = Command::new(&cmd[0])
                .args(&cmd[1..])
                .current_dir(&self.dir)
                .stdout(std::io::stderr())
                .status()
                .map_err(|e| {
                    CliError::BadManifest(format!(
                        "service `{}`: cannot run prepare command `{}`: {e}",
                        service.name, cmd[0]
                    ))
                })?;
            if !status.success() {
                return Err(CliError::BadManifest(format!(
                    "service `{}`: prepare command `{}` failed ({status})",
                    service.name,
                    cmd.join(" ")
                )));
            }
        }
        Ok(())
    }

    /// Where the manifest's directory lands in a bundle.
    pub fn bundle_dir(&self, ws: &Workspace) -> String {
        match self.dir.strip_prefix(&ws.root) {
            Ok(rel) if rel.as_os_str().is_empty() => "ws".to_owned(),
            Ok(rel) => format!("ws/{}", rel.display()),
            Err(_) => "ws/.manifest".to_owned(),
        }
    }
}
