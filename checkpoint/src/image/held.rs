//! What a task holds beyond its plain files, pipes and sockets: file
//! locks, FIFOs, deleted-but-open files, inotify watches, POSIX message
//! queues — and the limits restart checks them against (an image is
//! hostile input: these bound what it may make root write or create).

use serde::{Deserialize, Serialize};

/// Largest deleted-but-open file whose content an image may carry.
pub const MAX_DELETED_BYTES: u64 = 64 << 20;
/// Largest inotify watch descriptor restored (restart allocates every
/// number below it to get the same one back).
pub const MAX_INOTIFY_WD: i32 = 4096;
/// Most messages of a POSIX message queue, and the largest one (the
/// kernel's own hard limits, `HARD_MSGMAX` and `HARD_MSGSIZEMAX`).
pub const MAX_MQ_MSGS: usize = 65536;
pub const MAX_MQ_MSGSIZE: usize = 16 << 20;

/// A file lock held by a task through one of its fds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeldLock {
    pub fd: i32,
    pub lock: FileLock,
}

/// A file lock (`lock:` line of fdinfo).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileLock {
    pub kind: LockKind,
    pub write: bool,
    pub start: u64,
    /// Last byte, `None`: to the end of the file (and beyond).
    pub end: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum LockKind {
    /// `fcntl(F_SETLK)`: the process's.
    Posix,
    /// `flock()`: the open file description's.
    Flock,
    /// `fcntl(F_OFD_SETLK)`: the open file description's.
    Ofd,
    /// `fcntl(F_SETLEASE)`, read or write lease (not being broken): the
    /// open file description's; over the whole file. Format 5.
    Lease,
}

/// A pseudo-terminal of the tree, as its master holds it: its number
/// (`/dev/pts/N`, which restart gets again) and settings. Data waiting in
/// it is refused at checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PtyImage {
    pub index: u32,
    /// The slave's `struct termios2` (TCGETS2), raw.
    pub termios: Vec<u8>,
    /// `struct winsize`: rows, columns, x and y pixels.
    pub winsize: [u16; 4],
    /// Locked (TIOCSPTLCK): the slave cannot be opened.
    pub locked: bool,
    /// Packet mode (TIOCPKT).
    pub packet: bool,
}

/// A FIFO open in the job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FifoImage {
    /// Its path (made again, as the job's user, if it is gone).
    pub path: String,
    /// Its inode at checkpoint time: fds of the same FIFO share its data.
    pub ino: u64,
    /// Permission bits, for making it again.
    pub mode: u32,
    /// Bytes buffered in it (held by the first fd of each FIFO only).
    pub data: Vec<u8>,
}

/// A regular file deleted while open; restart makes an unnamed file
/// (`O_TMPFILE`) in the directory it was in, as the job's user, with this
/// content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeletedImage {
    /// The path it had (without " (deleted)").
    pub path: String,
    pub pos: u64,
    /// Permission bits.
    pub mode: u32,
    /// Its content (at most [`MAX_DELETED_BYTES`]); empty on every fd
    /// of the file but the first.
    pub content: Vec<u8>,
    /// Its size (the content's length on the first fd).
    pub size: u64,
    /// Its inode at checkpoint time: fds of the same file share it again.
    pub ino: u64,
}

/// One watch of an inotify instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InotifyWatch {
    /// Watch descriptor the job knows it by.
    pub wd: i32,
    /// Events watched (and IN_ONESHOT, IN_EXCL_UNLINK, …).
    pub mask: u32,
    /// The watched file or directory.
    pub path: String,
}

/// A fanotify group (format 5): its flags and marks, each on a file or
/// directory (found again by path) or on a mount (by its mount point).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FanotifyImage {
    /// `fanotify_init` flags and event flags.
    pub flags: u32,
    pub event_flags: u32,
    pub marks: Vec<FanotifyMark>,
}

/// One mark of a fanotify group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FanotifyMark {
    /// On a whole mount (FAN_MARK_MOUNT), else on the file itself.
    pub mount: bool,
    /// The marked file, or the mount point.
    pub path: String,
    /// FAN_MARK_* flags the mark keeps (FAN_MARK_IGNORED_SURV_MODIFY…).
    pub flags: u32,
    pub mask: u64,
    pub ignored_mask: u64,
}

