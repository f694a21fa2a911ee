//! The on-disk image format, whole: every file of a checkpoint, as CRIU's
//! `images/` holds its format. [`describe`](crate::describe) (krg's `crit`)
//! depends on this module alone.
//!
//! Every binary file is a 64-byte header, metadata (postcard) and, in memory
//! files, raw page data. The header holds a magic, the format version, the
//! file kind, where the metadata is and its length, where the raw data
//! starts (page aligned, so restore can read or map pages straight from the
//! file) and its length, and a CRC32 over the header fields and the
//! metadata. Small files put the metadata right after the header; memory
//! files put the pages first (they are copied before the metadata is known)
//! and the metadata after them. Page data is written raw and checked by the
//! CRCs its runs carry (see [`mm`]).
//!
//! - [`app`] — `global_v<SN>.bin`, `node_<N>_v<SN>.bin` (and SysV objects)
//! - [`task`] — `task_<PID>_v<SN>.bin` (and [`held`]: locks, FIFOs, deleted
//!   files, inotify, message queues)
//! - [`mm`] — `task_mm_<PID>_v<SN>.bin`
//! - [`regs`] — registers as stored bytes
//! - [`attrs`] — process attributes of the task file (version 3)
//! - [`v1`], [`v2`] — the types of format versions 1 and 2, still read
//! - here: the header, encoding and checked decoding, file names

pub mod app;
pub mod attrs;
pub mod held;
pub mod mm;
pub mod regs;
pub mod task;
mod v1;
mod v2;

pub use app::*;
pub use attrs::*;
pub use held::*;
pub use mm::*;
pub use regs::{regs_from_bytes, regs_to_bytes, Regs};
pub use task::*;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use crate::checked_dir::{CheckedDir, OpenedFile};
use crate::error::{ChkptError, Result};

pub const MAGIC: [u8; 8] = *b"KRGCKPT\0";
/// 2: incremental SNs (page runs in a parent SN), a CRC per block of page
/// data, metadata anywhere in the file (after the pages in memory files),
/// frozen time. 3: process attributes in task files ([`TaskAttrs`]).
/// 4: POSIX timers, seccomp and fd-table sharing at the end of task
/// files. 5: files in flight and closing TCP connections at the end of
/// node files ([`InFlight`], [`Shutdown`]), leases among the locks.
/// 6: the PID namespace map at the end of global files. 7: stand-ins
/// at the end of node files ([`StandInEntry`]).
/// Files of every older version are still read.
pub const FORMAT_VERSION: u32 = 7;
pub const HEADER_LEN: usize = 64;
const V1_HEADER_LEN: usize = 48;
pub const PAGE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum FileKind {
    Global = 1,
    Node = 2,
    Task = 3,
    Mm = 4,
}

impl FileKind {
    fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Global),
            2 => Some(Self::Node),
            3 => Some(Self::Task),
            4 => Some(Self::Mm),
            _ => None,
        }
    }
}

/// Metadata of one kind of file, and how to read it from a version 1 file.
pub trait ImageMeta: Serialize + DeserializeOwned {
    type V1: DeserializeOwned;
    fn from_v1(v: Self::V1) -> Self;
    /// Decode the metadata of a version 2 file (the same as today's but
    /// for the task file).
    fn decode_v2(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes(body)
    }
    /// Decode the metadata of a version 3 file (the same as today's but
    /// for the end of the task file).
    fn decode_v3(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes(body)
    }
    /// Decode the metadata of a version 4 file (the same as today's but
    /// for the end of the node file).
    fn decode_v4(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes(body)
    }
    /// Decode the metadata of a version 5 file (the same as today's but
    /// for the end of the global file).
    fn decode_v5(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes(body)
    }
    /// Decode the metadata of a version 6 file (the same as today's but
    /// for the end of the node file).
    fn decode_v6(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes(body)
    }
}

/// The nodes of `global`'s node mask whose node file is in `dir`: every
/// one but those that saved parts of the application (stand-ins' processes),
/// whose files are on those nodes.
pub fn nodes_here(global: &GlobalImage, dir: &CheckedDir, names: &Names) -> Vec<u32> {
    (0..64u32)
        .filter(|n| global.node_mask & (1u64 << n) != 0)
        .filter(|&n| dir.contains(&names.node(n)))
        .collect()
}

