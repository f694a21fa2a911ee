//! The checkpoint directory: SN numbering, locking and the atomic commit.
//!
//! A checkpoint SN exists when `global_v<SN>.bin` exists. Files are written
//! into `.tmp-v<SN>/`, renamed into the directory one by one, and
//! `global_v<SN>.bin` is renamed last: a crash before that leaves only files
//! of an SN without a global file, which the next checkpoint removes.
//!
//! SN numbers are never used twice: an attempt that may have changed the
//! job's dirty-page trackers and did not commit, and an SN removed with
//! `checkpoint rm`, leave a tombstone `.dead-v<SN>`. The next SN can be
//! incremental on the last committed one only if no SN number came after
//! it: the trackers were last reset when that SN was taken
//! ([`History::baseline`]).
//!
//! `/var/chkpt/PID` belongs to the job's owner while root writes into it, so
//! every step goes through [`CheckedDir`] descriptors (see there why). The
//! temporary directory is root's (0700) until its files are moved out: the
//! user can rename it, but never put anything into it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::checked_dir::CheckedDir;
use crate::error::{ChkptError, Result};

/// The default root of all checkpoints.
pub const DEFAULT_ROOT: &str = "/var/chkpt";

const LOCK_NAME: &str = ".lock";
const DEAD_PREFIX: &str = ".dead-v";
const TMP_PREFIX: &str = ".tmp-v";

/// The directory of application `app` under `root`.
pub fn app_dir(root: &Path, app: i32) -> PathBuf {
    root.join(app.to_string())
}

/// The SN a file name of a checkpoint belongs to (`…_v<SN>.…`).
pub fn sn_of(name: &str) -> Option<u32> {
    name.rsplit_once("_v")
        .and_then(|(_, r)| r.split('.').next())
        .and_then(|s| s.parse().ok())
}

