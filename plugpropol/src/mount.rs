//! Mounting the tree: clean a stale mount left by a crashed krgd, refuse a
//! mount point that would hide something, mount with fuser, unmount
//! (lazily if busy) on shutdown.

use std::fs::{File, OpenOptions};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
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
/// stale mount first. Refuses if a live tree is already mounted there, or
/// if the directory is not empty or is on a kernel file system
/// ([`check_mount_point`]).
pub fn mount(engine: Arc<Engine>, path: &Path) -> Result<Mounted> {
    clean_stale(path)?;
    std::fs::create_dir_all(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    check_mount_point(path)?;
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

/// The kernel's own file systems, by statfs magic number: covering one of
/// their directories hides a kernel interface (a test once covered
/// /proc/sys).
const PSEUDO_FS: &[(u32, &str)] = &[
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x1cd1, "devpts"),
    (0xcafe_4a11, "bpf"),
    (0xde5e_81e4, "efivarfs"),
    (0x6165_676c, "pstore"),
    (0x6265_6570, "configfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x6573_5543, "fusectl"),
    (0x1980_0202, "mqueue"),
    (0x6e73_6673, "nsfs"),
];

/// The tree may only cover an empty directory of an ordinary file system:
/// a mount hides what the directory holds. Checked on the opened directory
/// (symlinks on the path followed, as mount(2) follows them).
pub fn check_mount_point(path: &Path) -> Result<()> {
    let shown = path.display();
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("opening the mount point {shown}"), e))?;
    let fs = pseudo_fs(&dir).map_err(|e| Error::io(format!("statfs of {shown}"), e))?;
    if let Some(fs) = fs {
        return Err(Error::Invalid(format!(
            "refusing to mount the scheduler tree on {shown}: it is on {fs}, a kernel file system; choose an empty directory elsewhere"
        )));
    }
    let empty = is_empty(&dir).map_err(|e| Error::io(format!("listing {shown}"), e))?;
    if !empty {
        return Err(Error::NotEmpty(format!(
            "refusing to mount the scheduler tree on {shown}: the directory is not empty and the mount would hide what it holds; choose an empty directory"
        )));
    }
    Ok(())
}

/// The name of the kernel file system `dir` is on, if it is on one.
fn pseudo_fs(dir: &File) -> std::io::Result<Option<&'static str>> {
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `dir` is an open descriptor and `st` writable memory of the
    // size fstatfs fills; it keeps neither.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fstatfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // f_type is a signed word; magic numbers are 32 bits.
    let magic = st.f_type as u32;
    Ok(PSEUDO_FS.iter().find(|(m, _)| *m == magic).map(|(_, n)| *n))
}

/// Whether `dir` holds no entry, listed through its descriptor's /proc
/// link so that it is the very directory opened and checked.
fn is_empty(dir: &File) -> std::io::Result<bool> {
    let mut entries = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    Ok(entries.next().transpose()?.is_none())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_empty_directories_of_ordinary_file_systems() {
        for (path, fs) in [("/proc/sys", "proc"), ("/sys/kernel", "sysfs")] {
            let e = check_mount_point(Path::new(path)).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::Invalid(_)), "{msg}");
            assert!(msg.contains(&format!("on {path}: it is on {fs}")), "{msg}");
        }
        let d = tempfile::tempdir().unwrap();
        check_mount_point(d.path()).unwrap();
        std::fs::write(d.path().join(".hidden"), "x").unwrap();
        let e = check_mount_point(d.path()).unwrap_err();
        assert!(matches!(e, Error::NotEmpty(_)), "{e}");
        assert!(e.to_string().contains(&d.path().display().to_string()));
        let missing = check_mount_point(&d.path().join("none")).unwrap_err();
        assert!(missing.to_string().starts_with("opening the mount point"));
    }
}
