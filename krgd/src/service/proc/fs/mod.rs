//! The /krg tree: the process service as files, in the way of XCPU ("the
//! file system is the system"), served by krgd over FUSE.
//!
//! ```text
//! nodes/<id>/{state,address,mac,load,mem_free,uptime,arch,uname}
//! nodes/<id>/xcpu/clone                 open + read: a new session's number
//! nodes/<id>/xcpu/<n>/{argv,env,cwd,exec,ctl,stdin,stdout,stderr,status,wait,pid}
//! proc/<node>:<pid>/{cmdline,status,stat,signal}
//! ```
//!
//! * [`inode`]: entries and their numbers; [`tree`]: what exists, owners
//!   and modes, generated contents; [`xcpu`]: sessions; [`words`]: argv;
//!   [`ops`]: the FUSE operations.
//!
//! One tree per host and path: a krgd that finds the path already served
//! by another krgd (tests run many on one machine) logs it and goes on
//! without the tree. The mount point must be an empty directory of an
//! ordinary file system, as for the scheduler tree.

pub mod inode;
pub mod ops;
pub mod tree;
pub mod words;
pub mod xcpu;

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use super::state::ProcState;
use crate::service::sched::SchedService;
use crate::sync;
use crate::DaemonError;

/// Source and subtype shown in /proc/mounts (`krg /krg fuse.krg ...`).
pub const FS_NAME: &str = "krg";
/// How often ended sessions are looked at for removal.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// A mounted tree; unmounted when dropped.
pub struct Mounted {
    session: Option<BackgroundSession>,
    path: PathBuf,
    sweeper: tokio::task::JoinHandle<()>,
    tree: Arc<tree::Tree>,
}

impl Mounted {
    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// XCPU sessions still held (for tests of leaks).
    pub fn sessions(&self) -> usize {
        self.tree.sessions.len()
    }

    /// Unmount (lazily, if busy).
    pub fn unmount(mut self) {
        self.unmount_now();
    }

    fn unmount_now(&mut self) {
        self.sweeper.abort();
        let Some(session) = self.session.take() else {
            return;
        };
        if let Err(e) = session.umount_and_join() {
            tracing::warn!(path = %self.path.display(), error = %e, "unmount of /krg failed; detaching it");
            let _ = detach(&self.path);
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount_now();
    }
}

/// Mount the tree at `path`; Ok(None) when another krgd of this host serves it.
pub fn mount(
    st: Arc<ProcState>,
    sched: Arc<SchedService>,
    path: &Path,
) -> Result<Option<Mounted>, DaemonError> {
    // Stale mounts can be stacked (several krgd crashed in turn): detach
    // until the directory answers, a bounded number of times.
    for _ in 0..16 {
        match std::fs::metadata(path) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                tracing::warn!(path = %path.display(), "stale /krg mount (a krgd crashed?): detaching it");
                detach(path)
                    .map_err(|e| DaemonError::io(format!("detaching {}", path.display()), e))?;
            }
            Ok(_) if is_krg_mount(path) => {
                tracing::warn!(path = %path.display(), "another krgd of this host serves the /krg tree here; running without it");
                return Ok(None);
            }
            _ => break,
        }
    }
    std::fs::create_dir_all(path)
        .map_err(|e| DaemonError::io(format!("creating {}", path.display()), e))?;
    check_mount_point(path)?;
    let tree = Arc::new(tree::Tree::new(st, sched));
    let fs = ops::KrgFs::new(tree.clone(), tokio::runtime::Handle::current());
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(FS_NAME.into()),
        MountOption::Subtype(FS_NAME.into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(4);
    let session = fuser::spawn_mount(fs, path, &config)
        .map_err(|e| DaemonError::io(format!("mounting the /krg tree at {}", path.display()), e))?;
    let sessions = tree.sessions.clone();
    let sweep_tree = tree.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            for (node, n) in sessions.sweep() {
                sync::lock(&sweep_tree.inodes).forget_session(node, n);
                tracing::debug!(node, session = n, "/krg: xcpu session gone");
            }
        }
    });
    Ok(Some(Mounted {
        session: Some(session),
        path: path.to_path_buf(),
        sweeper,
        tree,
    }))
}

/// Whether /proc/self/mountinfo lists a /krg tree mounted at `path`.
fn is_krg_mount(path: &Path) -> bool {
    let want = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let want = want.to_string_lossy();
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let dash = f.iter().position(|x| *x == "-");
        let fstype = dash.and_then(|i| f.get(i + 1));
        let source = dash.and_then(|i| f.get(i + 2));
        f.get(4).is_some_and(|m| m.replace("\\040", " ") == want)
            && fstype.is_some_and(|t| *t == "fuse" || *t == "fuse.krg")
            && source.is_some_and(|s| *s == FS_NAME)
    })
}

/// Kernel file systems (statfs magic) the tree must not cover.
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
    (0x6165_676c, "pstore"),
    (0x6265_6570, "configfs"),
    (0x6573_5543, "fusectl"),
    (0x1980_0202, "mqueue"),
    (0x6e73_6673, "nsfs"),
];

/// An empty directory of an ordinary file system, checked on the opened
/// directory: a mount hides what a directory holds.
fn check_mount_point(path: &Path) -> Result<(), DaemonError> {
    let shown = path.display();
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| DaemonError::io(format!("opening the /krg mount point {shown}"), e))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills `st` for the open directory and keeps nothing.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(DaemonError::io(
            format!("statfs of {shown}"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fstatfs succeeded.
    let magic = unsafe { st.assume_init() }.f_type as u32;
    if let Some((_, fs)) = PSEUDO_FS.iter().find(|(m, _)| *m == magic) {
        return Err(DaemonError::invalid(
            "krg_mount",
            format!("refusing to mount the /krg tree on {shown}: it is on {fs}, a kernel file system (use --krg-mount DIR or --no-krg-mount)"),
        ));
    }
    let mut entries = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|e| DaemonError::io(format!("listing {shown}"), e))?;
    if entries.next().is_some() {
        return Err(DaemonError::invalid(
            "krg_mount",
            format!("refusing to mount the /krg tree on {shown}: the directory is not empty (use --krg-mount DIR or --no-krg-mount)"),
        ));
    }
    Ok(())
}

/// `umount -l path`.
fn detach(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid NUL-terminated path; umount2 keeps nothing.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_must_be_empty_ordinary_directories() {
        let e = check_mount_point(Path::new("/proc/sys"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("it is on proc"), "{e}");
        let d = tempfile::tempdir().unwrap();
        check_mount_point(d.path()).unwrap();
        std::fs::write(d.path().join("x"), "").unwrap();
        let e = check_mount_point(d.path()).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        assert!(!is_krg_mount(d.path()));
    }
}
