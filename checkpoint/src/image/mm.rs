//! The memory file, `task_mm_<PID>_v<SN>.bin`: the mappings of a process,
//! its mm bounds and auxv, then its saved pages, raw and page aligned.

use serde::{Deserialize, Serialize};

use super::PAGE;

/// `task_mm_<PID>_v<SN>.bin` metadata; page data follows, page aligned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MmImage {
    pub vmas: Vec<Vma>,
    pub params: MmParams,
    /// Pending signals shared by the process.
    pub shared_pending: Vec<Vec<u8>>,
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
    /// Saved pages, in address order; `data_off` is relative to the data section.
    pub runs: Vec<PageRun>,
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
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PageRun {
    pub addr: u64,
    pub pages: u64,
    pub data_off: u64,
}

/// Round up to the page size.
pub fn page_align(v: u64) -> u64 {
    v.div_ceil(PAGE) * PAGE
}
