//! The helper's view of the filesystem, made once per namespace: a private `/tmp`, the agent's own
//! places covered, the bundle's trees as writable overlays at their origin paths, and a `/proc` that
//! shows the namespace's processes only.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::protocol::Setup;

/// Makes the mounts `setup` asks for; runs as process 1 of the new namespaces.
pub fn prepare(setup: &Setup) -> Result<(), String> {
    // Nothing mounted here may reach the agent's own namespace.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    // Everything mounted below comes from paths that the mounts may cover (a work dir under
    // `/tmp`, an origin inside a hidden directory): open them all first, mount through the
    // descriptors.
    let tmp = open_path(&setup.tmp)?;
    let layers = setup
        .overlays
        .iter()
        .map(|o| {
            Ok((
                open_path(&o.lower)?,
                open_path(&o.upper)?,
                open_path(&o.work)?,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    mount(
        Some(&fd_path(&tmp)),
        Path::new("/tmp"),
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    for path in &setup.hide {
        hide(path)?;
    }
    // Ours to write in without touching the agent's filesystem.
    let mut ours: Vec<PathBuf> = vec!["/tmp".into()];
    let mut order: Vec<usize> = (0..setup.overlays.len()).collect();
    order.sort_by_key(|i| setup.overlays[*i].target.components().count());
    for i in order {
        let o = &setup.overlays[i];
        let (lower, upper, work) = &layers[i];
        mount_point(&o.target, &mut ours)?;
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            fd_path(lower).display(),
            fd_path(upper).display(),
            fd_path(work).display()
        );
        mount(
            Some(Path::new("overlay")),
            &o.target,
            Some("overlay"),
            0,
            Some(&options),
        )
        .map_err(|e| format!("cannot show the bundle at {}: {e}", o.target.display()))?;
        ours.push(o.target.clone());
    }
    mount(
        Some(Path::new("proc")),
        Path::new("/proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(|e| format!("cannot mount the namespace's /proc: {e}"))
}

/// Covers a directory with an empty read-only tmpfs, a file with `/dev/null`.
fn hide(path: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let covered = if meta.is_dir() {
        mount(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            Some("size=4k,mode=0755"),
        )
    } else {
        mount(
            Some(Path::new("/dev/null")),
            path,
            None,
            libc::MS_BIND,
            None,
        )
    };
    covered.map_err(|e| format!("cannot hide {}: {e}", path.display()))
}

/// Makes sure `target` is a directory, without creating anything on the agent's filesystem: a
/// missing path is made under a tmpfs laid over its nearest existing ancestor, which shows that
/// ancestor's entries again through bind mounts.
fn mount_point(target: &Path, ours: &mut Vec<PathBuf>) -> Result<(), String> {
    if target.is_dir() {
        return Ok(());
    }
    let mut existing = target;
    while !existing.is_dir() {
        existing = existing
            .parent()
            .ok_or_else(|| format!("{} has no existing parent", target.display()))?;
    }
    let existing = existing.to_path_buf();
    if !ours.iter().any(|o| existing.starts_with(o)) {
        expose(&existing)?;
        ours.push(existing);
    }
    std::fs::create_dir_all(target)
        .map_err(|e| format!("cannot make the mount point {}: {e}", target.display()))
}

/// Lays a writable tmpfs over `dir` that still shows everything `dir` held.
fn expose(dir: &Path) -> Result<(), String> {
    if dir.parent().is_none() {
        return Err("cannot make a mount point directly under `/`".into());
    }
    let fail = |e: std::io::Error| format!("cannot read {}: {e}", dir.display());
    let original = open_path(dir)?;
    let mode = std::fs::metadata(dir).map_err(fail)?;
    let entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(fail)?
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    use std::os::unix::fs::PermissionsExt;
    mount(
        Some(Path::new("tmpfs")),
        dir,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&format!("mode={:o}", mode.permissions().mode() & 0o7777)),
    )?;
    for e in entries {
        let name = e.file_name();
        let (from, to) = (fd_path(&original).join(&name), dir.join(&name));
        let kind = e.file_type().map_err(fail)?;
        let made = if kind.is_symlink() {
            std::fs::read_link(&from).and_then(|t| std::os::unix::fs::symlink(t, &to))
        } else if kind.is_dir() {
            std::fs::create_dir(&to)
        } else {
            std::fs::File::create(&to).map(drop)
        };
        made.map_err(|e| format!("cannot make {}: {e}", to.display()))?;
        // A link is made again as it was; everything else (directories, files, sockets such as
        // the Docker engine's) is the original, bound in place.
        if !kind.is_symlink() {
            mount(Some(&from), &to, None, libc::MS_BIND | libc::MS_REC, None)?;
        }
    }
    Ok(())
}

/// Opens `path` with `O_PATH`: a directory or file to mount from, readable or not.
fn open_path(path: &Path) -> Result<OwnedFd, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// The path through which the kernel reaches what `fd` opened, even once it is covered.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let c = |s: &str| CString::new(s).map_err(|_| format!("`{s}` holds a NUL byte"));
    let source = source.map(|s| c(&s.to_string_lossy())).transpose()?;
    let target_c = c(&target.to_string_lossy())?;
    let fstype = fstype.map(c).transpose()?;
    let data = data.map(c).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if r != 0 {
        return Err(format!(
            "mount on {} failed: {}",
            target.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
