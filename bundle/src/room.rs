//! Free space on the filesystem a directory is on. Bundles, agents' work dirs and the
//! coordinator's data dir all fill disks; both sides stop taking more below a minimum instead of
//! failing half-way through a write.

use std::path::Path;

/// Bytes an unprivileged process may still write on `dir`'s filesystem.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs writes the struct it is given; the path is NUL-terminated.
    if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Bytes as MiB, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// `dir` and what is free there, for messages.
pub fn describe(dir: &Path) -> String {
    match free_bytes(dir) {
        Ok(free) => format!("{} has {:.1} MiB free", dir.display(), mib(free)),
        Err(e) => format!("{}: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_described() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(describe(dir.path()).contains("MiB free"));
        let gone = dir.path().join("gone");
        assert!(free_bytes(&gone).is_err());
        assert!(describe(&gone).contains("gone"));
    }
}