/// `body` with `zeros` zero bytes after it: the encoding of trailing
/// fields an older version did not have, each an empty list or a false.
fn with_empty_tail<T: DeserializeOwned>(body: &[u8], zeros: usize) -> postcard::Result<T> {
    let mut b = body.to_vec();
    b.resize(body.len() + zeros, 0);
    postcard::from_bytes(&b)
}

impl ImageMeta for GlobalImage {
    type V1 = v1::GlobalV1;
    fn from_v1(v: v1::GlobalV1) -> Self {
        v.into()
    }
    /// Global files before version 6 end before the PID namespace map
    /// (an empty list: the tree ran in checkpoint's namespace).
    fn decode_v2(body: &[u8]) -> postcard::Result<Self> {
        with_empty_tail(body, 1)
    }
    fn decode_v3(body: &[u8]) -> postcard::Result<Self> {
        with_empty_tail(body, 1)
    }
    fn decode_v4(body: &[u8]) -> postcard::Result<Self> {
        with_empty_tail(body, 1)
    }
    fn decode_v5(body: &[u8]) -> postcard::Result<Self> {
        with_empty_tail(body, 1)
    }
}

impl ImageMeta for MmImage {
    type V1 = v1::MmV1;
    fn from_v1(v: v1::MmV1) -> Self {
        v.into()
    }
}

impl ImageMeta for NodeImage {
    type V1 = v1::NodeV1;
    fn from_v1(v: v1::NodeV1) -> Self {
        v.into()
    }
    /// Node files before version 5 end before the files in flight and
    /// the sockets' extras, and before version 7 before the stand-ins
    /// (empty lists).
    fn decode_v2(body: &[u8]) -> postcard::Result<Self> {
        with_empty_tail(body, 3)
    }
    fn decode_v3(body: &[u8]) -> postcard::Result<Self> {
        with_empty_tail(body, 3)
    }
    fn decode_v4(body: &[u8]) -> postcard::Result<Self> {
        with_empty_tail(body, 3)
    }
    fn decode_v5(body: &[u8]) -> postcard::Result<Self> {
        with_empty_tail(body, 1)
    }
    fn decode_v6(body: &[u8]) -> postcard::Result<Self> {
        with_empty_tail(body, 1)
    }
}

impl ImageMeta for TaskImage {
    type V1 = v1::TaskV1;
    fn from_v1(v: v1::TaskV1) -> Self {
        v.into()
    }
    fn decode_v2(body: &[u8]) -> postcard::Result<Self> {
        v2::decode_task(body)
    }
    /// A version 3 task file ends before the POSIX timers, seccomp
    /// states and fd table sharing: the same bytes and two empty lists
    /// and a false (a zero byte each) are today's.
    fn decode_v3(body: &[u8]) -> postcard::Result<Self> {
        with_empty_tail(body, 3)
    }
}

/// Where things are in a file (all offsets from its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub meta_off: u64,
    pub meta_len: u64,
    /// Page aligned; 0 when there is no data.
    pub data_off: u64,
    pub data_len: u64,
}

/// The 64-byte header of `kind` for `layout` and these metadata bytes:
///
/// ```text
/// 0  8 magic   8 4 version   12 4 kind   16 8 metadata offset
/// 24 8 metadata length   32 8 data offset   40 8 data length
/// 48 4 CRC32 of bytes 0..48 and the metadata   52 12 zero
/// ```
pub fn header(kind: FileKind, layout: Layout, body: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(kind as u32).to_le_bytes());
    h[16..24].copy_from_slice(&layout.meta_off.to_le_bytes());
    h[24..32].copy_from_slice(&layout.meta_len.to_le_bytes());
    h[32..40].copy_from_slice(&layout.data_off.to_le_bytes());
    h[40..48].copy_from_slice(&layout.data_len.to_le_bytes());
    let mut c = crc32fast::Hasher::new();
    c.update(&h[..48]);
    c.update(body);
    h[48..52].copy_from_slice(&c.finalize().to_le_bytes());
    h
}

