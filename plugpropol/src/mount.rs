//! Mounting the tree: clean a stale mount left by a crashed krgd, mount
//! with fuser, unmount (lazily if busy) on shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::fs::SchedFs;

/// The source shown in /proc/mounts (`krg_scheduler /config/krg_scheduler fuse ...`).
pub const FS_NAME: &str = "krg_scheduler";

/// A mounted tree; unmounted by [`Mounted::unmount`] or when dropped.
pub struct Mounted {
    session: Option<BackgroundSession>,
    path: PathBuf,
}

/// Mount `engine`'s tree at `path`, creating the directory and cleaning a
/// stale mount first. Refuses if a live tree is already mounted there.
pub fn mount(engine: Arc<Engine>, path: &Path) -> Result<Mounted> {
    clean_stale(path)?;
    std::fs::create_dir_all(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let mut config = Config::default();
    // DefaultPermissions: the kernel checks the modes we report (root-owned,
    // dirs 0755, attributes 0644, values 0444), so other users can read the
    // tree (allow_other) but only root can change it.
    config.mount_options = vec![
        MountOption::FSName(FS_NAME.into()),
        MountOption::Subtype(FS_NAME.into()),
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All;
    // Several threads: a slow plug-in start in one mkdir must not stall readers.
    config.n_threads = Some(4);
    let session = fuser::spawn_mount(SchedFs::new(engine), path, &config).map_err(|e| {
        Error::io(
            format!("mounting the scheduler tree at {}", path.display()),
            e,
        )
    })?;
    Ok(Mounted {
        session: Some(session),
        path: path.to_path_buf(),
    })
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmount; a busy mount (a shell sitting in it) is detached lazily.
    pub fn unmount(mut self) {
        self.unmount_now();
    }

    fn unmount_now(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if let Err(e) = session.umount_and_join() {
            tracing::warn!(path = %self.path.display(), error = %e, "unmount failed; detaching lazily");
            let _ = detach(&self.path);
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount_now();
    }
}

/// A FUSE mount whose daemon died answers ENOTCONN: detach it. A mount
/// point that still answers and is a scheduler tree belongs to a running
/// krgd: refuse.
pub fn clean_stale(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(path = %path.display(), "stale scheduler tree mount (krgd crashed?): detaching it");
            detach(path)
        }
        Ok(_) if is_our_mount(&path.canonicalize().unwrap_or_else(|_| path.to_path_buf())) => {
            Err(Error::Busy(format!(
            "{} is already served by another krgd (unmount it or use --scheduler-mount elsewhere)",
            path.display()
        )))
        }
        _ => Ok(()),
    }
}

/// Whether /proc/self/mountinfo lists a scheduler tree mounted at `path`.
pub fn is_our_mount(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        // `... <mount point> <options> [optional fields] - <fstype> <source> <super options>`
        let f: Vec<&str> = l.split(' ').collect();
        let dash = f.iter().position(|x| *x == "-");
        let fstype = dash.and_then(|i| f.get(i + 1));
        let source = dash.and_then(|i| f.get(i + 2));
        f.get(4).is_some_and(|m| unescape(m) == want)
            && fstype.is_some_and(|t| t.starts_with("fuse"))
            && source.is_some_and(|s| *s == FS_NAME)
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// `umount -l path`.
fn detach(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("{} contains a NUL byte", path.display())))?;
    // SAFETY: c is a valid NUL-terminated path; umount2 does not keep it.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::io(
            format!("detaching the stale mount at {}", path.display()),
            e,
        ));
    }
    Ok(())
}
