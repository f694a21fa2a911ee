//! SysV semaphore sets and message queues named on the command line
//! (`checkpoint --sysv-sem ID --sysv-msg ID`): unlike shared memory they
//! leave no trace in a process (no mapping, no fd), so the user says which
//! belong to the job. Restored before the tasks, with the same ids (via
//! /proc/sys/kernel/{sem,msg}_next_id), values, messages, owner and mode, in
//! the host's IPC namespace too.

use serde::{Deserialize, Serialize};

use crate::error::{ChkptError, Result};

const MSG_COPY: i32 = 0o40000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SemImage {
    pub semid: i32,
    pub key: i32,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub values: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MsgImage {
    pub msqid: i32,
    pub key: i32,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// Queued messages, oldest first: (mtype, text).
    pub msgs: Vec<(i64, Vec<u8>)>,
}

fn os(what: String) -> ChkptError {
    ChkptError::Other(format!("{what}: {}", std::io::Error::last_os_error()))
}

fn check_owner(what: &str, id: i32, uid: u32, caller: u32) -> Result<()> {
    if caller != 0 && uid != caller {
        return Err(ChkptError::Permission(format!(
            "SysV {what} {id} belongs to uid {uid}"
        )));
    }
    Ok(())
}

pub fn dump_sem(semid: i32, caller: u32) -> Result<SemImage> {
    // SAFETY: semid_ds is plain data; semctl writes into it (IPC_STAT) or into
    // the value array of nsems u16 (GETALL).
    unsafe {
        let mut ds: libc::semid_ds = std::mem::zeroed();
        if libc::semctl(semid, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) < 0 {
            return Err(os(format!("SysV semaphore set {semid}")));
        }
        check_owner("semaphore set", semid, ds.sem_perm.uid, caller)?;
        let mut values = vec![0u16; ds.sem_nsems as usize];
        if libc::semctl(semid, 0, libc::GETALL, values.as_mut_ptr()) < 0 {
            return Err(os(format!("SysV semaphore set {semid}: GETALL")));
        }
        Ok(SemImage {
            semid,
            key: ds.sem_perm.__key,
            mode: ds.sem_perm.mode & 0o777,
            uid: ds.sem_perm.uid,
            gid: ds.sem_perm.gid,
            values,
        })
    }
}

pub fn dump_msg(msqid: i32, caller: u32) -> Result<MsgImage> {
    // SAFETY: msqid_ds is plain data; msgrcv writes at most buf.len() bytes.
    unsafe {
        let mut ds: libc::msqid_ds = std::mem::zeroed();
        if libc::msgctl(msqid, libc::IPC_STAT, &mut ds) < 0 {
            return Err(os(format!("SysV message queue {msqid}")));
        }
        check_owner("message queue", msqid, ds.msg_perm.uid, caller)?;
        let mut msgs = Vec::new();
        let mut buf = vec![0u8; 8 + 65536];
        for i in 0..ds.msg_qnum as i64 {
            // MSG_COPY: read message number i without taking it off the queue.
            let n = libc::msgrcv(
                msqid,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len() - 8,
                i,
                libc::IPC_NOWAIT | MSG_COPY,
            );
            if n < 0 {
                return Err(os(format!(
                    "SysV message queue {msqid}: copying message {i}"
                )));
            }
            let mtype = i64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
            msgs.push((mtype, buf[8..8 + n as usize].to_vec()));
        }
        Ok(MsgImage {
            msqid,
            key: ds.msg_perm.__key,
            mode: ds.msg_perm.mode & 0o777,
            uid: ds.msg_perm.uid,
            gid: ds.msg_perm.gid,
            msgs,
        })
    }
}

/// Objects created by [`restore`], removed again if the restart fails.
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

pub fn restore(sems: &[SemImage], msgs: &[MsgImage]) -> Result<Created> {
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
                return Err(os(format!(
                    "recreating SysV semaphore set {} (key {:#x})",
                    s.semid, s.key
                )));
            }
            c.sems.push(id);
            if id != s.semid {
                return Err(ChkptError::Other(format!(
                    "SysV semaphore id {} is in use",
                    s.semid
                )));
            }
            let mut vals = s.values.clone();
            if libc::semctl(id, 0, libc::SETALL, vals.as_mut_ptr()) < 0 {
                return Err(os(format!("SysV semaphore set {id}: SETALL")));
            }
            let mut ds: libc::semid_ds = std::mem::zeroed();
            libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds);
            ds.sem_perm.uid = s.uid;
            ds.sem_perm.gid = s.gid;
            ds.sem_perm.mode = s.mode;
            if libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) < 0 {
                return Err(os(format!("SysV semaphore set {id}: IPC_SET")));
            }
        }
        for m in msgs {
            next_id("msg", m.msqid)?;
            let id = libc::msgget(m.key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600);
            let _ = std::fs::write("/proc/sys/kernel/msg_next_id", "-1");
            if id < 0 {
                return Err(os(format!(
                    "recreating SysV message queue {} (key {:#x})",
                    m.msqid, m.key
                )));
            }
            c.msgs.push(id);
            if id != m.msqid {
                return Err(ChkptError::Other(format!(
                    "SysV message queue id {} is in use",
                    m.msqid
                )));
            }
            for (mtype, text) in &m.msgs {
                let mut buf = mtype.to_le_bytes().to_vec();
                buf.extend_from_slice(text);
                if libc::msgsnd(
                    id,
                    buf.as_ptr() as *const libc::c_void,
                    text.len(),
                    libc::IPC_NOWAIT,
                ) < 0
                {
                    return Err(os(format!(
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
                return Err(os(format!("SysV message queue {id}: IPC_SET")));
            }
        }
    }
    Ok(())
}