/// SNs committed in `dir`, ascending.
pub fn committed_sns(dir: &CheckedDir) -> Vec<u32> {
    let mut v: Vec<u32> = dir
        .entries()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| {
            let n = n.into_string().ok()?;
            n.strip_prefix("global_v")?
                .strip_suffix(".bin")?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// An exclusive lock on an application directory (flock, released on drop).
pub struct DirLock {
    _f: File,
}

pub fn lock(dir: &CheckedDir) -> Result<DirLock> {
    let f = dir.open_lock_file(LOCK_NAME)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } < 0 {
        return Err(ChkptError::io(
            dir.join(LOCK_NAME),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(DirLock { _f: f })
}

/// Open (creating it if needed) `root/app` for a job of `uid:gid`: a real
/// directory (never a symlink), owned by that user or by root, handed to
/// the user with mode 0700.
pub fn prepare_dir(root: &Path, app: i32, uid: u32, gid: u32) -> Result<CheckedDir> {
    if !root.exists() {
        std::fs::create_dir_all(root).map_err(|e| ChkptError::io(root, e))?;
        CheckedDir::open(root)?.set_owner(0, 0, 0o755)?;
    }
    let top = CheckedDir::open(root)?;
    let name = app.to_string();
    top.make_dir(&name, 0o700)?;
    let dir = top.open_dir(&name)?;
    let st = dir.stat()?;
    if st.st_uid != uid && st.st_uid != 0 {
        return Err(ChkptError::Permission(format!(
            "{} belongs to uid {}, not to the job's owner (uid {uid}): remove it first",
            dir.path().display(),
            st.st_uid
        )));
    }
    dir.set_owner(uid, gid, 0o700)?;
    Ok(dir)
}

/// The SN numbers a directory has seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct History {
    /// Committed SNs, ascending.
    pub committed: Vec<u32>,
    /// SNs removed or never committed (tombstones and leftovers), ascending.
    pub dead: Vec<u32>,
}

impl History {
    pub fn read(dir: &CheckedDir) -> Self {
        let committed = committed_sns(dir);
        let mut dead = Vec::new();
        for name in dir.entries().unwrap_or_default() {
            let Some(name) = name.to_str() else { continue };
            let sn = if let Some(r) = name.strip_prefix(DEAD_PREFIX) {
                r.parse().ok()
            } else if let Some(r) = name.strip_prefix(TMP_PREFIX) {
                r.parse().ok()
            } else if name.starts_with('.') {
                None
            } else {
                sn_of(name).filter(|s| !committed.contains(s))
            };
            dead.extend(sn);
        }
        dead.sort_unstable();
        dead.dedup();
        History { committed, dead }
    }

    /// The next SN: one more than any SN number used.
    pub fn next_sn(&self) -> u32 {
        let last = self.committed.last().max(self.dead.last());
        last.map_or(1, |s| s + 1)
    }

    /// The latest committed SN, if no SN number came after it (then the
    /// trackers of its processes were last reset when it was taken).
    pub fn baseline(&self) -> Option<u32> {
        let last = *self.committed.last()?;
        (self.dead.last().is_none_or(|&d| d < last)).then_some(last)
    }

    pub fn latest(&self) -> Option<u32> {
        self.committed.last().copied()
    }
}

/// Remove leftovers of interrupted checkpoints: temporary directories and
/// files of SNs that never got their global file. Their SN numbers are
/// kept as tombstones (see the module comment).
pub fn cleanup(dir: &CheckedDir) {
    let hist = History::read(dir);
    for &sn in &hist.dead {
        let _ = tombstone(dir, sn);
    }
    for name in dir.entries().unwrap_or_default() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(TMP_PREFIX) {
            let _ = dir.remove_flat_tree(name);
        } else if !name.starts_with('.') && sn_of(name).is_some_and(|sn| hist.dead.contains(&sn)) {
            let _ = dir.remove_file(name);
        }
    }
}

/// Forget an earlier attempt at SN `sn` in a directory whose SN numbers
/// come from elsewhere (a part's copy takes its node's numbers): its
/// temporary directory and tombstone go. [`cleanup`] would make a
/// tombstone of it instead, and an SN committed later under a tombstone's
/// number has its files removed by the next cleanup.
pub fn forget_attempt(dir: &CheckedDir, sn: u32) -> Result<()> {
    let tmp = format!("{TMP_PREFIX}{sn}");
    if dir.contains(&tmp) {
        dir.remove_flat_tree(&tmp)?;
    }
    let dead = format!("{DEAD_PREFIX}{sn}");
    if dir.contains(&dead) {
        dir.remove_file(&dead)?;
    }
    Ok(())
}

/// Leave the tombstone of `sn` (an empty file `.dead-v<SN>`).
pub fn tombstone(dir: &CheckedDir, sn: u32) -> Result<()> {
    let name = format!("{DEAD_PREFIX}{sn}");
    if !dir.contains(&name) {
        drop(dir.create_file(&name)?);
    }
    Ok(())
}

/// A checkpoint being written: `.tmp-v<SN>` of the application directory.
/// Dropped without being committed, it removes itself — unless [`touched`]
/// says the attempt changed the job's trackers: then it stays, and the next
/// checkpoint turns it into a tombstone.
///
/// [`touched`]: Staging::touched
pub struct Staging {
    pub dir: CheckedDir,
    name: String,
    parent: Option<CheckedDir>,
    /// The attempt has reset dirty-page trackers of the job.
    pub touched: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let (Some(app), false) = (&self.parent, self.touched) {
            let _ = app.remove_flat_tree(&self.name);
        }
    }
}

/// Create the temporary directory of `sn` (root's, 0700 while written).
pub fn stage(app: &CheckedDir, sn: u32) -> Result<Staging> {
    let name = format!("{TMP_PREFIX}{sn}");
    let dir = private_dir(app, &name, "checkpointing")?;
    Ok(Staging {
        dir,
        name,
        parent: Some(app.dup()?),
        touched: false,
    })
}

/// Make the subdirectory `name` of the user's directory `app` and open it,
/// sure it is the one just made: this process's, closed to others. `doing`
/// names the work in the refusals ("checkpointing").
pub fn private_dir(app: &CheckedDir, name: &str, doing: &str) -> Result<CheckedDir> {
    if !app.make_dir(name, 0o700)? {
        return Err(ChkptError::Permission(format!(
            "{} appeared while {doing}: refusing to write into it",
            app.join(name).display()
        )));
    }
    // The application directory is the user's: between the mkdir and the
    // open they can put another directory in its place (see
    // tests/attacks.rs, staging directory swapped). This process opens
    // what it just made unless it was moved away, so a failed open is the
    // same refusal.
    let replaced = |why: String| {
        ChkptError::Permission(format!(
            "{} was replaced while {doing}: refusing to write into it{why}",
            app.join(name).display()
        ))
    };
    let dir = app
        .open_dir(name)
        .map_err(|e| replaced(format!(" ({e})")))?;
    let st = dir.stat()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if st.st_uid != me || st.st_mode & 0o077 != 0 {
        return Err(replaced(String::new()));
    }
    Ok(dir)
}

impl Staging {
    /// Hand every file to `uid:gid` and return their total size.
    pub fn chown_all(&self, uid: u32, gid: u32) -> Result<u64> {
        let mut bytes = 0;
        for name in self.dir.entries()? {
            let Some(name) = name.to_str() else { continue };
            self.dir.chown_file(name, uid, gid)?;
            bytes += self.dir.stat_entry(name)?.st_size as u64;
        }
        Ok(bytes)
    }

    /// Move every file into `app`, `global_name` last, then drop the
    /// temporary directory.
    pub fn commit(mut self, app: &CheckedDir, global_name: &str) -> Result<()> {
        for name in self.dir.entries()? {
            let Some(name) = name.to_str() else { continue };
            if name != global_name {
                self.dir.rename_into(name, app, name)?;
            }
        }
        self.dir.rename_into(global_name, app, global_name)?;
        self.parent = None;
        app.remove_dir_if_same(&self.name, &self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_and_cleanup() {
        let d = tempfile::tempdir().unwrap();
        let app = CheckedDir::open(d.path()).unwrap();
        let st = stage(&app, 1).unwrap();
        drop(st.dir.create_file("task_1_v1.bin").unwrap());
        drop(st.dir.create_file("global_v1.bin").unwrap());
        st.commit(&app, "global_v1.bin").unwrap();
        assert_eq!(committed_sns(&app), vec![1]);
        assert!(!d.path().join(".tmp-v1").exists());
        assert_eq!(History::read(&app).baseline(), Some(1));
        // an interrupted SN 2: files without a global file
        std::fs::write(d.path().join("task_1_v2.bin"), b"x").unwrap();
        std::fs::create_dir(d.path().join(".tmp-v2")).unwrap();
        std::fs::write(d.path().join(".tmp-v2/task_1_v2.bin"), b"x").unwrap();
        let h = History::read(&app);
        assert_eq!((h.next_sn(), h.baseline()), (3, None));
        cleanup(&app);
        assert!(!d.path().join("task_1_v2.bin").exists());
        assert!(!d.path().join(".tmp-v2").exists());
        assert!(d.path().join("task_1_v1.bin").exists());
        // SN 2 stays used: the next one is 3, and not incremental on 1
        let h = History::read(&app);
        assert_eq!(
            (h.next_sn(), h.baseline(), h.dead.clone()),
            (3, None, vec![2])
        );
        // a failed attempt that touched nothing leaves nothing
        drop(stage(&app, 3).unwrap());
        assert!(!d.path().join(".tmp-v3").exists());
        let mut st = stage(&app, 3).unwrap();
        st.touched = true;
        drop(st);
        assert_eq!(History::read(&app).dead, vec![2, 3]);
    }

    #[test]
    fn app_dir_of_another_user_or_a_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"root's").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("41")).unwrap();
        let e = prepare_dir(d.path(), 41, 65534, 65534).err().unwrap();
        assert!(e.to_string().contains("symlink"), "{e}");
        std::fs::create_dir(d.path().join("42")).unwrap();
        std::os::unix::fs::chown(d.path().join("42"), Some(12345), None).unwrap();
        let e = prepare_dir(d.path(), 42, 65534, 65534).err().unwrap();
        assert!(e.to_string().contains("uid 12345"), "{e}");
    }
}
