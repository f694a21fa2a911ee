//! The on-disk image format, whole: every file of a checkpoint, as CRIU's
//! `images/` holds its format. [`describe`](crate::describe) (krg's `crit`)
//! depends on this module alone.
//!
//! Every binary file is `Header | metadata (postcard) | padding | raw data`.
//! The header holds a magic, the format version, the file kind, the metadata
//! length, where the raw data starts (page aligned, so restore can read or
//! map pages straight from the file) and its length, and a CRC32 over the
//! header fields and the metadata. Page data is written raw.
//!
//! - [`app`] — `global_v<SN>.bin`, `node_<N>_v<SN>.bin` (and SysV objects)
//! - [`task`] — `task_<PID>_v<SN>.bin`
//! - [`mm`] — `task_mm_<PID>_v<SN>.bin`
//! - [`regs`] — registers as stored bytes
//! - here: the header, encoding and checked decoding, file names

pub mod app;
pub mod mm;
pub mod regs;
pub mod task;

pub use app::*;
pub use mm::*;
pub use regs::{regs_from_bytes, regs_to_bytes, Regs};
pub use task::*;

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use crate::checked_dir::{CheckedDir, OpenedFile};
use crate::error::{ChkptError, Result};

pub const MAGIC: [u8; 8] = *b"KRGCKPT\0";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 48;
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

/// Encode a header + metadata; the caller appends `data_len` bytes of raw data
/// at the returned data offset (0 when there is none).
pub fn encode<T: Serialize>(kind: FileKind, meta: &T, data_len: u64) -> Result<(Vec<u8>, u64)> {
    let body = postcard::to_stdvec(meta)?;
    let meta_end = (HEADER_LEN + body.len()) as u64;
    let data_off = if data_len > 0 {
        page_align(meta_end)
    } else {
        0
    };
    let mut out = Vec::with_capacity(if data_len > 0 {
        data_off as usize
    } else {
        meta_end as usize
    });
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&data_off.to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out);
    h.update(&body);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&body);
    if data_len > 0 {
        out.resize(data_off as usize, 0);
    }
    Ok((out, data_off))
}

/// A decoded file: its metadata and where its raw data is.
pub struct Decoded<T> {
    pub meta: T,
    pub data_off: u64,
    pub data_len: u64,
}

/// Read and check a whole image file's header and metadata: magic, version,
/// kind, CRC, and that the file is long enough for its raw data.
pub fn read_file<T: DeserializeOwned>(path: &Path, kind: FileKind) -> Result<Decoded<T>> {
    let mut f = File::open(path).map_err(|e| ChkptError::io(path, e))?;
    let file_len = f.metadata().map_err(|e| ChkptError::io(path, e))?.len();
    read_from(&mut f, path, file_len, kind)
}

/// Read `name` of `dir`: a regular file with a single name, never a
/// symlink. The open file comes back too (its owner, its page data).
pub fn read_in<T: DeserializeOwned>(
    dir: &CheckedDir,
    name: &str,
    kind: FileKind,
) -> Result<(Decoded<T>, OpenedFile)> {
    let mut f = dir.open_file(name)?;
    let d = read_from(&mut f.file, &f.path, f.len, kind)?;
    Ok((d, f))
}

