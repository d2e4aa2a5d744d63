//! Names for the temporary files of bundle stores (the coordinator's, an agent's cache): unique in
//! this process (a counter) and across processes (its id), so that uploads or downloads at once,
//! agents sharing a cache dir, or a process restarted over an old one's leftovers never write into
//! the same file.

use std::sync::atomic::{AtomicU64, Ordering};

/// `<pid>-<n>`: a name part no other temporary file has.
pub fn unique_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
