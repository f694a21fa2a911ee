//! The memory file, `task_mm_<PID>_v<SN>.bin`: the mappings of a process,
//! its mm bounds and auxv, and its saved pages, raw and page aligned.
//!
//! A page run either holds its pages in this file (with a CRC32 per
//! [`CRC_BLOCK`]-aligned block of them) or says they are unchanged since the
//! parent SN of this process ([`MmImage::parent`]), whose memory file holds
//! them (or says the same of its own parent): SNs form a chain. A run may
//! also say its pages are those of the parent *process* ([`RunData::Cow`]).

use serde::{Deserialize, Serialize};

use super::PAGE;

/// `task_mm_<PID>_v<SN>.bin` metadata; page data follows, page aligned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MmImage {
    pub vmas: Vec<Vma>,
    pub params: MmParams,
    /// Pending signals shared by the process.
    pub shared_pending: Vec<Vec<u8>>,
    /// The SN whose memory file of this process holds the runs marked
    /// [`RunData::Parent`]; `None` for a self-contained (full) image.
    pub parent: Option<u32>,
    /// krg's dirty-page tracker left in the process when it was saved.
    pub tracker: Option<Tracker>,
    /// Start time of the process (clock ticks after boot, field 22 of
    /// /proc/PID/stat): with the PID, its identity from one SN to the next.
    pub start_time: u64,
    /// How long the task was frozen while this SN was taken, in microseconds.
    pub frozen_us: u64,
}

/// The userfaultfd (asynchronous write protection) krg leaves in a process
/// to learn which pages change until the next SN: its fd number there and
/// its inode (each userfaultfd has its own).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tracker {
    pub fd: i32,
    pub ino: u64,
}

/// What `prctl(PR_SET_MM_MAP)` needs, from /proc/PID/stat and auxv.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct MmParams {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    pub shared: bool,
    pub kind: VmaKind,
    /// Saved pages, in address order.
    pub runs: Vec<PageRun>,
}

impl Vma {
    /// Can a child hold pages of this mapping shared with its parent
    /// ([`RunData::Cow`])? Private, anonymous or of a file: what a fork
    /// leaves, and what restore can hand down.
    pub fn inheritable(&self) -> bool {
        !self.shared
            && matches!(
                self.kind,
                VmaKind::Anon
                    | VmaKind::Heap
                    | VmaKind::Stack
                    | VmaKind::File { .. }
                    | VmaKind::DeletedFile { .. }
            )
    }

    /// The same mapping as `other` (protection aside: restore sets it; a
    /// deleted file's content is on one of its mappings only).
    pub fn same_mapping(&self, other: &Vma) -> bool {
        let same_kind = match (&self.kind, &other.kind) {
            (
                VmaKind::DeletedFile {
                    ino: a, offset: x, ..
                },
                VmaKind::DeletedFile {
                    ino: b, offset: y, ..
                },
            ) => a == b && x == y,
            (a, b) => a == b,
        };
        self.start == other.start
            && self.end == other.end
            && self.shared == other.shared
            && same_kind
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum VmaKind {
    Anon,
    Heap,
    Stack,
    File {
        path: String,
        offset: u64,
        size: u64,
    },
    /// MAP_SHARED anonymous memory (also memfd): `id` is the shmem inode at
    /// checkpoint time, `pgoff` the byte offset into the object. Pages are
    /// saved once per object range (`runs` of one VMA); every VMA maps the
    /// one object created at restart.
    SharedAnon {
        id: u64,
        pgoff: u64,
    },
    /// A whole SysV shm segment attached here (shmat).
    SysvShm {
        shmid: i32,
    },
    Vdso,
    Vvar,
    VvarVclock,
    Vsyscall,
    /// A regular file deleted while mapped (format 4): restart makes an
    /// unnamed file in its directory with this content and maps it; fds
    /// of the same file (by inode) open that one too. `content` is on the
    /// first mapping of the file in the tree only (empty on the others).
    DeletedFile {
        path: String,
        offset: u64,
        ino: u64,
        mode: u32,
        size: u64,
        content: Vec<u8>,
    },
}

/// Saved pages at consecutive addresses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PageRun {
    pub addr: u64,
    pub pages: u64,
    pub data: RunData,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum RunData {
    /// In this file: at `off` in the data section, consecutive; `crcs[i]`
    /// is the CRC32 of the run's bytes in the i-th [`CRC_BLOCK`]-aligned
    /// block the run touches (counted from the block of `addr`).
    Here { off: u64, crcs: Vec<u32> },
    /// Unchanged since the parent SN: read them from its memory file.
    Parent,
    /// Shared copy-on-write with the parent process (the same physical
    /// pages when checkpointed, from a fork): restore forks this process
    /// from its restored parent and keeps them. Only in a mapping the
    /// parent has at the same place, private, of the same kind.
    Cow,
}

/// Page data is checked in blocks of this many bytes, aligned on their
/// address (a lazily restored page is loaded with the rest of its block).
pub const CRC_BLOCK: u64 = 16 * PAGE;

/// The blocks `[first, last]` (indices of `CRC_BLOCK`s) a run touches.
pub fn run_blocks(addr: u64, pages: u64) -> (u64, u64) {
    let first = addr / CRC_BLOCK;
    let last = (addr + pages.max(1) * PAGE - 1) / CRC_BLOCK;
    (first, last)
}

/// The part of block `b` a run `[addr, addr + pages)` covers, as
/// (address, length).
pub fn block_part(addr: u64, pages: u64, b: u64) -> (u64, u64) {
    let s = (b * CRC_BLOCK).max(addr);
    let e = ((b + 1) * CRC_BLOCK).min(addr + pages * PAGE);
    (s, e.saturating_sub(s))
}

/// Round up to the page size.
pub fn page_align(v: u64) -> u64 {
    v.div_ceil(PAGE) * PAGE
}
