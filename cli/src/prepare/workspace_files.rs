//! The files a suite's tests may read: every file under its root that git would not ignore
//! (`.gitignore`, `.ignore`, `.git/info/exclude` and the global excludes, as the `ignore` crate's
//! walker applies them, also outside a git checkout), less the target dir, VCS and testfleet's
//! own directories and the manifest's `exclude` globs, plus what `include` names even if ignored.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use testfleet_bundle::BundleEntry;

/// Directories never bundled, at any depth.
const NEVER: &[&str] = &[".git", ".hg", ".svn", ".testfleet", "__pycache__"];

pub struct Selection<'a> {
    /// The tree to walk; its files go under `top/` in the bundle.
    pub root: &'a Path,
    pub top: &'a str,
    /// Absolute directories left out (the target dir).
    pub skip: Vec<PathBuf>,
    /// Globs relative to `root` left out.
    pub exclude: &'a [String],
    /// Files or directories relative to `root` bundled whatever the ignore rules say.
    pub include: &'a [PathBuf],
}

/// The bundle entries of `sel`, sorted by path.
pub fn collect(sel: &Selection<'_>) -> Result<Vec<BundleEntry>, String> {
    let exclude = globs(sel.exclude)?;
    let mut entries = vec![];
    let skip = sel.skip.clone();
    let walker = ignore::WalkBuilder::new(sel.root)
        .hidden(false)
        .parents(true)
        .ignore(true)
        .git_ignore(true)
        .git_global(true)
        .git_exclude(true)
        .require_git(false)
        .follow_links(false)
        .filter_entry(move |e| {
            let name = e.file_name().to_string_lossy();
            let is_dir = e.file_type().is_some_and(|t| t.is_dir());
            !(is_dir && (NEVER.contains(&name.as_ref()) || skip.iter().any(|s| e.path() == s)))
        })
        .build();
    for entry in walker {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", sel.root.display()))?;
        // Linked files are bundled as their contents; linked directories are not followed.
        let is_file = match entry.file_type() {
            Some(t) if t.is_file() => true,
            Some(t) if t.is_symlink() => std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()),
            _ => false,
        };
        if !is_file {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(sel.root)
            .expect("the walker stays under its root");
        if exclude.is_match(rel) {
            continue;
        }
        entries.push(BundleEntry {
            archive_path: format!("{}/{}", sel.top, rel.display()),
            source: entry.path().to_path_buf(),
        });
    }
    for inc in sel.include {
        let src = sel.root.join(inc);
        let rel = Path::new(sel.top).join(inc);
        super::pack::collect_files(&src, &rel, &mut entries)
            .map_err(|e| format!("cannot include {}: {e}", src.display()))?;
    }
    entries.sort_by(|a, b| a.archive_path.cmp(&b.archive_path));
    entries.dedup_by(|a, b| a.archive_path == b.archive_path);
    Ok(entries)
}

fn globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p).map_err(|e| format!("bundle.exclude `{p}`: {e}"))?;
        b.add(glob);
        // A directory's glob leaves out everything under it too.
        if let Ok(under) = Glob::new(&format!("{}/**", p.trim_end_matches('/'))) {
            b.add(under);
        }
    }
    b.build().map_err(|e| format!("bundle.exclude: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(entries: &[BundleEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.archive_path.as_str()).collect()
    }

    #[test]
    fn git_ignored_files_target_and_vcs_dirs_stay_out_also_without_git() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in [
            "src/lib.rs",
            "tests/data/in.txt",
            ".config/nextest.toml",
            "target/debug/big",
            "custom-target/x",
            ".git/HEAD",
            "logs/run.log",
            "keep.log",
            "docs/huge.bin",
            "tests/data/written-1",
        ] {
            std::fs::create_dir_all(r.join(f).parent().unwrap()).unwrap();
            std::fs::write(r.join(f), "x").unwrap();
        }
        std::fs::write(
            r.join(".gitignore"),
            "/target\n*.log\n!keep.log\ntests/data/written-*\n",
        )
        .unwrap();
        let sel = Selection {
            root: r,
            top: "ws",
            skip: vec![r.join("custom-target")],
            exclude: &["docs".to_owned()],
            include: &[PathBuf::from("logs")],
        };
        let got = collect(&sel).unwrap();
        assert_eq!(
            names(&got),
            [
                "ws/.config/nextest.toml",
                "ws/.gitignore",
                "ws/keep.log",
                "ws/logs/run.log",
                "ws/src/lib.rs",
                "ws/tests/data/in.txt",
            ]
        );
    }
}
