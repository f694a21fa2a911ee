//! Who an image belongs to, and what it may ask of root at restart.
//!
//! `restart` runs as root, and the files it reads may have been written by
//! their owner rather than by `checkpoint`. So an image owned by a user can
//! only bring back processes that user could have had: the user's uid in
//! every slot, groups the user database gives that user, hard limits no
//! higher than restart's own, SysV objects owned by that user — and those
//! objects are created under the user's identity ([`run_as`]), so that the
//! kernel records the user as their creator. An image owned by root is
//! trusted as root's own.

use crate::error::{ChkptError, Result};
use crate::image::{NodeImage, TaskImage};

/// The owner of an image (the owner of its files) and the groups the user
/// database gives them.
#[derive(Debug, Clone)]
pub struct ImageOwner {
    pub uid: u32,
    /// Primary group from the user database (0 for root).
    pub gid: u32,
    /// Every group the owner may use: primary and supplementary.
    pub groups: Vec<u32>,
}

impl ImageOwner {
    /// Look `uid` up in the user database (`getpwuid`, `getgrouplist`).
    pub fn of_uid(uid: u32) -> Result<Self> {
        if uid == 0 {
            return Ok(Self {
                uid,
                gid: 0,
                groups: Vec::new(),
            });
        }
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .ok_or_else(|| {
                ChkptError::Permission(format!(
                    "the image belongs to uid {uid}, which has no entry in the user database: its groups cannot be checked"
                ))
            })?;
        let name = std::ffi::CString::new(user.name.as_bytes())
            .map_err(|_| ChkptError::Permission(format!("uid {uid} has an unusable user name")))?;
        let groups = nix::unistd::getgrouplist(&name, user.gid)
            .map_err(|e| ChkptError::Permission(format!("groups of uid {uid}: {e}")))?;
        Ok(Self {
            uid,
            gid: user.gid.as_raw(),
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    fn has_group(&self, gid: u32) -> bool {
        gid == self.gid || self.groups.contains(&gid)
    }

    fn refuse(&self, what: &str, detail: String) -> ChkptError {
        ChkptError::Permission(format!(
            "{what} {detail}, but the image belongs to uid {}: refusing to restart it",
            self.uid
        ))
    }

    /// The task's credentials are ones the owner has.
    pub fn check_task(&self, t: &TaskImage) -> Result<()> {
        if self.is_root() {
            return Ok(());
        }
        let what = format!("task {}", t.pid);
        if let Some(u) = t.uids.iter().find(|&&u| u != self.uid) {
            return Err(self.refuse(&what, format!("records uid {u}")));
        }
        if let Some(g) = t
            .gids
            .iter()
            .chain(&t.groups)
            .find(|&&g| !self.has_group(g))
        {
            return Err(self.refuse(
                &what,
                format!(
                    "records group {g}, which uid {} is not a member of",
                    self.uid
                ),
            ));
        }
        super::attrs::check_user_attrs(self.uid, t).map_err(|d| self.refuse(&what, d))?;
        self.check_rlimits(&what, t)
    }

    /// Hard limits no higher than restart's own (root without
    /// CAP_SYS_RESOURCE could not raise them anyway; root with it must not
    /// do so for a user).
    fn check_rlimits(&self, what: &str, t: &TaskImage) -> Result<()> {
        for r in &t.rlimits {
            let mut now = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit64 writes one rlimit64 into `now`.
            if unsafe { libc::getrlimit64(r.resource as _, &mut now) } < 0 {
                return Err(self.refuse(what, format!("records unknown rlimit {}", r.resource)));
            }
            if r.max > now.rlim_max {
                return Err(self.refuse(
                    what,
                    format!(
                        "raises the hard limit of rlimit {} to {} (restart's is {})",
                        r.resource, r.max, now.rlim_max
                    ),
                ));
            }
        }
        Ok(())
    }

    /// SysV objects of the node file belong to the owner.
    pub fn check_ipc(&self, n: &NodeImage) -> Result<()> {
        if self.is_root() {
            return Ok(());
        }
        let objects = n
            .sysv_shm
            .iter()
            .map(|s| ("SysV shm", s.shmid, s.uid, s.gid))
            .chain(
                n.sysv_sem
                    .iter()
                    .map(|s| ("SysV semaphore set", s.semid, s.uid, s.gid)),
            )
            .chain(
                n.sysv_msg
                    .iter()
                    .map(|m| ("SysV message queue", m.msqid, m.uid, m.gid)),
            );
        for (kind, id, uid, gid) in objects {
            if uid != self.uid || !self.has_group(gid) {
                return Err(self.refuse(
                    &format!("{kind} {id}"),
                    format!("is recorded as owned by {uid}:{gid}"),
                ));
            }
        }
        Ok(())
    }
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_CHECKPOINT_RESTORE: u32 = 40;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Run `f` on a thread of its own with the owner's uid, gid and groups,
/// keeping only the capabilities that choose IPC ids
/// (CAP_CHECKPOINT_RESTORE, or CAP_SYS_ADMIN on older kernels). The
/// credentials are changed with raw system calls, which affect the calling
/// thread only (glibc's wrappers would change every thread of restart), and
/// vanish with the thread.
pub fn run_as<T: Send>(owner: &ImageOwner, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    if owner.is_root() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            become_owner(owner)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(ChkptError::Thread(
                "the thread acting as the image's owner panicked".into(),
            ))
        })
    })
}

