//! The agent's bundle cache: each digest is fetched once, verified, and laid out in its own
//! directory (from its manifest's files, `bundle_manifest`, or from one archive,
//! `bundle_archive`); concurrent leases for the same digest wait for the one fetch. Agents may
//! share a cache dir (CI jobs on one machine): each fetches and lays out under names of its own,
//! and the first to finish puts the bundle in place.
//!
//! Bundles unused for the retention period are removed ([`BundleCache::collect`]): every run of a
//! new revision brings a bundle, and an agent that lives for months would fill its disk. A bundle
//! counts as used (its directory's modification time) when a lease finds it and, for as long as a
//! lease holds it, at every removal pass; a held bundle is never removed by its own agent. The
//! cache's lock file (`bundles.lock` beside it) keeps a removal from crossing a lease that is
//! finding a bundle or its files, in this agent or another sharing the dir. The removal pass then
//! removes the cached files no kept bundle links ([`FileCache::collect`]).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use testfleet_bundle::layout::LinkMode;
use testfleet_bundle::temp_name::unique_suffix;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_security::AuthChannel;
use tokio::sync::Mutex;

pub use crate::bundle_error::CacheError;
use crate::bundle_files::FileCache;
use crate::{bundle_archive, bundle_manifest};

/// How long a bundle no lease has needed stays by default. Short: the coordinator keeps bundles
/// for days, and downloading one again costs far less than a full disk.
pub const DEFAULT_RETENTION_HOURS: u32 = 24;
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(DEFAULT_RETENTION_HOURS as u64 * 3600);

/// How often old bundles are looked for, after the pass at start. Each pass also marks the
/// bundles held by running leases as used: far more often than the shortest retention (an hour),
/// so another agent sharing the dir never sees them as old.
const COLLECT_EVERY: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct BundleCache {
    dir: PathBuf,
    /// The files of bundles of content-addressed files, and how layouts take them.
    files: FileCache,
    link: LinkMode,
    locks: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
    /// The bundles this agent's leases hold, with how many hold each: never removed, and marked
    /// as used at every removal pass, however long their leases last.
    in_use: InUseCounts,
}

type InUseCounts = Arc<std::sync::Mutex<HashMap<String, usize>>>;

/// A lease's hold on a bundle, from before it is looked for until the lease ends (dropped).
pub struct InUse {
    counts: InUseCounts,
    digest: String,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("in-use lock");
        if let Some(n) = counts.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.digest);
            }
        }
    }
}

impl BundleCache {
    /// A cache in `dir`, taking the files of bundles of files from `files`. Layouts link those
    /// files (`LinkMode::Hardlink`) only where tests never write to them: under a sandbox, whose
    /// overlays keep the bundle as their lower layer.
    pub fn new(dir: PathBuf, files: FileCache, link: LinkMode) -> Self {
        BundleCache {
            dir,
            files,
            link,
            locks: Arc::default(),
            in_use: Arc::default(),
        }
    }

    /// Where bundles are kept.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The extracted root of bundle `digest`, downloading it first if needed, and a hold on it
    /// that the lease keeps until its last test is done.
    /// `written` says that something outside the sandbox writes in the bundle (a compose stack
    /// runs with it as its project directory): its files are then never links to the cache's.
    pub async fn ensure(
        &self,
        digest: &str,
        client: &mut CoordinatorClient<AuthChannel>,
        written: bool,
    ) -> Result<(PathBuf, InUse), CacheError> {
        if !testfleet_model::spec::is_sha256_hex(digest) {
            return Err(CacheError::BadDigest(digest.chars().take(80).collect()));
        }
        // Held before the bundle is looked for: a removal pass of this agent either ran before
        // (and the bundle is fetched again) or sees the hold.
        let held = self.hold(digest);
        let link = if written {
            LinkMode::CloneOrCopy
        } else {
            self.link
        };
        Ok((self.fetch(digest, client, link).await?, held))
    }

