//! Writing a file so that readers see the old one or the new one, never a
//! part: a temporary name beside it, fsync, rename.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{NfsrootError, Result};

/// The temporary name `path` is written under before its rename.
pub fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.nfsroot-tmp.{}", std::process::id()))
}

/// Write `contents` to `path` atomically: readers see the old file or the
/// new one, never a partial one, even if this process dies half-way.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let io = |what: &str, e| NfsrootError::io(format!("{what} {}", path.display()), e);
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| io("creating directory for", e))?;
    let tmp = temp_name(path);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io("writing", e));
    }
    // Make the rename itself durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
