//! The checkpoint directory: SN numbering, locking and the atomic commit.
//!
//! A checkpoint SN exists when `global_v<SN>.bin` exists. Files are written
//! into `.tmp-v<SN>/`, renamed into the directory one by one, and
//! `global_v<SN>.bin` is renamed last: a crash before that leaves only files
//! of an SN without a global file, which the next checkpoint removes.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{ChkptError, Result};

/// The default root of all checkpoints.
pub const DEFAULT_ROOT: &str = "/var/chkpt";

/// The directory of application `app` under `root`.
pub fn app_dir(root: &Path, app: i32) -> PathBuf {
    root.join(app.to_string())
}

/// SNs present (committed) in `dir`, ascending.
pub fn list_sns(dir: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| {
                let n = e.ok()?.file_name().into_string().ok()?;
                n.strip_prefix("global_v")?
                    .strip_suffix(".bin")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// An exclusive lock on an application directory (flock, released on drop).
pub struct DirLock {
    _f: File,
}

pub fn lock(dir: &Path) -> Result<DirLock> {
    let p = dir.join(".lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| ChkptError::io(&p, e))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } < 0 {
        return Err(ChkptError::io(&p, std::io::Error::last_os_error()));
    }
    Ok(DirLock { _f: f })
}

/// Create `root/app` (0700, owned by `uid`) if needed.
pub fn prepare_dir(root: &Path, app: i32, uid: u32, gid: u32) -> Result<PathBuf> {
    if !root.exists() {
        std::fs::create_dir_all(root).map_err(|e| ChkptError::io(root, e))?;
        let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755));
    }
    let dir = app_dir(root, app);
    if !dir.exists() {
        std::fs::create_dir(&dir).map_err(|e| ChkptError::io(&dir, e))?;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ChkptError::io(&dir, e))?;
    chown(&dir, uid, gid)?;
    Ok(dir)
}

pub fn chown(p: &Path, uid: u32, gid: u32) -> Result<()> {
    // Only root can give files away; a user's files are already theirs.
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| ChkptError::io(p, e))
}

/// Remove leftovers of interrupted checkpoints: temporary directories and
/// files of SNs that never got their global file.
pub fn cleanup(dir: &Path) {
    let committed = list_sns(dir);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-v") {
            let _ = std::fs::remove_dir_all(e.path());
            continue;
        }
        let sn = name
            .rsplit_once("_v")
            .and_then(|(_, r)| r.split('.').next())
            .and_then(|s| s.parse::<u32>().ok());
        if let Some(sn) = sn {
            if !committed.contains(&sn) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Move every file of `tmp` into `dir`, the global file last, then drop `tmp`.
pub fn commit(tmp: &Path, dir: &Path, global_name: &str) -> Result<()> {
    let rd = std::fs::read_dir(tmp).map_err(|e| ChkptError::io(tmp, e))?;
    for e in rd.flatten() {
        let name = e.file_name();
        if name.to_string_lossy() == global_name {
            continue;
        }
        let to = dir.join(&name);
        std::fs::rename(e.path(), &to).map_err(|err| ChkptError::io(&to, err))?;
    }
    let to = dir.join(global_name);
    std::fs::rename(tmp.join(global_name), &to).map_err(|e| ChkptError::io(&to, e))?;
    std::fs::remove_dir(tmp).map_err(|e| ChkptError::io(tmp, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_and_cleanup() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join(".tmp-v1");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join("task_1_v1.bin"), b"x").unwrap();
        std::fs::write(tmp.join("global_v1.bin"), b"x").unwrap();
        commit(&tmp, d.path(), "global_v1.bin").unwrap();
        assert_eq!(list_sns(d.path()), vec![1]);
        // an interrupted SN 2: files without a global file
        std::fs::write(d.path().join("task_1_v2.bin"), b"x").unwrap();
        std::fs::create_dir(d.path().join(".tmp-v2")).unwrap();
        cleanup(d.path());
        assert!(!d.path().join("task_1_v2.bin").exists());
        assert!(!d.path().join(".tmp-v2").exists());
        assert!(d.path().join("task_1_v1.bin").exists());
    }
}
