//! Paths given on the command line, made absolute without touching the
//! disk, so that "is this under --out" compares like with like.

use std::path::{Component, Path, PathBuf};

use crate::error::{NfsrootError, Result};

/// `p` made absolute (against the current directory), with `.` and `..`
/// resolved lexically.
pub fn absolute(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p)
        .map_err(|e| NfsrootError::io(format!("resolving {}", p.display()), e))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}
