//! Finding the workspace (`cargo metadata`) and building its test binaries
//! (`cargo test --no-run --message-format json-render-diagnostics`).

use std::collections::HashMap;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use cargo_metadata::{Message, MetadataCommand, TargetKind};

use crate::args::CargoArgs;
use crate::error::{CliError, CliResult};

#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    /// Package id → (name, version), for naming test binaries.
    pub packages: HashMap<String, (String, String)>,
    /// Each member's dependencies (normal, dev and build) on other members, by name: the
    /// graph filtersets' `deps()` and `rdeps()` walk.
    pub member_deps: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// What building the tests produced besides the test binaries: what the tests run or load at run
/// time, and so what a remote agent needs of the target dir.
#[derive(Debug, Clone, Default)]
pub struct BuildOutputs {
    /// Binary targets of workspace packages: (package, target name, executable), what
    /// `CARGO_BIN_EXE_<name>` names.
    pub bins: Vec<(String, String, PathBuf)>,
    /// Each workspace package's build script output dir (`OUT_DIR`), by package.
    pub out_dirs: HashMap<String, PathBuf>,
    /// Dynamic libraries built for workspace packages (dylib and cdylib targets).
    pub dylibs: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TestBinary {
    /// `package` for a library's unit tests, `package::target` for integration tests, `package::bin/name`
    /// for binaries, as cargo-nextest names them.
    pub binary_id: String,
    pub package: String,
    pub package_version: String,
    pub executable: PathBuf,
    pub package_dir: PathBuf,
}

pub fn locate_workspace(args: &CargoArgs) -> CliResult<Workspace> {
    let mut cmd = MetadataCommand::new();
    cmd.no_deps();
    if let Some(p) = &args.manifest_path {
        cmd.manifest_path(p);
    }
    let meta = cmd.exec().map_err(|e| {
        let detail = match e {
            cargo_metadata::Error::CargoMetadata { stderr } => stderr.trim().to_owned(),
            other => other.to_string(),
        };
        let place = args
            .manifest_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the current directory".to_owned());
        CliError::NotACargoProject(format!(
            "{place} is not a Cargo project: {detail}\n\
             (a suite run by another tool, such as pytest, names it in testfleet.toml: \
             `[runner]` with `kind = \"pytest\"` or `\"command\"`)"
        ))
    })?;
    let members: Vec<String> = meta
        .workspace_packages()
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    let known = |spec: &str| {
        // A spec may carry a version (`name@1.2.3`); the name is what must exist.
        let name = spec.split('@').next().unwrap_or(spec);
        members.iter().any(|m| m == name)
    };
    for spec in args.packages.iter().chain(&args.exclude) {
        if !known(spec) {
            return Err(CliError::UnknownPackage(format!(
                "package `{spec}` is not in the workspace at {}; its packages are: {}",
                meta.workspace_root,
                members.join(", ")
            )));
        }
    }
    let packages = meta
        .workspace_packages()
        .iter()
        .map(|p| {
            (
                p.id.repr.clone(),
                (p.name.to_string(), p.version.to_string()),
            )
        })
        .collect();
    let member_deps = meta
        .workspace_packages()
        .iter()
        .map(|p| {
            let on_members = p
                .dependencies
                .iter()
                .filter(|d| members.contains(&d.name) && d.name != p.name.as_str())
                .map(|d| d.name.clone())
                .collect();
            (p.name.to_string(), on_members)
        })
        .collect();
    Ok(Workspace {
        root: meta.workspace_root.into_std_path_buf(),
        target_dir: meta.target_directory.into_std_path_buf(),
        packages,
        member_deps,
    })
}

fn cargo_command(args: &CargoArgs) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "test",
        "--no-run",
        "--message-format",
        "json-render-diagnostics",
    ]);
    if let Some(p) = &args.manifest_path {
        cmd.arg("--manifest-path").arg(p);
    }
    for p in &args.packages {
        cmd.args(["--package", p]);
    }
    if args.workspace {
        cmd.arg("--workspace");
    }
    for p in &args.exclude {
        cmd.args(["--exclude", p]);
    }
    for f in &args.features {
        cmd.args(["--features", f]);
    }
    if args.all_features {
        cmd.arg("--all-features");
    }
    if args.no_default_features {
        cmd.arg("--no-default-features");
    }
    if args.release {
        cmd.arg("--release");
    }
    if let Some(p) = &args.cargo_profile {
        cmd.args(["--profile", p]);
    }
    cmd
}

