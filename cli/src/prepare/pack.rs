//! A run's bundle's size, said and checked against `--max-bundle-bytes` (a refusal names the
//! largest directories), and packing it into one archive in this run's own directory under
//! `target/testfleet/bundles`, for coordinators that take only archives.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use testfleet_bundle::BundleEntry;

use crate::error::{CliError, CliResult};

/// Says how big the bundle is, and refuses one over `max_bytes`, naming its largest directories.
pub fn check_size(entries: &[BundleEntry], max_bytes: u64) -> CliResult<()> {
    let size = measure(entries)?;
    eprintln!("bundle: {} files, {}", size.files, human(size.bytes));
    if size.bytes > max_bytes {
        return Err(CliError::Bundle(format!(
            "the bundle holds {} in {} files, more than --max-bundle-bytes ({}); its largest directories:\n{}\n\
             (leave files out with `[bundle] exclude = [\"GLOB\"]` in testfleet.toml, or add them to .gitignore)",
            human(size.bytes),
            size.files,
            human(max_bytes),
            largest_dirs(&size.per_file, 5)
                .iter()
                .map(|(d, b)| format!("  {:>10}  {d}", human(*b)))
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    Ok(())
}

/// Packs `entries` into a content-addressed archive under `dir` (the workspace's packing dir).
pub async fn pack(
    entries: Vec<BundleEntry>,
    dir: &Path,
) -> CliResult<testfleet_bundle::PackedBundle> {
    // A directory of this run's own: runs of the same workspace at once (against one coordinator
    // or several) each pack, send and remove their own archive, whatever the others do.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = dir.to_path_buf();
    let own = dir.join(format!("run-{}-{nanos}", std::process::id()));
    tokio::task::spawn_blocking(move || {
        remove_stale(&dir);
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

struct Size {
    files: usize,
    bytes: u64,
    per_file: Vec<(String, u64)>,
}

fn measure(entries: &[BundleEntry]) -> CliResult<Size> {
    let mut per_file = Vec::with_capacity(entries.len());
    for e in entries {
        let len = std::fs::metadata(&e.source)
            .map_err(|err| {
                CliError::Bundle(format!("cannot bundle {}: {err}", e.source.display()))
            })?
            .len();
        per_file.push((e.archive_path.clone(), len));
    }
    Ok(Size {
        files: entries.len(),
        bytes: per_file.iter().map(|(_, b)| b).sum(),
        per_file,
    })
}

/// The `n` largest directories, each with everything under it, leaving out a directory whose
/// bytes are nearly all in one listed subdirectory (that subdirectory says more).
fn largest_dirs(files: &[(String, u64)], n: usize) -> Vec<(String, u64)> {
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for (path, bytes) in files {
        let mut dir = Path::new(path).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            *totals.entry(d.display().to_string()).or_default() += bytes;
            dir = d.parent();
        }
    }
    let mut sorted: Vec<(String, u64)> = totals.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut picked: Vec<(String, u64)> = vec![];
    for (dir, bytes) in sorted.iter() {
        let dominated = sorted.iter().any(|(sub, b)| {
            sub.starts_with(&format!("{dir}/")) && *b as f64 >= 0.9 * *bytes as f64
        });
        if !dominated {
            picked.push((dir.clone(), *bytes));
        }
        if picked.len() == n {
            break;
        }
    }
    picked
}

pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

/// Packed bundles older than this in `target/testfleet/bundles` were left by a run that was killed
/// before it could remove its own; a day is far longer than any run takes to upload.
const STALE_BUNDLE_AGE: Duration = Duration::from_secs(86_400);

/// Removes what runs killed midway left in `dir` (the workspace's packing dir) a day ago or more.
pub fn remove_stale(dir: &Path) {
    remove_stale_bundles(dir, SystemTime::now() - STALE_BUNDLE_AGE);
}

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
pub fn remove_packed(path: &Path) {
    if let Err(e) = testfleet_bundle::remove(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a packed bundle");
    }
}

/// The files under `src` (a file or a directory), at `rel` (their path in the bundle, top
/// directory included). Linked directories are not followed (a link loop would never end);
/// linked files are.
pub fn collect_files(src: &Path, rel: &Path, out: &mut Vec<BundleEntry>) -> std::io::Result<()> {
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
            archive_path: rel.display().to_string(),
            source: src.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_directories_are_the_most_telling_ones() {
        let files = vec![
            ("ws/assets/video/a.mp4".to_owned(), 900),
            ("ws/assets/video/b.mp4".to_owned(), 80),
            ("ws/src/lib.rs".to_owned(), 10),
            ("target/debug/deps/t".to_owned(), 500),
            ("target/debug/greet".to_owned(), 400),
        ];
        let got = largest_dirs(&files, 3);
        // `ws` and `ws/assets` are nearly all `ws/assets/video`; `target` is split.
        assert_eq!(
            got,
            [
                ("ws/assets/video".to_owned(), 980),
                ("target/debug".to_owned(), 900),
                ("target/debug/deps".to_owned(), 500),
            ]
        );
    }
}
