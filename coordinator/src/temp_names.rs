//! Names for the stores' temporary files: unique within this process and across processes (its
//! id), so that uploads at once, or a coordinator restarted over an old one's leftovers, never
//! write into the same file.

use std::sync::atomic::{AtomicU64, Ordering};

/// A name part no other temporary file has: this process's id and a counter.
pub(crate) fn unique_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