/// A whole metadata-only file: header, then the metadata.
pub fn encode<T: Serialize>(kind: FileKind, meta: &T) -> Result<Vec<u8>> {
    let body = postcard::to_stdvec(meta)?;
    let layout = Layout {
        meta_off: HEADER_LEN as u64,
        meta_len: body.len() as u64,
        data_off: 0,
        data_len: 0,
    };
    let mut out = header(kind, layout, &body).to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Finish a file whose `data_len` bytes of data were written at
/// `data_off`: the metadata goes right after the data, the header at 0.
/// Returns the file's length.
pub fn finish_with_data<T: Serialize>(
    f: &File,
    path: &Path,
    kind: FileKind,
    meta: &T,
    data_off: u64,
    data_len: u64,
) -> Result<u64> {
    let body = postcard::to_stdvec(meta)?;
    let layout = Layout {
        meta_off: data_off + data_len,
        meta_len: body.len() as u64,
        data_off: if data_len > 0 { data_off } else { 0 },
        data_len,
    };
    let werr = |e| ChkptError::io(path, e);
    f.write_all_at(&body, layout.meta_off).map_err(werr)?;
    f.set_len(layout.meta_off + layout.meta_len).map_err(werr)?;
    f.write_all_at(&header(kind, layout, &body), 0)
        .map_err(werr)?;
    Ok(layout.meta_off + layout.meta_len)
}

/// A decoded file: its metadata and where its raw data is.
pub struct Decoded<T> {
    pub meta: T,
    pub data_off: u64,
    pub data_len: u64,
    /// The format version the file was written in.
    pub version: u32,
}

/// Read and check a whole image file's header and metadata: magic, version,
/// kind, CRC, and that the file is long enough for its raw data.
pub fn read_file<T: ImageMeta>(path: &Path, kind: FileKind) -> Result<Decoded<T>> {
    let mut f = File::open(path).map_err(|e| ChkptError::io(path, e))?;
    let file_len = f.metadata().map_err(|e| ChkptError::io(path, e))?.len();
    read_from(&mut f, path, file_len, kind)
}

/// Read `name` of `dir`: a regular file with a single name, never a
/// symlink. The open file comes back too (its owner, its page data).
pub fn read_in<T: ImageMeta>(
    dir: &CheckedDir,
    name: &str,
    kind: FileKind,
) -> Result<(Decoded<T>, OpenedFile)> {
    let mut f = dir.open_file(name)?;
    let d = read_from(&mut f.file, &f.path, f.len, kind)?;
    Ok((d, f))
}

/// [`read_file`] on a file already open (`path` names it in errors).
pub fn read_from<T: ImageMeta>(
    f: &mut File,
    path: &Path,
    file_len: u64,
    kind: FileKind,
) -> Result<Decoded<T>> {
    let mut hdr = [0u8; HEADER_LEN];
    let got = f.read(&mut hdr).unwrap_or(0);
    if got < 12 || hdr[..8] != MAGIC {
        return Err(if got < 12 {
            ChkptError::bad_image(path, "truncated header")
        } else {
            ChkptError::bad_image(path, "not a krg checkpoint image (bad magic)")
        });
    }
    let version = le_u32(&hdr[8..]);
    // (layout, stored CRC, header bytes the CRC covers)
    let (layout, crc, hlen) = match version {
        1 => v1_layout(path, &hdr[..got])?,
        2..=FORMAT_VERSION => {
            if got < HEADER_LEN {
                f.read_exact(&mut hdr[got..])
                    .map_err(|_| ChkptError::bad_image(path, "truncated header"))?;
            }
            let l = Layout {
                meta_off: le_u64(&hdr[16..]),
                meta_len: le_u64(&hdr[24..]),
                data_off: le_u64(&hdr[32..]),
                data_len: le_u64(&hdr[40..]),
            };
            (l, le_u32(&hdr[48..]), 48)
        }
        v => {
            return Err(ChkptError::bad_image(
                path,
                format!(
                    "unknown format version {v} (this build reads versions 1 to {FORMAT_VERSION})"
                ),
            ))
        }
    };
    let k = le_u32(&hdr[12..]);
    if FileKind::from_u32(k) != Some(kind) {
        return Err(ChkptError::bad_image(
            path,
            format!("wrong file kind {k}, expected {}", kind as u32),
        ));
    }
    check_layout(path, layout, file_len, version)?;
    let mut body = vec![0u8; layout.meta_len as usize];
    f.read_exact_at(&mut body, layout.meta_off)
        .map_err(|_| ChkptError::bad_image(path, "truncated metadata"))?;
    let mut h = crc32fast::Hasher::new();
    h.update(&hdr[..hlen]);
    h.update(&body);
    if h.finalize() != crc {
        return Err(ChkptError::bad_image(path, "CRC mismatch (file corrupted)"));
    }
    let bad = |e: postcard::Error| ChkptError::bad_image(path, format!("bad metadata: {e}"));
    let meta = if version == 1 {
        T::from_v1(postcard::from_bytes(&body).map_err(bad)?)
    } else if version == 2 {
        T::decode_v2(&body).map_err(bad)?
    } else if version == 3 {
        T::decode_v3(&body).map_err(bad)?
    } else if version == 4 {
        T::decode_v4(&body).map_err(bad)?
    } else if version == 5 {
        T::decode_v5(&body).map_err(bad)?
    } else if version == 6 {
        T::decode_v6(&body).map_err(bad)?
    } else {
        postcard::from_bytes(&body).map_err(bad)?
    };
    Ok(Decoded {
        meta,
        data_off: layout.data_off,
        data_len: layout.data_len,
        version,
    })
}

/// Version 1 header: 48 bytes, metadata right after it, CRC at 40 over
/// bytes 0..40 and the metadata.
fn v1_layout(path: &Path, hdr: &[u8]) -> Result<(Layout, u32, usize)> {
    if hdr.len() < V1_HEADER_LEN {
        return Err(ChkptError::bad_image(path, "truncated header"));
    }
    let l = Layout {
        meta_off: V1_HEADER_LEN as u64,
        meta_len: le_u64(&hdr[16..]),
        data_off: le_u64(&hdr[24..]),
        data_len: le_u64(&hdr[32..]),
    };
    Ok((l, le_u32(&hdr[40..]), 40))
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Metadata and data inside the file, apart, data page aligned.
fn check_layout(path: &Path, l: Layout, file_len: u64, version: u32) -> Result<()> {
    let min = if version == 1 {
        V1_HEADER_LEN
    } else {
        HEADER_LEN
    } as u64;
    let meta_end = l.meta_off.checked_add(l.meta_len);
    let data_end = l.data_off.checked_add(l.data_len);
    let (Some(me), Some(de)) = (meta_end, data_end) else {
        return Err(ChkptError::bad_image(path, "truncated file"));
    };
    if l.meta_off < min || me > file_len || (l.data_len > 0 && de > file_len) {
        return Err(ChkptError::bad_image(path, "truncated file"));
    }
    if l.data_len > 0
        && (l.data_off < min || l.data_off % PAGE != 0 || (l.meta_off < de && l.data_off < me))
    {
        return Err(ChkptError::bad_image(path, "data and metadata overlap"));
    }
    Ok(())
}

/// Write a small (metadata only) image file `name` in `dir`, 0600, new.
pub fn write_small<T: Serialize>(
    dir: &CheckedDir,
    name: &str,
    kind: FileKind,
    meta: &T,
) -> Result<()> {
    let bytes = encode(kind, meta)?;
    let mut f = dir.create_file(name)?;
    f.write_all(&bytes)
        .map_err(|e| ChkptError::io(dir.join(name), e))?;
    Ok(())
}

/// File names of one checkpoint SN (relative to its application directory).
pub struct Names {
    pub sn: u32,
}

impl Names {
    pub fn global(&self) -> String {
        format!("global_v{}.bin", self.sn)
    }
    pub fn description(&self) -> String {
        format!("description_v{}.txt", self.sn)
    }
    pub fn node(&self, n: u32) -> String {
        format!("node_{n}_v{}.bin", self.sn)
    }
    pub fn task(&self, pid: i32) -> String {
        format!("task_{pid}_v{}.bin", self.sn)
    }
    pub fn task_mm(&self, pid: i32) -> String {
        format!("task_mm_{pid}_v{}.bin", self.sn)
    }
}

#[cfg(test)]
mod tests;