    fn hold(&self, digest: &str) -> InUse {
        *self
            .in_use
            .lock()
            .expect("in-use lock")
            .entry(digest.to_owned())
            .or_default() += 1;
        InUse {
            counts: self.in_use.clone(),
            digest: digest.to_owned(),
        }
    }

    async fn fetch(
        &self,
        digest: &str,
        client: &mut CoordinatorClient<AuthChannel>,
        link: LinkMode,
    ) -> Result<PathBuf, CacheError> {
        let root = self.dir.join(digest);
        let lock = self
            .locks
            .lock()
            .await
            .entry(digest.to_owned())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        if self.find(&root).await.map_err(io(&self.lock_path()))? {
            return Ok(root);
        }
        // Names of this process and this download: another agent on the same dir has its own.
        let own = format!("{digest}-{}", unique_suffix());
        let staging = self.dir.join(format!(".extract-{own}"));
        // Held until the bundle is laid out: no removal pass takes a cached file it links.
        let held = self.lock_shared().await.map_err(io(&self.lock_path()))?;
        let laid = bundle_manifest::fetch(digest, client, &self.files, &staging, link).await;
        drop(held);
        match laid {
            Ok(Some(f)) => tracing::info!(
                %digest,
                files = f.files,
                downloaded = f.downloaded,
                downloaded_bytes = f.downloaded_bytes,
                received_bytes = f.received_bytes,
                linked = f.layout.linked,
                cloned = f.layout.cloned,
                copied = f.layout.copied,
                "bundle downloaded (only the files not cached)"
            ),
            Ok(None) => {
                let archive = self.dir.join(format!(".download-{own}"));
                bundle_archive::fetch(digest, client, &archive, &staging).await?
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
        let placed = root.clone();
        self.under_lock(false, move || match std::fs::rename(&staging, &placed) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                // Another agent sharing this dir put the same (verified) bundle there first.
                if placed.is_dir() {
                    mark_used(&placed);
                    Ok(())
                } else {
                    Err(e)
                }
            }
        })
        .await
        .map_err(io(&root))?;
        tracing::info!(%digest, root = %root.display(), "bundle extracted");
        Ok(root)
    }

    /// Whether the bundle at `root` is here; if it is, it is marked as used, under the lock, so
    /// that no removal pass takes it from the lease about to use it.
    async fn find(&self, root: &Path) -> std::io::Result<bool> {
        let root = root.to_path_buf();
        self.under_lock(false, move || {
            let here = root.is_dir();
            if here {
                mark_used(&root);
            }
            Ok(here)
        })
        .await
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.with_extension("lock")
    }

    /// The cache's lock file, held shared until it is dropped.
    async fn lock_shared(&self) -> std::io::Result<File> {
        let path = self.lock_path();
        tokio::task::spawn_blocking(move || lock_file(&path, false))
            .await
            .expect("cache lock task does not panic")
    }

