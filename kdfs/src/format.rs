//! On-disk format of a node's kDFS directory.
//!
//! ```text
//! DIR/kdfs.sb      superblock (every node)
//! DIR/root.meta    root meta-file (root node only): id of the root directory
//! DIR/ino.next     next free local inode number (reserved in blocks)
//! DIR/inodes/      one object per local inode, named by its number in hex
//! ```
//!
//! Both meta-files are `MAGIC(8) | version u32 LE | len u32 LE | postcard
//! payload | crc32 u32 LE` (the CRC covers everything before it), written to a
//! temporary name, fsync'ed and renamed into place, so a crash leaves either
//! the old or the new file, and a damaged one is refused.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use krg_proto::kdfs::InodeId;
use krg_proto::NodeId;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::KdfsError;

pub const SUPERBLOCK: &str = "kdfs.sb";
pub const ROOT_META: &str = "root.meta";
pub const INO_NEXT: &str = "ino.next";
pub const INODES: &str = "inodes";

const SB_MAGIC: &[u8; 8] = b"KDFS-SB\0";
const ROOT_MAGIC: &[u8; 8] = b"KDFS-RT\0";
const NEXT_MAGIC: &[u8; 8] = b"KDFS-NX\0";

/// Layout version written by this code; older layouts stay readable.
pub const LAYOUT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    /// Id of the file system; 0 on a non-root node until its first attach
    /// binds it to the root node's file system.
    pub fs_id: u128,
    pub node: NodeId,
    pub root_node: NodeId,
    pub layout: u32,
    /// Seconds since the epoch at mkfs.
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMeta {
    pub fs_id: u128,
    pub root: InodeId,
}

/// Encode `value` as a checked meta-file image.
fn encode<T: Serialize>(magic: &[u8; 8], value: &T) -> Result<Vec<u8>, KdfsError> {
    let payload = postcard::to_stdvec(value)
        .map_err(|e| KdfsError::Invalid(format!("cannot encode meta-file: {e}")))?;
    let mut out = Vec::with_capacity(payload.len() + 20);
    out.extend_from_slice(magic);
    out.extend_from_slice(&LAYOUT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decode and check a meta-file image; `path` names it in errors.
fn decode<T: DeserializeOwned>(magic: &[u8; 8], bytes: &[u8], path: &Path) -> Result<T, KdfsError> {
    let bad = |why: &str| KdfsError::corrupt(path, why.to_string());
    if bytes.len() < 20 {
        return Err(bad("too short to be a kDFS meta-file"));
    }
    if &bytes[..8] != magic {
        return Err(bad("bad magic (not a kDFS meta-file of this kind)"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch (the file is corrupted)"));
    }
    let version = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
    if version == 0 || version > LAYOUT_VERSION {
        return Err(bad(&format!(
            "layout version {version}, this kdfs reads 1..={LAYOUT_VERSION}"
        )));
    }
    let len = u32::from_le_bytes([body[12], body[13], body[14], body[15]]) as usize;
    if len != body.len() - 16 {
        return Err(bad("length field does not match the file size"));
    }
    postcard::from_bytes(&body[16..]).map_err(|e| bad(&format!("undecodable payload: {e}")))
}

/// Write `bytes` to `dir/name` atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), KdfsError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let mut f = File::create(&tmp).map_err(|e| KdfsError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| KdfsError::io(&tmp, e))?;
    f.sync_all().map_err(|e| KdfsError::io(&tmp, e))?;
    fs::rename(&tmp, &dst).map_err(|e| KdfsError::io(&dst, e))?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<(), KdfsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| KdfsError::io(dir, e))
}

fn read_file(path: &Path) -> Result<Vec<u8>, KdfsError> {
    fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            KdfsError::corrupt(path, "missing (is the directory formatted with mkfs.kdfs?)")
        }
        _ => KdfsError::io(path, e),
    })
}

pub fn read_superblock(dir: &Path) -> Result<Superblock, KdfsError> {
    let path = dir.join(SUPERBLOCK);
    decode(SB_MAGIC, &read_file(&path)?, &path)
}

pub fn write_superblock(dir: &Path, sb: &Superblock) -> Result<(), KdfsError> {
    write_atomic(dir, SUPERBLOCK, &encode(SB_MAGIC, sb)?)
}

pub fn read_root_meta(dir: &Path) -> Result<RootMeta, KdfsError> {
    let path = dir.join(ROOT_META);
    decode(ROOT_MAGIC, &read_file(&path)?, &path)
}

pub fn write_root_meta(dir: &Path, meta: &RootMeta) -> Result<(), KdfsError> {
    write_atomic(dir, ROOT_META, &encode(ROOT_MAGIC, meta)?)
}