/// Builds the test binaries; cargo's own diagnostics go straight to the user's stderr.
pub fn build_tests(args: &CargoArgs, ws: &Workspace) -> CliResult<(Vec<TestBinary>, BuildOutputs)> {
    let mut child = cargo_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CliError::BuildFailed(Some(format!("cannot start cargo: {e}"))))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut binaries = Vec::new();
    let mut outputs = BuildOutputs::default();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        let a = match message {
            Ok(Message::CompilerArtifact(a)) => a,
            Ok(Message::BuildScriptExecuted(b)) => {
                if let Some((name, _)) = ws.packages.get(&b.package_id.repr) {
                    outputs
                        .out_dirs
                        .insert(name.clone(), b.out_dir.into_std_path_buf());
                }
                continue;
            }
            _ => continue,
        };
        let member = ws.packages.get(&a.package_id.repr).map(|(n, _)| n.clone());
        if let Some(package) = &member
            && !a.profile.test
        {
            if let Some(exe) = &a.executable
                && a.target.kind.contains(&TargetKind::Bin)
            {
                outputs.bins.push((
                    package.clone(),
                    a.target.name.clone(),
                    exe.clone().into_std_path_buf(),
                ));
            }
            if a.target
                .kind
                .iter()
                .any(|k| matches!(k, TargetKind::DyLib | TargetKind::CDyLib))
            {
                outputs.dylibs.extend(
                    a.filenames
                        .iter()
                        .filter(|f| f.extension() == Some("so"))
                        .map(|f| f.clone().into_std_path_buf()),
                );
            }
        }
        let Some(exe) = a.executable.filter(|_| a.profile.test) else {
            continue;
        };
        let package_dir = a
            .manifest_path
            .parent()
            .map(|p| p.as_std_path().to_path_buf())
            .unwrap_or_else(|| ws.root.clone());
        let (name, version) = ws
            .packages
            .get(&a.package_id.repr)
            .cloned()
            .unwrap_or_else(|| (a.target.name.clone(), String::new()));
        let kind = a.target.kind.first().cloned().unwrap_or(TargetKind::Lib);
        let binary_id = match kind {
            TargetKind::Lib
            | TargetKind::RLib
            | TargetKind::DyLib
            | TargetKind::CDyLib
            | TargetKind::StaticLib
            | TargetKind::ProcMacro => name.clone(),
            TargetKind::Test => format!("{name}::{}", a.target.name),
            TargetKind::Bin => format!("{name}::bin/{}", a.target.name),
            TargetKind::Example => format!("{name}::example/{}", a.target.name),
            TargetKind::Bench => format!("{name}::bench/{}", a.target.name),
            _ => format!("{name}::{}", a.target.name),
        };
        binaries.push(TestBinary {
            binary_id,
            package: name,
            package_version: version,
            executable: exe.into_std_path_buf(),
            package_dir,
        });
    }
    let status = child
        .wait()
        .map_err(|e| CliError::BuildFailed(Some(format!("cargo did not finish: {e}"))))?;
    if !status.success() {
        return Err(CliError::BuildFailed(None));
    }
    binaries.sort_by(|a, b| a.binary_id.cmp(&b.binary_id));
    binaries.dedup_by(|a, b| a.binary_id == b.binary_id);
    outputs.bins.sort();
    outputs.bins.dedup();
    outputs.dylibs.sort();
    outputs.dylibs.dedup();
    Ok((binaries, outputs))
}