    /// Runs `f` holding the cache's lock file, shared (a lease finding or placing a bundle) or
    /// exclusive (a removal pass), on a blocking thread.
    async fn under_lock<T: Send + 'static>(
        &self,
        exclusive: bool,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let path = self.lock_path();
        tokio::task::spawn_blocking(move || {
            let _held = lock_file(&path, exclusive)?;
            f()
        })
        .await
        .expect("cache lock task does not panic")
    }

    /// Removes the bundles no lease has needed since `cutoff`, and downloads and extractions left
    /// unfinished before it (an agent killed midway). The bundles this agent's leases hold are
    /// marked as used instead, so that other agents sharing the dir keep them too. Then the
    /// cached files of bundles of files that no layout links and none has used since `cutoff`.
    pub async fn collect(&self, cutoff: SystemTime) -> std::io::Result<Collected> {
        let dir = self.dir.clone();
        let in_use = self.in_use.clone();
        let doomed = self
            .under_lock(true, move || {
                let held: Vec<String> = in_use
                    .lock()
                    .expect("in-use lock")
                    .keys()
                    .cloned()
                    .collect();
                for digest in &held {
                    let root = dir.join(digest);
                    if root.is_dir() {
                        mark_used(&root);
                    }
                }
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                };
                let mut doomed = Vec::new();
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    let bundle = testfleet_model::spec::is_sha256_hex(name);
                    let trash = name.starts_with(".trash-");
                    let leftover = name.starts_with(".download-") || name.starts_with(".extract-");
                    if !(bundle || trash || leftover) {
                        continue; // not ours: left alone
                    }
                    if bundle && held.iter().any(|d| d == name) {
                        continue;
                    }
                    let old = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t < cutoff);
                    if !(old || trash) {
                        continue;
                    }
                    if bundle {
                        // Out of sight first, under the lock: a tree half removed must never
                        // look like a bundle to a lease.
                        let gone = dir.join(format!(".trash-{name}-{}", unique_suffix()));
                        std::fs::rename(entry.path(), &gone)?;
                        doomed.push((gone, true));
                    } else {
                        doomed.push((entry.path(), false));
                    }
                }
                Ok(doomed)
            })
            .await?;
        // The removal itself, which can take a while, holds no lock. Another agent sharing the
        // dir may be removing the same trash (one it removed first counts as removed here too):
        // an entry that fails is left to a later pass, and the rest still go.
        let bundles = tokio::task::spawn_blocking(move || {
            let mut bundles = 0;
            for (path, bundle) in doomed {
                match testfleet_bundle::remove(&path) {
                    Ok(()) => bundles += usize::from(bundle),
                    Err(e) => tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "could not remove an old cached bundle; a later pass tries again"
                    ),
                }
            }
            bundles
        })
        .await
        .expect("cache removal task does not panic");
        // Then the files no layout links any more (the bundles just removed let go of theirs),
        // under the lock: a lease laying a bundle out holds it shared from finding its files on.
        let files = self.files.clone();
        let files = self.under_lock(true, move || files.collect(cutoff)).await?;
        Ok(Collected { bundles, files })
    }
}

/// Opens the lock file at `path` and locks it, shared or exclusive, waiting for it; unlocked when
/// the file is closed.
fn lock_file(path: &Path, exclusive: bool) -> std::io::Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    flock(
        &file,
        if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        },
    )?;
    Ok(file)
}

/// What one removal pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub bundles: usize,
    pub files: usize,
}

/// Takes `op` (`LOCK_SH` or `LOCK_EX`) on `file`, waiting for it; released when the file is closed.
fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor `file` owns for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Marks a bundle as used now, so that it is kept another retention period. A bundle whose mark
/// fails is still used; its retention only counts from before.
fn mark_used(root: &Path) {
    if let Err(e) = File::open(root).and_then(|d| d.set_modified(SystemTime::now())) {
        tracing::warn!(root = %root.display(), error = %e, "could not mark a bundle as used");
    }
}

/// The periodic removal of old bundles; stopped when dropped.
pub struct Collector(tokio::task::JoinHandle<()>);

