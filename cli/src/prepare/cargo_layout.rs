//! A Cargo suite in a bundle: the workspace's files under `ws/`, and under `target/` what the tests
//! need of the target dir at the same relative paths (test binaries, the workspace's binaries
//! beside them, build scripts' `OUT_DIR`s, dynamic libraries). Each binary of the spec names these
//! paths with the variables `cargo test` and nextest give (`CARGO_BIN_EXE_<name>`, `OUT_DIR`…);
//! the agent turns them into the paths its tests see.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use testfleet_bundle::BundleEntry;
use testfleet_model::{Binary, OriginTree, Runner};

use crate::cargo::{BuildOutputs, TestBinary, Workspace};

/// The bundle's top directory for the workspace's files.
pub const WS: &str = "ws";
/// The bundle's top directory for build outputs, laid out as the target dir.
pub const TARGET: &str = "target";

pub struct CargoLayout<'a> {
    pub ws: &'a Workspace,
    pub outputs: &'a BuildOutputs,
    /// Paths relative to the bundle (a remote run), or the files themselves (a local run).
    pub bundled: bool,
}

impl CargoLayout<'_> {
    /// A file of the target dir as the spec names it.
    fn target_path(&self, p: &Path) -> String {
        if !self.bundled {
            return p.display().to_string();
        }
        match p.strip_prefix(&self.ws.target_dir) {
            Ok(rel) => format!("{TARGET}/{}", rel.display()),
            // Built elsewhere (an odd `--target-dir` setup): kept apart, by file name.
            Err(_) => format!(
                "{TARGET}/.outside/{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            ),
        }
    }

    /// A directory of the workspace as the spec names it.
    fn ws_path(&self, p: &Path) -> String {
        if !self.bundled {
            return p.display().to_string();
        }
        match p.strip_prefix(&self.ws.root) {
            Ok(rel) if rel.as_os_str().is_empty() => WS.to_owned(),
            Ok(rel) => format!("{WS}/{}", rel.display()),
            Err(_) => format!(
                "{WS}/.packages/{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            ),
        }
    }

    /// A test binary as the spec names it, with the environment `cargo test` gives its tests.
    pub fn binary(&self, b: &TestBinary) -> Binary {
        let mut env = BTreeMap::new();
        env.insert("CARGO_PKG_NAME".to_owned(), b.package.clone());
        env.insert("CARGO_PKG_VERSION".to_owned(), b.package_version.clone());
        let mut path_env = BTreeMap::new();
        for (package, name, exe) in &self.outputs.bins {
            if *package == b.package {
                let p = self.target_path(exe);
                path_env.insert(format!("CARGO_BIN_EXE_{name}"), p.clone());
                path_env.insert(format!("NEXTEST_BIN_EXE_{name}"), p);
            }
        }
        if let Some(out) = self.outputs.out_dirs.get(&b.package) {
            path_env.insert("OUT_DIR".to_owned(), self.target_path(out));
        }
        path_env.insert(
            "CARGO_TARGET_TMPDIR".to_owned(),
            self.target_path(&self.ws.target_dir.join("tmp")),
        );
        let mut library_path: Vec<String> = self
            .outputs
            .dylibs
            .iter()
            .filter_map(|d| d.parent())
            .map(|d| self.target_path(d))
            .collect();
        library_path.sort();
        library_path.dedup();
        Binary {
            binary_id: b.binary_id.as_str().into(),
            path: self.target_path(&b.executable),
            cwd: self.ws_path(&b.package_dir),
            env,
            services: vec![],
            runner: Runner::Libtest,
            path_env,
            library_path,
        }
    }

    /// What of the target dir goes into the bundle for these test binaries.
    pub fn target_entries(&self, binaries: &[TestBinary]) -> std::io::Result<Vec<BundleEntry>> {
        let mut entries = vec![];
        let mut file = |p: &Path| {
            entries.push(BundleEntry {
                archive_path: self.target_path(p),
                source: p.to_path_buf(),
            })
        };
        for b in binaries {
            file(&b.executable);
        }
        for (_, _, exe) in &self.outputs.bins {
            file(exe);
        }
        for d in &self.outputs.dylibs {
            file(d);
        }
        for dir in self.outputs.out_dirs.values() {
            let rel = PathBuf::from(self.target_path(dir));
            super::pack::collect_files(dir, &rel, &mut entries)?;
        }
        Ok(entries)
    }

    /// Where the bundle's trees were on this machine: agents show them there.
    pub fn origin(&self) -> Vec<OriginTree> {
        vec![
            OriginTree {
                bundle_dir: WS.into(),
                path: lexical(&self.ws.root),
            },
            OriginTree {
                bundle_dir: TARGET.into(),
                path: lexical(&self.ws.target_dir),
            },
        ]
    }
}

/// `path` without `.` and `..` (cargo reports a `CARGO_TARGET_DIR` of `dir/../target` as given),
/// resolved by its words: an agent has none of the directories a `..` would pass through.
pub fn lexical(path: &Path) -> String {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.display().to_string()
}