/// A POSIX message queue (`mq_open`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MqueueImage {
    /// Its name, without the leading '/'.
    pub name: String,
    /// It was removed (`mq_unlink`) while open.
    pub unlinked: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub maxmsg: i64,
    pub msgsize: i64,
    /// Messages in the order they are received (highest priority first).
    pub messages: Vec<MqMessage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MqMessage {
    pub prio: u32,
    pub data: Vec<u8>,
}

/// A lock in words.
pub fn describe_lock(l: &FileLock) -> String {
    let end = l.end.map_or("EOF".to_string(), |e| e.to_string());
    format!(
        "{:?} {} lock, bytes {}..{end}",
        l.kind,
        if l.write { "write" } else { "read" },
        l.start
    )
}

/// The kinds of fd this module holds, in words (others: "?").
pub fn describe_held(k: &super::FdKind) -> String {
    use super::FdKind;
    match k {
        FdKind::Fifo { file, fifo } => format!(
            "FIFO {} mode {:o}, {} byte(s) buffered (open file #{file})",
            fifo.path,
            fifo.mode,
            fifo.data.len()
        ),
        FdKind::Deleted { file, del } => format!(
            "deleted file {} at offset {}, {} byte(s) saved (open file #{file})",
            del.path,
            del.pos,
            del.content.len()
        ),
        FdKind::Inotify { file, watches } => format!(
            "inotify watching {} (open file #{file})",
            watches
                .iter()
                .map(|w| format!("{} {} mask {:#x}", w.wd, w.path, w.mask))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        FdKind::Mqueue { file, mq } => format!(
            "message queue /{}{} mode {:o} owner {}:{}, {} message(s) of at most {} bytes, up to {} (open file #{file})",
            mq.name,
            if mq.unlinked { " (removed)" } else { "" },
            mq.mode,
            mq.uid,
            mq.gid,
            mq.messages.len(),
            mq.msgsize,
            mq.maxmsg
        ),
        FdKind::Fanotify { file, fa } => format!(
            "fanotify flags {:#x} event flags {:#x}, marks {} (open file #{file})",
            fa.flags,
            fa.event_flags,
            fa.marks
                .iter()
                .map(|m| format!(
                    "{}{} mask {:#x} ignored {:#x}",
                    if m.mount { "mount " } else { "" },
                    m.path,
                    m.mask,
                    m.ignored_mask
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        FdKind::External { file, what } => format!(
            "{what} leading outside the tree: restart's stdin/stdout or --inherit-fd (open file #{file})"
        ),
        FdKind::PtyMaster { file, pty } => format!(
            "pseudo-terminal master of /dev/pts/{} ({}x{}{}{}) (open file #{file})",
            pty.index,
            pty.winsize[0],
            pty.winsize[1],
            if pty.locked { ", locked" } else { "" },
            if pty.packet { ", packet mode" } else { "" }
        ),
        FdKind::PtySlave { file, index } => {
            format!("/dev/pts/{index}, whose master is in the tree (open file #{file})")
        }
        _ => "?".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{encode, read_file, v1::TaskV1, AltStack, FileKind, TaskImage};

    fn old_task() -> TaskV1 {
        TaskV1 {
            pid: 7,
            ppid: 1,
            comm: "x".into(),
            exe: "/bin/true".into(),
            uids: [0; 4],
            gids: [0; 4],
            groups: vec![],
            cwd: "/".into(),
            umask: 0o22,
            pgid: 7,
            sid: 7,
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
        }
    }

    /// A task file of format 2 as written before locks were saved ends
    /// where the locks would start: refused with a clear reason, never
    /// misread.
    #[test]
    fn task_file_without_locks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        std::fs::write(&p, encode(FileKind::Task, &old_task()).unwrap()).unwrap();
        let e = read_file::<TaskImage>(&p, FileKind::Task).err().unwrap();
        assert!(e.to_string().contains("bad metadata"), "{e}");
    }
}