/// [`read_file`] on a file already open (`path` names it in errors).
pub fn read_from<T: DeserializeOwned>(
    f: &mut File,
    path: &Path,
    file_len: u64,
    kind: FileKind,
) -> Result<Decoded<T>> {
    let mut hdr = [0u8; HEADER_LEN];
    f.read_exact(&mut hdr)
        .map_err(|_| ChkptError::bad_image(path, "truncated header"))?;
    let (meta_len, data_off, data_len) = check_header(path, &hdr, kind, file_len)?;
    let mut body = vec![0u8; meta_len as usize];
    f.read_exact(&mut body)
        .map_err(|_| ChkptError::bad_image(path, "truncated metadata"))?;
    let mut h = crc32fast::Hasher::new();
    h.update(&hdr[..40]);
    h.update(&body);
    let crc = u32::from_le_bytes([hdr[40], hdr[41], hdr[42], hdr[43]]);
    if h.finalize() != crc {
        return Err(ChkptError::bad_image(path, "CRC mismatch (file corrupted)"));
    }
    let meta = postcard::from_bytes(&body)
        .map_err(|e| ChkptError::bad_image(path, format!("bad metadata: {e}")))?;
    Ok(Decoded {
        meta,
        data_off,
        data_len,
    })
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn check_header(
    path: &Path,
    hdr: &[u8; HEADER_LEN],
    kind: FileKind,
    file_len: u64,
) -> Result<(u64, u64, u64)> {
    if hdr[..8] != MAGIC {
        return Err(ChkptError::bad_image(
            path,
            "not a krg checkpoint image (bad magic)",
        ));
    }
    let version = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    if version != FORMAT_VERSION {
        return Err(ChkptError::bad_image(
            path,
            format!("unknown format version {version} (this build reads version {FORMAT_VERSION})"),
        ));
    }
    let k = u32::from_le_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
    if FileKind::from_u32(k) != Some(kind) {
        return Err(ChkptError::bad_image(
            path,
            format!("wrong file kind {k}, expected {}", kind as u32),
        ));
    }
    let meta_len = le_u64(&hdr[16..]);
    let data_off = le_u64(&hdr[24..]);
    let data_len = le_u64(&hdr[32..]);
    let meta_end = (HEADER_LEN as u64).checked_add(meta_len);
    let need = if data_len > 0 {
        data_off.checked_add(data_len)
    } else {
        meta_end
    };
    match (meta_end, need) {
        (Some(me), Some(n))
            if me <= file_len && n <= file_len && (data_len == 0 || data_off >= me) => {}
        _ => return Err(ChkptError::bad_image(path, "truncated file")),
    }
    Ok((meta_len, data_off, data_len))
}

/// Write a small (metadata only) image file `name` in `dir`, 0600, new.
pub fn write_small<T: Serialize>(
    dir: &CheckedDir,
    name: &str,
    kind: FileKind,
    meta: &T,
) -> Result<()> {
    let (bytes, _) = encode(kind, meta, 0)?;
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
mod tests {
    use super::*;

    fn sample() -> GlobalImage {
        GlobalImage {
            app_id: 42,
            sn: 3,
            node_mask: 2,
            created_unix: 1,
            uid: 0,
            kernel: "6.18".into(),
        }
    }

    #[test]
    fn roundtrip_and_crc() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.bin");
        let d = CheckedDir::open(dir.path()).unwrap();
        write_small(&d, "g.bin", FileKind::Global, &sample()).unwrap();
        let d: Decoded<GlobalImage> = read_file(&p, FileKind::Global).unwrap();
        assert_eq!(d.meta, sample());
        // flip one byte of metadata: CRC must catch it
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        std::fs::write(&p, &b).unwrap();
        let e = read_file::<GlobalImage>(&p, FileKind::Global)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("CRC"), "{e}");
    }

    #[test]
    fn version_kind_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.bin");
        let (mut b, _) = encode(FileKind::Global, &sample(), 0).unwrap();
        b[8] = 99;
        std::fs::write(&p, &b).unwrap();
        assert!(read_file::<GlobalImage>(&p, FileKind::Global)
            .err()
            .unwrap()
            .to_string()
            .contains("version 99"));
        b[8] = FORMAT_VERSION as u8;
        std::fs::write(&p, &b[..b.len() - 2]).unwrap();
        assert!(read_file::<GlobalImage>(&p, FileKind::Global)
            .err()
            .unwrap()
            .to_string()
            .contains("truncated"));
        std::fs::write(&p, &b).unwrap();
        assert!(read_file::<GlobalImage>(&p, FileKind::Task)
            .err()
            .unwrap()
            .to_string()
            .contains("kind"));
        let (b, off) = encode(FileKind::Mm, &sample(), 8192).unwrap();
        assert_eq!(off % PAGE, 0);
        std::fs::write(&p, &b).unwrap();
        assert!(read_file::<GlobalImage>(&p, FileKind::Mm)
            .err()
            .unwrap()
            .to_string()
            .contains("truncated"));
    }

    proptest::proptest! {
        /// Any bytes: decoding fails cleanly or succeeds, never panics.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), flip in 0usize..600) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x.bin");
            std::fs::write(&p, &bytes).unwrap();
            let _ = read_file::<MmImage>(&p, FileKind::Mm);
            // a valid file with one byte changed is refused
            let (mut good, _) = encode(FileKind::Global, &sample(), 0).unwrap();
            let i = flip % good.len();
            good[i] ^= 0x01;
            std::fs::write(&p, &good).unwrap();
            let r = read_file::<GlobalImage>(&p, FileKind::Global);
            proptest::prop_assert!(r.is_err() || (40..48).contains(&i));
        }
    }
}
