//! Format version 2 (and 1: the same) task file, as written before
//! process attributes were saved: read into today's [`TaskImage`] with
//! default attributes (nothing more is restored than before).

use serde::{Deserialize, Serialize};

use super::{AltStack, FdImage, ITimer, Rlimit, SigAction, TaskAttrs, TaskImage, ThreadImage};

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
            attrs: TaskAttrs {
                loginuid: u32::MAX,
                ..TaskAttrs::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::TaskV2;

    /// A task file written by format version 2 still decodes, with no
    /// attributes.
    #[test]
    fn version_2_task_files_are_read() {
        let old = TaskV2 {
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
        };
        let mut b = encode(FileKind::Task, &old).unwrap();
        b[8] = 2;
        // the header CRC covers the version: recompute it
        let body = b[HEADER_LEN..].to_vec();
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
        b[..HEADER_LEN].copy_from_slice(&h);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        std::fs::write(&p, &b).unwrap();
        let d = read_file::<TaskImage>(&p, FileKind::Task).unwrap();
        assert_eq!(d.version, 2);
        assert_eq!(d.meta.pid, 5);
        assert_eq!(d.meta.attrs.stopped, None);
        assert_eq!(d.meta.attrs.loginuid, u32::MAX);
        // and today's version is refused as a version 2 file would not be
        assert!(read_file::<GlobalImage>(&p, FileKind::Task).is_err());
    }
}