fn become_owner(o: &ImageOwner) -> Result<()> {
    let fail = |what: &str| ChkptError::Credentials {
        what: format!("taking the identity of uid {} ({what})", o.uid),
        err: std::io::Error::last_os_error(),
    };
    let groups: Vec<libc::gid_t> = o.groups.clone();
    // SAFETY: raw credential system calls on the calling thread; `groups`
    // outlives the setgroups call.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
            return Err(fail("PR_SET_KEEPCAPS"));
        }
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0 {
            return Err(fail("setgroups"));
        }
        if libc::syscall(libc::SYS_setresgid, o.gid, o.gid, o.gid) < 0 {
            return Err(fail("setresgid"));
        }
        if libc::syscall(libc::SYS_setresuid, o.uid, o.uid, o.uid) < 0 {
            return Err(fail("setresuid"));
        }
    }
    let mut data = [[0u32; 3]; 2];
    for cap in [CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE] {
        let (word, bit) = ((cap / 32) as usize, cap % 32);
        data[word][0] |= 1 << bit; // effective
        data[word][1] |= 1 << bit; // permitted
    }
    let header = [LINUX_CAPABILITY_VERSION_3, 0];
    // SAFETY: capset reads a v3 header (version, pid 0 = this thread) and
    // two {effective, permitted, inheritable} words.
    if unsafe { libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) } < 0 {
        return Err(fail("capset"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Rlimit;

    fn task(uid: u32, gid: u32, groups: Vec<u32>) -> TaskImage {
        crate::image::task::sample_task(uid, gid, groups)
    }

    #[test]
    fn a_user_image_may_not_claim_root_ids_groups_or_limits() {
        let nobody = ImageOwner::of_uid(65534).unwrap();
        let own = nobody.gid;
        assert!(nobody.check_task(&task(65534, own, vec![own])).is_ok());
        let e = nobody.check_task(&task(65534, 0, vec![own])).unwrap_err();
        assert!(e.to_string().contains("group 0"), "{e}");
        assert!(nobody.check_task(&task(65534, own, vec![0, 42])).is_err());
        let mut t = task(65534, own, vec![]);
        t.uids[1] = 0;
        assert!(nobody
            .check_task(&t)
            .unwrap_err()
            .to_string()
            .contains("uid 0"));
        let mut t = task(65534, own, vec![]);
        t.rlimits.push(Rlimit {
            resource: libc::RLIMIT_NOFILE,
            cur: 1024,
            max: u64::MAX,
        });
        let e = nobody.check_task(&t).unwrap_err();
        assert!(e.to_string().contains("hard limit"), "{e}");
        // root's own images are root's business
        assert!(ImageOwner::of_uid(0)
            .unwrap()
            .check_task(&task(0, 0, vec![0]))
            .is_ok());
    }

    #[test]
    fn unknown_owner_is_refused() {
        assert!(ImageOwner::of_uid(3_999_999_999).is_err());
    }

    #[test]
    fn run_as_changes_only_the_helper_thread() {
        let nobody = ImageOwner::of_uid(65534).unwrap();
        let seen = run_as(&nobody, || {
            // SAFETY: plain id queries.
            Ok(unsafe {
                (
                    libc::syscall(libc::SYS_geteuid),
                    libc::syscall(libc::SYS_getegid),
                )
            })
        })
        .unwrap();
        assert_eq!(seen, (65534, nobody.gid as i64));
        // SAFETY: plain id query.
        assert_eq!(unsafe { libc::geteuid() }, 0);
    }
}