pub fn read_ino_next(dir: &Path) -> Result<u64, KdfsError> {
    let path = dir.join(INO_NEXT);
    decode(NEXT_MAGIC, &read_file(&path)?, &path)
}

pub fn write_ino_next(dir: &Path, next: u64) -> Result<(), KdfsError> {
    write_atomic(dir, INO_NEXT, &encode(NEXT_MAGIC, &next)?)
}

/// What `mkfs.kdfs` was asked to do.
#[derive(Debug, Clone)]
pub struct MkfsOptions {
    pub dir: PathBuf,
    pub node: NodeId,
    pub root_node: NodeId,
    /// Format even if `dir` is not empty (its content is removed).
    pub force: bool,
}

/// First local inode number handed out (the root directory takes it on the root node).
pub const FIRST_INO: u64 = 1;

/// Format `opts.dir`. On the root node the root directory inode and the root
/// meta-file are created too.
pub fn mkfs(opts: &MkfsOptions) -> Result<Superblock, KdfsError> {
    let dir = &opts.dir;
    if opts.node == 0 || opts.node > krg_proto::kdfs::MAX_KDFS_NODE {
        return Err(KdfsError::Invalid(format!(
            "node id {} cannot hold a kDFS (ids 1..=65535)",
            opts.node
        )));
    }
    if opts.root_node == 0 || opts.root_node > krg_proto::kdfs::MAX_KDFS_NODE {
        return Err(KdfsError::Invalid(format!(
            "root node id {} is out of range 1..=65535",
            opts.root_node
        )));
    }
    let meta = fs::metadata(dir).map_err(|e| KdfsError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(KdfsError::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| KdfsError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if !entries.is_empty() && !opts.force {
        let what = if dir.join(SUPERBLOCK).exists() {
            "is already formatted"
        } else {
            "is not empty"
        };
        return Err(KdfsError::Invalid(format!(
            "{} {what} (use --force to erase it)",
            dir.display()
        )));
    }
    for p in entries {
        let r = if p.is_dir() && !p.is_symlink() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(|e| KdfsError::io(&p, e))?;
    }
    let inodes = dir.join(INODES);
    fs::create_dir(&inodes).map_err(|e| KdfsError::io(&inodes, e))?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let is_root = opts.node == opts.root_node;
    let fs_id = if is_root {
        loop {
            let id: u128 = rand::random();
            if id != 0 {
                break id;
            }
        }
    } else {
        0
    };
    let mut next = FIRST_INO;
    if is_root {
        let root_path = inodes.join(format!("{next:x}"));
        fs::create_dir(&root_path).map_err(|e| KdfsError::io(&root_path, e))?;
        fs::set_permissions(
            &root_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| KdfsError::io(&root_path, e))?;
        let root = krg_proto::kdfs::inode_id(opts.node, next);
        next += 1;
        sync_dir(&inodes)?;
        write_root_meta(dir, &RootMeta { fs_id, root })?;
    }
    write_ino_next(dir, next)?;
    let sb = Superblock {
        fs_id,
        node: opts.node,
        root_node: opts.root_node,
        layout: LAYOUT_VERSION,
        created,
    };
    // The superblock goes last: a directory with a superblock is complete.
    write_superblock(dir, &sb)?;
    Ok(sb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_roundtrip_and_corruption() {
        let d = tempfile::tempdir().unwrap();
        let sb = mkfs(&MkfsOptions {
            dir: d.path().into(),
            node: 1,
            root_node: 1,
            force: false,
        })
        .unwrap();
        assert_eq!(read_superblock(d.path()).unwrap(), sb);
        let meta = read_root_meta(d.path()).unwrap();
        assert_eq!(meta.fs_id, sb.fs_id);
        // Flip one byte: refused.
        let p = d.path().join(SUPERBLOCK);
        let mut bytes = fs::read(&p).unwrap();
        bytes[20] ^= 0xff;
        fs::write(&p, &bytes).unwrap();
        let err = read_superblock(d.path()).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn mkfs_refuses_non_empty_without_force() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("x"), b"x").unwrap();
        let opts = MkfsOptions {
            dir: d.path().into(),
            node: 2,
            root_node: 1,
            force: false,
        };
        assert!(mkfs(&opts).unwrap_err().to_string().contains("not empty"));
        let sb = mkfs(&MkfsOptions {
            force: true,
            ..opts.clone()
        })
        .unwrap();
        assert_eq!(sb.fs_id, 0);
        assert!(!d.path().join(ROOT_META).exists());
        assert!(mkfs(&opts)
            .unwrap_err()
            .to_string()
            .contains("already formatted"));
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            let _ = decode::<Superblock>(SB_MAGIC, &bytes, Path::new("x"));
        }
    }
}
