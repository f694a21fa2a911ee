//! Recreating SysV IPC objects in the host's IPC namespace too, with their
//! ids (via /proc/sys/kernel/{shm,sem,msg}_next_id, CONFIG_CHECKPOINT_RESTORE),
//! keys, values, messages, owner and mode — before any task exists. Called on
//! the thread that has taken the image owner's identity
//! ([`super::owner::run_as`]).

use crate::error::{ChkptError, Result};
use crate::image::{MsgImage, SemImage, SysvShmImage};

const NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";

/// Recreate every segment with its shmid (from the restarter, before any
/// task exists). Returns the ids created, for [`shm_remove`] on failure.
pub fn shm_create(segs: &[SysvShmImage]) -> Result<Vec<i32>> {
    let mut made = Vec::new();
    for s in segs {
        match create_one(s) {
            Ok(()) => made.push(s.shmid),
            Err(e) => {
                shm_remove(&made);
                return Err(e);
            }
        }
    }
    Ok(made)
}

fn create_one(s: &SysvShmImage) -> Result<()> {
    std::fs::write(NEXT_ID, s.shmid.to_string()).map_err(|e| ChkptError::io(NEXT_ID, e))?;
    let key = if s.destroyed {
        libc::IPC_PRIVATE
    } else {
        s.key
    };
    // SAFETY: plain shmget.
    let id = unsafe {
        libc::shmget(
            key,
            s.size as usize,
            libc::IPC_CREAT | libc::IPC_EXCL | 0o600,
        )
    };
    let _ = std::fs::write(NEXT_ID, "-1");
    if id < 0 {
        return Err(ChkptError::ipc(format!(
            "recreating SysV shm {} (key {:#x})",
            s.shmid, s.key
        )));
    }
    if id != s.shmid {
        shm_remove(&[id]);
        return Err(ChkptError::Ipc {
            what: format!("recreating SysV shm {}", s.shmid),
            err: std::io::Error::from_raw_os_error(libc::EEXIST),
        });
    }
    let mut ds = crate::ipc::shm_stat(id)?;
    ds.shm_perm.uid = s.uid;
    ds.shm_perm.gid = s.gid;
    ds.shm_perm.mode = s.mode;
    // SAFETY: ds is a valid shmid_ds.
    if unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) } < 0 {
        shm_remove(&[id]);
        return Err(ChkptError::ipc(format!("SysV shm {id}: IPC_SET")));
    }
    Ok(())
}

/// IPC_RMID (segments stay alive while attached).
pub fn shm_remove(ids: &[i32]) {
    for &id in ids {
        // SAFETY: plain shmctl without a buffer.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// Objects created by [`restore_sem_msg`], removed again if the restart fails.
#[derive(Default)]
pub struct Created {
    sems: Vec<i32>,
    msgs: Vec<i32>,
}

impl Created {
    pub fn remove(&self) {
        // SAFETY: plain IPC_RMID calls.
        unsafe {
            for &s in &self.sems {
                libc::semctl(s, 0, libc::IPC_RMID);
            }
            for &m in &self.msgs {
                libc::msgctl(m, libc::IPC_RMID, std::ptr::null_mut());
            }
        }
    }
}

fn next_id(kind: &str, id: i32) -> Result<()> {
    let p = format!("/proc/sys/kernel/{kind}_next_id");
    std::fs::write(&p, id.to_string()).map_err(|e| ChkptError::io(&p, e))
}

pub fn restore_sem_msg(sems: &[SemImage], msgs: &[MsgImage]) -> Result<Created> {
    let mut c = Created::default();
    let r = restore_all(sems, msgs, &mut c);
    if r.is_err() {
        c.remove();
    }
    r.map(|_| c)
}

fn restore_all(sems: &[SemImage], msgs: &[MsgImage], c: &mut Created) -> Result<()> {
    // SAFETY: plain SysV IPC calls with buffers of the documented sizes.
    unsafe {
        for s in sems {
            next_id("sem", s.semid)?;
            let id = libc::semget(
                s.key,
                s.values.len() as i32,
                libc::IPC_CREAT | libc::IPC_EXCL | 0o600,
            );
            let _ = std::fs::write("/proc/sys/kernel/sem_next_id", "-1");
            if id < 0 {
                return Err(ChkptError::ipc(format!(
                    "recreating SysV semaphore set {} (key {:#x})",
                    s.semid, s.key
                )));
            }
            c.sems.push(id);
            if id != s.semid {
                return Err(ChkptError::Ipc {
                    what: format!("recreating SysV semaphore set {}", s.semid),
                    err: std::io::Error::from_raw_os_error(libc::EEXIST),
                });
            }
            let mut vals = s.values.clone();
            if libc::semctl(id, 0, libc::SETALL, vals.as_mut_ptr()) < 0 {
                return Err(ChkptError::ipc(format!("SysV semaphore set {id}: SETALL")));
            }
            let mut ds: libc::semid_ds = std::mem::zeroed();
            libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds);
            ds.sem_perm.uid = s.uid;
            ds.sem_perm.gid = s.gid;
            ds.sem_perm.mode = s.mode;
            if libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) < 0 {
                return Err(ChkptError::ipc(format!("SysV semaphore set {id}: IPC_SET")));
            }
        }
        for m in msgs {
            next_id("msg", m.msqid)?;
            let id = libc::msgget(m.key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600);
            let _ = std::fs::write("/proc/sys/kernel/msg_next_id", "-1");
            if id < 0 {
                return Err(ChkptError::ipc(format!(
                    "recreating SysV message queue {} (key {:#x})",
                    m.msqid, m.key
                )));
            }
            c.msgs.push(id);
            if id != m.msqid {
                return Err(ChkptError::Ipc {
                    what: format!("recreating SysV message queue {}", m.msqid),
                    err: std::io::Error::from_raw_os_error(libc::EEXIST),
                });
            }
            for crate::image::QueuedMessage { mtype, text } in &m.msgs {
                let mut buf = mtype.to_le_bytes().to_vec();
                buf.extend_from_slice(text);
                if libc::msgsnd(
                    id,
                    buf.as_ptr() as *const libc::c_void,
                    text.len(),
                    libc::IPC_NOWAIT,
                ) < 0
                {
                    return Err(ChkptError::ipc(format!(
                        "SysV message queue {id}: putting a message back"
                    )));
                }
            }
            let mut ds: libc::msqid_ds = std::mem::zeroed();
            libc::msgctl(id, libc::IPC_STAT, &mut ds);
            ds.msg_perm.uid = m.uid;
            ds.msg_perm.gid = m.gid;
            ds.msg_perm.mode = m.mode;
            if libc::msgctl(id, libc::IPC_SET, &mut ds) < 0 {
                return Err(ChkptError::ipc(format!("SysV message queue {id}: IPC_SET")));
            }
        }
    }
    Ok(())
}
