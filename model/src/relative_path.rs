//! Paths a suite's manifest may name (included files, build contexts, excluded globs): relative,
//! and never leaving the directory they are relative to.

use std::path::Path;

/// Relative, not empty, and made of plain names (and `.`) only: no `..`, no root.
pub(crate) fn is_relative_inside(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && !path.is_absolute()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
}
