//! `mkfs.kdfs`: formatting a node's directory as a kDFS store (the
//! layout is the parent module's).

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use krg_proto::kdfs::InodeId;
use krg_proto::NodeId;
use nix::sys::stat::{fchmod, fchmodat, mkdirat, FchmodatFlags, Mode};

use super::{
    io_err, open_dir_at, RootMeta, StoreDir, Superblock, INODES, LAYOUT_VERSION, MAX_REPLICAS,
    SUPERBLOCK,
};
use crate::KdfsError;

/// What `mkfs.kdfs` was asked to do.
#[derive(Debug, Clone)]
pub struct MkfsOptions {
    pub dir: PathBuf,
    pub node: NodeId,
    pub root_node: NodeId,
    /// Format even if `dir` is not empty (its content is removed).
    pub force: bool,
    /// Copies of each file of this store (1 to 3).
    pub replicas: u8,
}

/// First local inode number handed out (the root directory takes it on the root node).
pub const FIRST_INO: u64 = 1;

fn check_node_ids(opts: &MkfsOptions) -> Result<(), KdfsError> {
    if opts.replicas == 0 || opts.replicas > MAX_REPLICAS {
        return Err(KdfsError::Invalid(format!(
            "--replicas {}: a store keeps 1 to {MAX_REPLICAS} copies of its files",
            opts.replicas
        )));
    }
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
    Ok(())
}

/// What is in `dir` now: refused unless `force` (nothing changed yet).
fn old_content(dir: &Path, force: bool) -> Result<Vec<PathBuf>, KdfsError> {
    let entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| KdfsError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if !entries.is_empty() && !force {
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
    Ok(entries)
}

fn erase(entries: Vec<PathBuf>) -> Result<(), KdfsError> {
    for p in entries {
        // remove_dir_all does not follow symlinks, even if one is swapped in.
        let r = if p.is_dir() && !p.is_symlink() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(|e| KdfsError::io(&p, e))?;
    }
    Ok(())
}

/// Make `DIR/inodes` (0700) and, on the root node, the root directory
/// (0755, root's, as a fresh file system's root is); its inode id.
fn make_inodes(sd: &StoreDir, node: NodeId, is_root: bool) -> Result<Option<InodeId>, KdfsError> {
    let path = sd.path().join(INODES);
    let private = Mode::from_bits_truncate(0o700);
    mkdirat(sd.fd(), INODES, private).map_err(|e| io_err(&path, e))?;
    let inodes = open_dir_at(sd.fd(), INODES, &path)?;
    // mkdir's mode passed through the umask: set it whatever the umask.
    fchmod(inodes.as_fd(), private).map_err(|e| io_err(&path, e))?;
    if !is_root {
        return Ok(None);
    }
    let name = format!("{FIRST_INO:x}");
    let root_path = path.join(&name);
    let open = Mode::from_bits_truncate(0o755);
    mkdirat(inodes.as_fd(), name.as_str(), open).map_err(|e| io_err(&root_path, e))?;
    fchmodat(
        inodes.as_fd(),
        name.as_str(),
        open,
        FchmodatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err(&root_path, e))?;
    nix::unistd::fsync(inodes.as_fd()).map_err(|e| io_err(&path, e))?;
    Ok(Some(krg_proto::kdfs::inode_id(node, FIRST_INO)))
}

fn new_fs_id() -> u128 {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            break id;
        }
    }
}

/// Format `opts.dir`: owned by root, mode 0700, whatever it was before. On
/// the root node the root directory inode and the root meta-file are
/// created too.
pub fn mkfs(opts: &MkfsOptions) -> Result<Superblock, KdfsError> {
    check_node_ids(opts)?;
    let sd = StoreDir::open(&opts.dir)?;
    old_content(&opts.dir, opts.force)?;
    // Private before anything is erased or made: no one else gets in
    // meanwhile. What was put there before is listed again and erased.
    sd.make_private()?;
    erase(old_content(&opts.dir, true)?)?;
    let is_root = opts.node == opts.root_node;
    let fs_id = if is_root { new_fs_id() } else { 0 };
    let mut next = FIRST_INO;
    if let Some(root) = make_inodes(&sd, opts.node, is_root)? {
        next += 1;
        sd.write_root_meta(&RootMeta { fs_id, root })?;
    }
    sd.write_ino_next(next)?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sb = Superblock {
        fs_id,
        node: opts.node,
        root_node: opts.root_node,
        layout: LAYOUT_VERSION,
        created,
        replicas: opts.replicas,
    };
    // The superblock goes last: a directory with a superblock is complete.
    sd.write_superblock(&sb)?;
    Ok(sb)
}
