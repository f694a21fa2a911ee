//! Format version 2 task files, still read: written first without file
//! locks (the layout of [`TaskV1`]), later with them ([`TaskV2`]); neither
//! has the process attributes of version 3, so none is restored (as
//! before them).

use serde::{Deserialize, Serialize};

use super::v1::TaskV1;
use super::{
    AltStack, FdImage, HeldLock, ITimer, Rlimit, SigAction, TaskAttrs, TaskImage, ThreadImage,
};

/// A version 2 task file once file locks were saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskV2 {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub exe: String,
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cwd: String,
    pub umask: u32,
    pub pgid: i32,
    pub sid: i32,
    pub personality: u32,
    pub no_new_privs: bool,
    pub rlimits: Vec<Rlimit>,
    pub sigactions: Vec<SigAction>,
    pub itimers: Vec<ITimer>,
    pub altstack: AltStack,
    pub fds: Vec<FdImage>,
    pub threads: Vec<ThreadImage>,
    pub locks: Vec<HeldLock>,
}

impl From<TaskV2> for TaskImage {
    fn from(t: TaskV2) -> Self {
        TaskImage {
            pid: t.pid,
            ppid: t.ppid,
            comm: t.comm,
            exe: t.exe,
            uids: t.uids,
            gids: t.gids,
            groups: t.groups,
            cwd: t.cwd,
            umask: t.umask,
            pgid: t.pgid,
            sid: t.sid,
            personality: t.personality,
            no_new_privs: t.no_new_privs,
            rlimits: t.rlimits,
            sigactions: t.sigactions,
            itimers: t.itimers,
            altstack: t.altstack,
            fds: t.fds,
            threads: t.threads,
            locks: t.locks,
            attrs: TaskAttrs::unsaved(),
        }
    }
}

/// A version 2 task file of either layout. The one with locks is tried
/// first: a file without them ends where they would start, so it cannot
/// be mistaken for one (while the shorter layout would read a longer file
/// and ignore its end). File locks were refused at checkpoint time before
/// they were saved: a file without them had none.
pub fn decode_task(body: &[u8]) -> postcard::Result<TaskImage> {
    postcard::from_bytes::<TaskV2>(body)
        .map(Into::into)
        .or_else(|_| postcard::from_bytes::<TaskV1>(body).map(Into::into))
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::TaskV2;

    /// `meta` written as a version 2 task file (header CRC over version 2).
    fn v2_file<T: serde::Serialize>(meta: &T) -> tempfile::TempDir {
        let body = postcard::to_stdvec(meta).unwrap();
        let layout = Layout {
            meta_off: HEADER_LEN as u64,
            meta_len: body.len() as u64,
            data_off: 0,
            data_len: 0,
        };
        let mut h = header(FileKind::Task, layout, &body);
        h[8] = 2;
        let mut c = crc32fast::Hasher::new();
        c.update(&h[..48]);
        c.update(&body);
        h[48..52].copy_from_slice(&c.finalize().to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let mut b = h.to_vec();
        b.extend_from_slice(&body);
        std::fs::write(dir.path().join("t.bin"), b).unwrap();
        dir
    }

    fn old() -> TaskV2 {
        TaskV2 {
            pid: 5,
            ppid: 1,
            comm: "x".into(),
            exe: "/bin/true".into(),
            uids: [1; 4],
            gids: [1; 4],
            groups: vec![],
            cwd: "/".into(),
            umask: 0o22,
            pgid: 5,
            sid: 5,
            personality: 0,
            no_new_privs: false,
            rlimits: vec![],
            sigactions: vec![],
            itimers: vec![],
            altstack: AltStack {
                sp: 0,
                flags: 2,
                size: 0,
            },
            fds: vec![],
            threads: vec![],
            locks: vec![],
        }
    }

    /// Version 2 task files of both layouts decode, with no attributes.
    #[test]
    fn version_2_task_files_are_read() {
        let with_locks = old();
        let dir = v2_file(&with_locks);
        let d = read_file::<TaskImage>(&dir.path().join("t.bin"), FileKind::Task).unwrap();
        assert_eq!(d.version, 2);
        assert_eq!(d.meta.pid, 5);
        assert!(!d.meta.attrs.saved);
        assert_eq!(d.meta.attrs.loginuid, u32::MAX);
        let o = old();
        let before_locks = v1::TaskV1 {
            pid: 6,
            ppid: o.ppid,
            comm: o.comm,
            exe: o.exe,
            uids: o.uids,
            gids: o.gids,
            groups: o.groups,
            cwd: o.cwd,
            umask: o.umask,
            pgid: o.pgid,
            sid: o.sid,
            personality: o.personality,
            no_new_privs: o.no_new_privs,
            rlimits: o.rlimits,
            sigactions: o.sigactions,
            itimers: o.itimers,
            altstack: o.altstack,
            fds: o.fds,
            threads: o.threads,
        };
        let dir = v2_file(&before_locks);
        let d = read_file::<TaskImage>(&dir.path().join("t.bin"), FileKind::Task).unwrap();
        assert_eq!((d.meta.pid, d.meta.locks.len()), (6, 0));
        assert!(!d.meta.attrs.saved);
    }
}