impl Drop for Collector {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes bundles unused for `retention` at once and then every 10 minutes, until the returned
/// collector is dropped. Failures are logged: the cache still works with old bundles in it.
pub fn collect_periodically(cache: BundleCache, retention: Duration) -> Collector {
    Collector(tokio::spawn(async move {
        let mut every = tokio::time::interval(COLLECT_EVERY);
        loop {
            every.tick().await;
            let cutoff = SystemTime::now()
                .checked_sub(retention)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            match cache.collect(cutoff).await {
                Ok(Collected {
                    bundles: 0,
                    files: 0,
                }) => {}
                Ok(Collected { bundles, files }) => tracing::info!(
                    bundles,
                    files,
                    retention_hours = retention.as_secs() / 3600,
                    "removed cached bundles and bundle files no lease has needed within the retention period"
                ),
                Err(e) => tracing::warn!(
                    dir = %cache.dir.display(),
                    error = %e,
                    "could not remove old cached bundles"
                ),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn test_cache(dir: &Path) -> BundleCache {
        let files = FileCache::new(dir.with_file_name("bundle-files"));
        BundleCache::new(dir.to_path_buf(), files, LinkMode::CloneOrCopy)
    }

    fn digest(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    /// A directory (or, with `file`, a file) in the cache last modified `age` ago.
    fn entry(cache: &Path, name: &str, age: Duration, file: bool) -> PathBuf {
        let path = cache.join(name);
        if file {
            std::fs::write(&path, b"x").unwrap();
        } else {
            std::fs::create_dir_all(path.join("bin")).unwrap();
            std::fs::write(path.join("bin/test"), b"x").unwrap();
        }
        File::open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
        path
    }

    #[tokio::test]
    async fn bundles_unused_since_the_cutoff_and_old_leftovers_go_the_rest_stays() {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("bundles");
        std::fs::create_dir_all(&dir).unwrap();
        let cache = test_cache(&dir);
        let old = entry(&dir, &digest('a'), 3 * DAY, false);
        let fresh = entry(&dir, &digest('b'), Duration::ZERO, false);
        let used_again = entry(&dir, &digest('c'), 3 * DAY, false);
        let old_download = entry(&dir, ".download-x-1-0", 3 * DAY, true);
        let fresh_extract = entry(&dir, ".extract-y-1-1", Duration::ZERO, false);
        let trash = entry(&dir, ".trash-z-1-2", Duration::ZERO, false);
        let not_ours = entry(&dir, "notes", 3 * DAY, true);

        // A lease finds the old bundle `c`: from then on it counts as used now.
        assert!(cache.find(&used_again).await.unwrap());
        assert!(!cache.find(&dir.join(digest('d'))).await.unwrap());

        let removed = cache.collect(SystemTime::now() - DAY).await.unwrap();
        assert_eq!(removed.bundles, 1, "one bundle removed");
        for gone in [&old, &old_download, &trash] {
            assert!(!gone.exists(), "{} should be gone", gone.display());
        }
        for kept in [&fresh, &used_again, &fresh_extract, &not_ours] {
            assert!(kept.exists(), "{} should be kept", kept.display());
        }
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with(".trash-")),
            "nothing left half removed: {names:?}"
        );
        assert!(
            work.path().join("bundles.lock").is_file(),
            "the lock lives beside the cache, not in it"
        );
    }

    #[tokio::test]
    async fn a_bundle_a_lease_holds_is_kept_and_marked_used_until_the_lease_lets_go() {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("bundles");
        std::fs::create_dir_all(&dir).unwrap();
        let cache = test_cache(&dir);
        let held = entry(&dir, &digest('a'), 3 * DAY, false);
        let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();

        // A lease that has lasted longer than the retention still holds its bundle.
        let lease = cache.hold(&digest('a'));
        let second = cache.hold(&digest('a'));
        assert_eq!(
            cache
                .collect(SystemTime::now() - DAY)
                .await
                .unwrap()
                .bundles,
            0
        );
        assert!(held.exists());
        assert!(
            modified(&held) > SystemTime::now() - DAY,
            "marked as used, for other agents sharing the dir"
        );

        drop(lease);
        let future = SystemTime::now() + DAY;
        assert_eq!(
            cache.collect(future).await.unwrap().bundles,
            0,
            "still held once"
        );
        drop(second);
        assert_eq!(
            cache.collect(future).await.unwrap().bundles,
            1,
            "let go: old enough to go"
        );
        assert!(!held.exists());
    }

    #[tokio::test]
    async fn a_missing_cache_dir_has_nothing_to_collect() {
        let work = tempfile::tempdir().unwrap();
        let cache = test_cache(&work.path().join("bundles"));
        assert_eq!(
            cache.collect(SystemTime::now()).await.unwrap(),
            Collected::default()
        );
    }
}
