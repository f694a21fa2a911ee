//! The storage engine a krgd runs against its formatted local directory.
//!
//! Every local inode is one object `DIR/inodes/<hex number>` of the same type
//! (regular file, directory, symlink, fifo, device, socket), so that mode,
//! owner, size, times and data are kept by the local file system itself and a
//! `getattr` is one `lstat`. What the local file system cannot know is kept in
//! `trusted.` xattrs: the kDFS link count of a non-directory (entries may sit
//! on other nodes) and the number of subdirectories of a directory.
//!
//! A directory's entries are symlinks inside its object whose target encodes
//! the entry: kind letter + hex [`InodeId`] (`f2000000000a3`). Creating,
//! replacing and removing an entry are therefore single atomic local
//! operations (symlink, rename, unlink), and a rename between two directories
//! of the same node is one `renameat2`.

mod sys;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use krg_proto::kdfs::{
    inode_id, inode_local, inode_node, Attr, Bytes, DirEntry, FileKind, InodeId, KdfsRequest,
    KdfsResponse, NewInode, RemoveWhat, SetAttr, Time,
};
use krg_proto::NodeId;

use crate::format::{self, Superblock, INODES};
use crate::KdfsError;

const NLINK_XATTR: &str = "trusted.kdfs.nlink";
const NSUB_XATTR: &str = "trusted.kdfs.nsub";
/// Local inode numbers are reserved on disk this many at a time.
const INO_BLOCK: u64 = 4096;
const LOCK_STRIPES: usize = 64;

type Res<T> = Result<T, i32>;

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn kind_letter(k: FileKind) -> char {
    match k {
        FileKind::File => 'f',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::CharDev => 'c',
        FileKind::BlockDev => 'b',
        FileKind::Socket => 's',
    }
}

fn letter_kind(c: u8) -> Option<FileKind> {
    Some(match c {
        b'f' => FileKind::File,
        b'd' => FileKind::Dir,
        b'l' => FileKind::Symlink,
        b'p' => FileKind::Fifo,
        b'c' => FileKind::CharDev,
        b'b' => FileKind::BlockDev,
        b's' => FileKind::Socket,
        _ => return None,
    })
}

fn encode_entry(ino: InodeId, kind: FileKind) -> String {
    format!("{}{ino:x}", kind_letter(kind))
}

fn decode_entry(target: &[u8]) -> Option<(InodeId, FileKind)> {
    let (&k, hex) = target.split_first()?;
    let kind = letter_kind(k)?;
    let ino = u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    Some((ino, kind))
}

fn kind_of(ft: fs::FileType) -> FileKind {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_char_device() {
        FileKind::CharDev
    } else if ft.is_block_device() {
        FileKind::BlockDev
    } else if ft.is_socket() {
        FileKind::Socket
    } else {
        FileKind::File
    }
}

fn check_name(name: &[u8]) -> Res<&OsStr> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(libc::EINVAL);
    }
    if name.len() > 255 {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(OsStr::from_bytes(name))
}

/// Where local inode `local` lives in a store's inode directory.
pub fn object_path(inodes: &Path, local: u64) -> PathBuf {
    inodes.join(format!("{local:x}"))
}

/// Read up to `len` bytes of `f` at `offset` (short only at end of file).
pub fn read_at(f: &File, offset: u64, len: u32) -> Res<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(errno(e)),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Write all of `data` to `f` at `offset`.
pub fn write_at(f: &File, offset: u64, data: &[u8]) -> Res<u32> {
    f.write_all_at(data, offset).map_err(errno)?;
    Ok(data.len() as u32)
}

/// fsync (or, with `datasync`, fdatasync) `f`.
pub fn sync_file(f: &File, datasync: bool) -> Res<()> {
    if datasync {
        f.sync_data()
    } else {
        f.sync_all()
    }
    .map_err(errno)
}

enum Handle {
    File { local: u64, file: Arc<File> },
    Dir { entries: Arc<Vec<DirEntry>> },
}

/// An attached kDFS directory.
pub struct Store {
    dir: PathBuf,
    inodes: PathBuf,
    sb: Superblock,
    root: Option<InodeId>,
    /// (next free local inode number, end of the reserved block).
    alloc: Mutex<(u64, u64)>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Open file handles per local inode: an inode whose last link goes away
    /// stays on disk until its last handle is released.
    open_count: Mutex<HashMap<u64, usize>>,
    next_fh: AtomicU64,
    stripes: Vec<Mutex<()>>,
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// Open `dir` for node `node`. `fs_id` is the file system's id as the root
    /// node reports it; a non-root store formatted before it knew the id is
    /// bound to it here.
    pub fn open(dir: &Path, node: NodeId, fs_id: Option<u128>) -> Result<Store, KdfsError> {
        let mut store = Self::load(dir, node)?;
        match (store.sb.fs_id, fs_id) {
            (0, None) => {
                return Err(KdfsError::Invalid(format!(
                    "{} has not joined a file system yet: attach it with the root node's file system id",
                    dir.display()
                )))
            }
            (0, Some(id)) => {
                store.sb.fs_id = id;
                format::write_superblock(dir, &store.sb)?;
            }
            (have, Some(want)) if have != want => {
                return Err(KdfsError::Invalid(format!(
                    "{} belongs to file system {have:032x}, not to {want:032x} served by the root node",
                    dir.display()
                )))
            }
            _ => {}
        }
        let next = format::read_ino_next(dir)?;
        store.alloc = Mutex::new((next, next));
        store.sweep_orphans();
        Ok(store)
    }

    /// A read-only view of `dir`, for the FUSE client of the node whose krgd
    /// serves it: the client answers [`Store::is_read_only`] requests on its
    /// own inodes in-process instead of asking krgd. Unlike [`Store::open`]
    /// it writes nothing; it must only be given read-only requests.
    pub fn view(dir: &Path, node: NodeId) -> Result<Store, KdfsError> {
        Self::load(dir, node)
    }

    /// Requests that only read the local file system and need no state of
    /// the serving krgd (its open-file counts, its locks, its allocator).
    /// Directory handles are a snapshot of the entries, kept by whoever
    /// opened them.
    pub fn is_read_only(req: &KdfsRequest) -> bool {
        use KdfsRequest as Q;
        matches!(
            req,
            Q::GetAttr { .. }
                | Q::Lookup { .. }
                | Q::Readlink { .. }
                | Q::IsEmptyDir { .. }
                | Q::OpenDir { .. }
                | Q::ReadDir { .. }
                | Q::ReleaseDir { .. }
        )
    }

    /// Read and check the superblock and, on the root node, the root
    /// meta-file; no allocation block is reserved yet.
    fn load(dir: &Path, node: NodeId) -> Result<Store, KdfsError> {
        let sb = format::read_superblock(dir)?;
        if sb.node != node {
            return Err(KdfsError::Invalid(format!(
                "{} was formatted for node {}, this is node {node}",
                dir.display(),
                sb.node
            )));
        }
        let inodes = dir.join(INODES);
        let root = if sb.root_node == node {
            let meta = format::read_root_meta(dir)?;
            if meta.fs_id != sb.fs_id {
                return Err(KdfsError::corrupt(
                    dir.join(format::ROOT_META),
                    "file system id differs from the superblock's",
                ));
            }
            let root_path = object_path(&inodes, inode_local(meta.root));
            if inode_node(meta.root) != node || !root_path.is_dir() {
                return Err(KdfsError::corrupt(
                    dir.join(format::ROOT_META),
                    "names a root directory that does not exist",
                ));
            }
            Some(meta.root)
        } else {
            None
        };
        if !inodes.is_dir() {
            return Err(KdfsError::corrupt(&inodes, "missing inode directory"));
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            inodes,
            sb,
            root,
            alloc: Mutex::new((0, 0)),
            handles: Mutex::new(HashMap::new()),
            open_count: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    /// The directory of inode objects.
    pub fn inodes(&self) -> &Path {
        &self.inodes
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Remove inodes that lost their last link while open before a crash.
    fn sweep_orphans(&self) {
        let Ok(rd) = fs::read_dir(&self.inodes) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            if e.file_name().as_bytes().starts_with(b".tmp-") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(true);
            if !is_dir && matches!(sys::get_u64_xattr(&path, NLINK_XATTR), Ok(Some(0))) {
                tracing::info!(path = %path.display(), "removing orphan inode");
                let _ = fs::remove_file(&path);
            }
        }
    }

    fn node(&self) -> NodeId {
        self.sb.node
    }

    /// Path of the object of `ino`, which must be owned here.
    fn path(&self, ino: InodeId) -> Res<PathBuf> {
        if inode_node(ino) != self.node() {
            return Err(libc::EXDEV);
        }
        Ok(object_path(&self.inodes, inode_local(ino)))
    }

    fn stripe(&self, ino: InodeId) -> &Mutex<()> {
        &self.stripes[(inode_local(ino) as usize) % LOCK_STRIPES]
    }

    /// Lock the stripes of several inodes in a fixed order (no deadlock).
    fn lock_many(&self, inos: &[InodeId]) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = inos
            .iter()
            .map(|i| (inode_local(*i) as usize) % LOCK_STRIPES)
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| lock(&self.stripes[i])).collect()
    }

    fn alloc_ino(&self) -> Res<InodeId> {
        let mut a = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
        if a.0 >= a.1 {
            let end = a.1 + INO_BLOCK;
            format::write_ino_next(&self.dir, end).map_err(|_| libc::EIO)?;
            a.1 = end;
        }
        let local = a.0;
        a.0 += 1;
        Ok(inode_id(self.node(), local))
    }

    fn attr_of(&self, ino: InodeId, path: &Path) -> Res<Attr> {
        let m = fs::symlink_metadata(path).map_err(errno)?;
        let kind = kind_of(m.file_type());
        let nlink = if kind == FileKind::Dir {
            2 + sys::get_u64_xattr(path, NSUB_XATTR)
                .map_err(errno)?
                .unwrap_or(0)
        } else {
            sys::get_u64_xattr(path, NLINK_XATTR)
                .map_err(errno)?
                .unwrap_or(1)
        };
        Ok(Attr {
            ino,
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: nlink.min(u64::from(u32::MAX)) as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            size: m.size(),
            blocks: m.blocks(),
            atime: Time {
                sec: m.atime(),
                nsec: m.atime_nsec() as u32,
            },
            mtime: Time {
                sec: m.mtime(),
                nsec: m.mtime_nsec() as u32,
            },
            ctime: Time {
                sec: m.ctime(),
                nsec: m.ctime_nsec() as u32,
            },
        })
    }

    fn getattr(&self, ino: InodeId) -> Res<Attr> {
        let p = self.path(ino)?;
        self.attr_of(ino, &p)
    }

    fn dir_path(&self, dir: InodeId) -> Res<PathBuf> {
        let p = self.path(dir)?;
        let m = fs::symlink_metadata(&p).map_err(errno)?;
        if !m.is_dir() {
            return Err(libc::ENOTDIR);
        }
        Ok(p)
    }

    fn read_entry(&self, dir_path: &Path, name: &OsStr) -> Res<Option<(InodeId, FileKind)>> {
        match fs::read_link(dir_path.join(name)) {
            Ok(t) => decode_entry(t.as_os_str().as_bytes())
                .map(Some)
                .ok_or(libc::EIO),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    fn adjust_nsub(&self, dir_path: &Path, delta: i64) -> Res<()> {
        let cur = sys::get_u64_xattr(dir_path, NSUB_XATTR)
            .map_err(errno)?
            .unwrap_or(0) as i64;
        sys::set_u64_xattr(dir_path, NSUB_XATTR, (cur + delta).max(0) as u64).map_err(errno)
    }

    /// Create the object of a new inode (one link, in no directory yet).
    fn make_inode(&self, new: &NewInode) -> Res<Attr> {
        let ino = self.alloc_ino()?;
        let path = self.path(ino)?;
        let perm = u32::from(new.perm) & 0o7777;
        match new.kind {
            FileKind::File => {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(errno)?;
                drop(f);
            }
            FileKind::Dir => fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(errno)?,
            FileKind::Symlink => {
                let target = new.target.as_deref().ok_or(libc::EINVAL)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &path).map_err(errno)?;
            }
            FileKind::Fifo => sys::mknod(&path, libc::S_IFIFO | 0o600, 0).map_err(errno)?,
            FileKind::Socket => sys::mknod(&path, libc::S_IFSOCK | 0o600, 0).map_err(errno)?,
            FileKind::CharDev => {
                sys::mknod(&path, libc::S_IFCHR | 0o600, new.rdev).map_err(errno)?
            }
            FileKind::BlockDev => {
                sys::mknod(&path, libc::S_IFBLK | 0o600, new.rdev).map_err(errno)?
            }
        }
        let finish = || -> Res<()> {
            sys::lchown(&path, Some(new.uid), Some(new.gid)).map_err(errno)?;
            if new.kind != FileKind::Symlink {
                // After chown, which may clear set-id bits.
                fs::set_permissions(&path, fs::Permissions::from_mode(perm)).map_err(errno)?;
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = self.remove_object(&path);
            return Err(e);
        }
        self.attr_of(ino, &path)
    }

    fn remove_object(&self, path: &Path) -> io::Result<()> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => fs::remove_dir(path),
            _ => fs::remove_file(path),
        }
    }

    /// A symlink standing for a new entry, made outside any directory so that
    /// it can be renamed into place atomically.
    fn temp_entry(&self, ino: InodeId, kind: FileKind) -> Res<PathBuf> {
        let tmp = self
            .inodes
            .join(format!(".tmp-{:016x}", rand::random::<u64>()));
        std::os::unix::fs::symlink(encode_entry(ino, kind), &tmp).map_err(errno)?;
        Ok(tmp)
    }

    fn create(&self, dir: InodeId, name: &[u8], new: &NewInode) -> Res<Attr> {
        let name = check_name(name)?;
        let dp = self.dir_path(dir)?;
        let _g = lock(self.stripe(dir));
        if self.read_entry(&dp, name)?.is_some() {
            return Err(libc::EEXIST);
        }
        let mut new = new.clone();
        let dm = fs::metadata(&dp).map_err(errno)?;
        if dm.mode() & libc::S_ISGID != 0 {
            new.gid = dm.gid();
            if new.kind == FileKind::Dir {
                new.perm |= libc::S_ISGID as u16;
            }
        }
        let attr = self.make_inode(&new)?;
        let entry = dp.join(name);
        if let Err(e) = std::os::unix::fs::symlink(encode_entry(attr.ino, attr.kind), &entry) {
            let _ = self.remove_object(&self.path(attr.ino)?);
            return Err(errno(e));
        }
        if attr.kind == FileKind::Dir {
            self.adjust_nsub(&dp, 1)?;
        }
        Ok(attr)
    }

    fn add_entry(
        &self,
        dir: InodeId,
        name: &[u8],
        ino: InodeId,
        kind: FileKind,
        replace: bool,
    ) -> Res<Option<DirEntry>> {
        let name = check_name(name)?;
        let dp = self.dir_path(dir)?;
        let _g = lock(self.stripe(dir));
        let old = self.read_entry(&dp, name)?;
        let entry = dp.join(name);
        match old {
            None => {
                std::os::unix::fs::symlink(encode_entry(ino, kind), &entry).map_err(errno)?;
            }
            Some(_) if !replace => return Err(libc::EEXIST),
            Some((old_ino, old_kind)) => {
                check_replace(kind, old_kind)?;
                if old_ino == ino {
                    return Ok(None);
                }
                let tmp = self.temp_entry(ino, kind)?;
                if let Err(e) = fs::rename(&tmp, &entry) {
                    let _ = fs::remove_file(&tmp);
                    return Err(errno(e));
                }
            }
        }
        let replaced_dir = matches!(old, Some((_, FileKind::Dir)));
        if kind == FileKind::Dir && !replaced_dir {
            self.adjust_nsub(&dp, 1)?;
        }
        Ok(old.map(|(i, k)| DirEntry {
            name: name.as_bytes().to_vec(),
            ino: i,
            kind: k,
        }))
    }

    fn remove_entry(
        &self,
        dir: InodeId,
        name: &[u8],
        what: RemoveWhat,
        expect: Option<InodeId>,
    ) -> Res<DirEntry> {
        let name = check_name(name)?;
        let dp = self.dir_path(dir)?;
        let _g = lock(self.stripe(dir));
        let (ino, kind) = self.read_entry(&dp, name)?.ok_or(libc::ENOENT)?;
        match (what, kind) {
            (RemoveWhat::NonDir, FileKind::Dir) => return Err(libc::EISDIR),
            (RemoveWhat::Dir, k) if k != FileKind::Dir => return Err(libc::ENOTDIR),
            _ => {}
        }
        if expect.is_some_and(|e| e != ino) {
            return Err(libc::ENOENT);
        }
        fs::remove_file(dp.join(name)).map_err(errno)?;
        if kind == FileKind::Dir {
            self.adjust_nsub(&dp, -1)?;
        }
        Ok(DirEntry {
            name: name.as_bytes().to_vec(),
            ino,
            kind,
        })
    }

    fn rename(
        &self,
        src_dir: InodeId,
        src_name: &[u8],
        dst_dir: InodeId,
        dst_name: &[u8],
        flags: u32,
    ) -> Res<Option<DirEntry>> {
        let sn = check_name(src_name)?;
        let dn = check_name(dst_name)?;
        let sp = self.dir_path(src_dir)?;
        let dp = self.dir_path(dst_dir)?;
        let _g = self.lock_many(&[src_dir, dst_dir]);
        let (ino, kind) = self.read_entry(&sp, sn)?.ok_or(libc::ENOENT)?;
        let old = self.read_entry(&dp, dn)?;
        let (from, to) = (sp.join(sn), dp.join(dn));
        if flags & libc::RENAME_EXCHANGE != 0 {
            let (old_ino, old_kind) = old.ok_or(libc::ENOENT)?;
            sys::rename2(&from, &to, libc::RENAME_EXCHANGE).map_err(errno)?;
            if src_dir != dst_dir && (kind == FileKind::Dir) != (old_kind == FileKind::Dir) {
                let d = if kind == FileKind::Dir { 1 } else { -1 };
                self.adjust_nsub(&dp, d)?;
                self.adjust_nsub(&sp, -d)?;
            }
            let _ = old_ino;
            return Ok(None);
        }
        if let Some((old_ino, old_kind)) = old {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(libc::EEXIST);
            }
            if old_ino == ino {
                // Two links of one file: POSIX says do nothing.
                return Ok(None);
            }
            check_replace(kind, old_kind)?;
        }
        fs::rename(&from, &to).map_err(errno)?;
        let replaced = self.rename_nsub(&sp, &dp, src_dir, dst_dir, kind, old)?;
        drop(_g);
        if inode_node(ino) == self.node() {
            self.touch(ino)?;
        }
        Ok(replaced)
    }

    /// Subdirectory counts after a directory moved from `sp` to `dp`.
    fn rename_nsub(
        &self,
        sp: &Path,
        dp: &Path,
        src_dir: InodeId,
        dst_dir: InodeId,
        kind: FileKind,
        old: Option<(InodeId, FileKind)>,
    ) -> Res<Option<DirEntry>> {
        if kind == FileKind::Dir && src_dir != dst_dir {
            self.adjust_nsub(sp, -1)?;
            if !matches!(old, Some((_, FileKind::Dir))) {
                self.adjust_nsub(dp, 1)?;
            }
        }
        Ok(old.map(|(i, k)| DirEntry {
            name: Vec::new(),
            ino: i,
            kind: k,
        }))
    }

    fn change_links(&self, ino: InodeId, delta: i64) -> Res<Option<Attr>> {
        let p = self.path(ino)?;
        let _g = lock(self.stripe(ino));
        let m = fs::symlink_metadata(&p).map_err(errno)?;
        if m.is_dir() {
            return Err(libc::EPERM);
        }
        let cur = sys::get_u64_xattr(&p, NLINK_XATTR)
            .map_err(errno)?
            .unwrap_or(1) as i64;
        let next = (cur + delta).max(0) as u64;
        let open = self
            .open_count
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&inode_local(ino))
            .copied()
            .unwrap_or(0);
        if next == 0 && open == 0 {
            fs::remove_file(&p).map_err(errno)?;
            return Ok(None);
        }
        sys::set_u64_xattr(&p, NLINK_XATTR, next).map_err(errno)?;
        self.attr_of(ino, &p).map(Some)
    }

    /// Bump the ctime of `ino` by rewriting its link-count xattr.
    fn touch(&self, ino: InodeId) -> Res<()> {
        let p = self.path(ino)?;
        let _g = lock(self.stripe(ino));
        let is_dir = fs::symlink_metadata(&p).map_err(errno)?.is_dir();
        let (name, default) = if is_dir {
            (NSUB_XATTR, 0)
        } else {
            (NLINK_XATTR, 1)
        };
        let cur = sys::get_u64_xattr(&p, name)
            .map_err(errno)?
            .unwrap_or(default);
        sys::set_u64_xattr(&p, name, cur).map_err(errno)
    }

    fn remove_dir(&self, ino: InodeId) -> Res<()> {
        if Some(ino) == self.root {
            return Err(libc::EBUSY);
        }
        let p = self.dir_path(ino)?;
        fs::remove_dir(&p).map_err(errno)
    }

    fn is_empty_dir(&self, ino: InodeId) -> Res<bool> {
        let p = self.dir_path(ino)?;
        Ok(fs::read_dir(&p).map_err(errno)?.next().is_none())
    }

    fn setattr(&self, ino: InodeId, set: &SetAttr) -> Res<Attr> {
        let p = self.path(ino)?;
        if let Some(size) = set.size {
            let f = OpenOptions::new().write(true).open(&p).map_err(errno)?;
            f.set_len(size).map_err(errno)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::lchown(&p, set.uid, set.gid).map_err(errno)?;
        }
        if let Some(mode) = set.mode {
            let m = fs::symlink_metadata(&p).map_err(errno)?;
            if m.file_type().is_symlink() {
                return Err(libc::EOPNOTSUPP);
            }
            fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::set_times(&p, set.atime, set.mtime).map_err(errno)?;
        }
        self.attr_of(ino, &p)
    }

    fn open_file(&self, ino: InodeId, write: bool) -> Res<u64> {
        let p = self.path(ino)?;
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .map_err(errno)?;
        if !file.metadata().map_err(errno)?.is_file() {
            return Err(libc::EINVAL);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let local = inode_local(ino);
        *self
            .open_count
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(local)
            .or_insert(0) += 1;
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                fh,
                Handle::File {
                    local,
                    file: Arc::new(file),
                },
            );
        Ok(fh)
    }

    fn file(&self, fh: u64) -> Res<Arc<File>> {
        match self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            Some(Handle::File { file, .. }) => Ok(file.clone()),
            _ => Err(libc::EBADF),
        }
    }

    fn read(&self, fh: u64, offset: u64, len: u32) -> Res<Vec<u8>> {
        read_at(&*self.file(fh)?, offset, len)
    }

    fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Res<u32> {
        write_at(&*self.file(fh)?, offset, data)
    }

    fn release(&self, fh: u64) -> Res<()> {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        let Some(Handle::File { local, file }) = h else {
            return Ok(());
        };
        drop(file);
        let ino = inode_id(self.node(), local);
        let _g = lock(self.stripe(ino));
        let last = {
            let mut oc = self.open_count.lock().unwrap_or_else(|p| p.into_inner());
            let n = oc.entry(local).or_insert(1);
            *n = n.saturating_sub(1);
            if *n == 0 {
                oc.remove(&local);
                true
            } else {
                false
            }
        };
        if last {
            let p = self.path(ino)?;
            if matches!(sys::get_u64_xattr(&p, NLINK_XATTR), Ok(Some(0))) {
                fs::remove_file(&p).map_err(errno)?;
            }
        }
        Ok(())
    }

    fn open_dir(&self, ino: InodeId) -> Res<u64> {
        let p = self.dir_path(ino)?;
        let mut entries = Vec::new();
        for e in fs::read_dir(&p).map_err(errno)? {
            let e = e.map_err(errno)?;
            let name = e.file_name();
            // An entry removed since readdir saw it is simply skipped.
            if let Ok(Some((ino, kind))) = self.read_entry(&p, &name) {
                entries.push(DirEntry {
                    name: name.as_bytes().to_vec(),
                    ino,
                    kind,
                });
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                fh,
                Handle::Dir {
                    entries: Arc::new(entries),
                },
            );
        Ok(fh)
    }

    fn read_dir(&self, fh: u64, offset: u64, max: u32) -> Res<Vec<DirEntry>> {
        let entries = match self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            Some(Handle::Dir { entries }) => entries.clone(),
            _ => return Err(libc::EBADF),
        };
        let start = (offset as usize).min(entries.len());
        let end = start.saturating_add(max as usize).min(entries.len());
        Ok(entries[start..end].to_vec())
    }

    fn statfs(&self) -> Res<KdfsResponse> {
        let st = sys::statvfs(&self.dir).map_err(errno)?;
        let frsize = if st.f_frsize > 0 {
            st.f_frsize
        } else {
            st.f_bsize
        };
        Ok(KdfsResponse::Statfs {
            blocks: st.f_blocks * frsize / 4096,
            bfree: st.f_bfree * frsize / 4096,
            bavail: st.f_bavail * frsize / 4096,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: 4096,
        })
    }

    fn lookup(&self, dir: InodeId, name: &[u8]) -> Res<KdfsResponse> {
        let name =
            check_name(name).map_err(|e| if e == libc::EINVAL { libc::ENOENT } else { e })?;
        let dp = self.dir_path(dir)?;
        let (ino, kind) = self.read_entry(&dp, name)?.ok_or(libc::ENOENT)?;
        let attr = if inode_node(ino) == self.node() {
            self.getattr(ino).ok()
        } else {
            None
        };
        Ok(KdfsResponse::Entry { ino, kind, attr })
    }

    fn created(&self, attr: Attr, open: Option<bool>) -> Res<KdfsResponse> {
        let fh = match open {
            Some(write) => Some(self.open_file(attr.ino, write)?),
            None => None,
        };
        Ok(KdfsResponse::Created { attr, fh })
    }

    /// Serve one request. Blocking: call it from a blocking-capable thread.
    pub fn handle(&self, req: KdfsRequest) -> KdfsResponse {
        self.dispatch(req).unwrap_or_else(KdfsResponse::Errno)
    }

    fn dispatch(&self, req: KdfsRequest) -> Res<KdfsResponse> {
        use KdfsRequest as Q;
        use KdfsResponse as A;
        Ok(match req {
            Q::Hello => A::Hello {
                fs_id: Some(self.sb.fs_id),
                node: self.node(),
            },
            Q::Root => A::Root(self.root.ok_or(libc::ENOENT)?),
            Q::Statfs => self.statfs()?,
            Q::GetAttr { ino } => A::Attr(self.getattr(ino)?),
            Q::SetAttr { ino, set } => A::Attr(self.setattr(ino, &set)?),
            Q::Readlink { ino } => A::Target(
                fs::read_link(self.path(ino)?)
                    .map_err(errno)?
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            ),
            Q::Lookup { dir, name } => self.lookup(dir, &name)?,
            Q::MakeInode { new, open } => self.created(self.make_inode(&new)?, open)?,
            Q::Create {
                dir,
                name,
                new,
                open,
            } => self.created(self.create(dir, &name, &new)?, open)?,
            Q::AddEntry {
                dir,
                name,
                ino,
                kind,
                replace,
            } => A::Removed(self.add_entry(dir, &name, ino, kind, replace)?),
            Q::RemoveEntry {
                dir,
                name,
                what,
                expect,
            } => A::Removed(Some(self.remove_entry(dir, &name, what, expect)?)),
            Q::Rename {
                src_dir,
                src_name,
                dst_dir,
                dst_name,
                flags,
            } => A::Removed(self.rename(src_dir, &src_name, dst_dir, &dst_name, flags)?),
            Q::IncLink { ino } => A::Attr(self.change_links(ino, 1)?.ok_or(libc::ENOENT)?),
            Q::DecLink { ino } => {
                self.change_links(ino, -1)?;
                A::Done
            }
            Q::Touch { ino } => {
                self.touch(ino)?;
                A::Done
            }
            Q::RemoveDir { ino } => {
                self.remove_dir(ino)?;
                A::Done
            }
            Q::IsEmptyDir { ino } => A::Empty(self.is_empty_dir(ino)?),
            Q::Open { ino, write } => A::Handle(self.open_file(ino, write)?),
            Q::Read {
                fh, offset, len, ..
            } => A::Data(Bytes(self.read(fh, offset, len.min(16 << 20))?)),
            Q::Write {
                fh, offset, data, ..
            } => A::Written(self.write(fh, offset, &data.0)?),
            Q::Fsync { fh, datasync, .. } => {
                sync_file(&*self.file(fh)?, datasync)?;
                A::Done
            }
            Q::Release { fh, .. } | Q::ReleaseDir { fh } => {
                self.release(fh)?;
                A::Done
            }
            Q::Fallocate {
                fh,
                offset,
                len,
                mode,
                ..
            } => {
                sys::fallocate(&*self.file(fh)?, mode, offset, len).map_err(errno)?;
                A::Done
            }
            Q::OpenDir { ino } => A::Handle(self.open_dir(ino)?),
            Q::ReadDir { fh, offset, max } => A::Entries(self.read_dir(fh, offset, max)?),
            Q::FsyncDir { ino } => {
                let p = self.dir_path(ino)?;
                File::open(&p).and_then(|d| d.sync_all()).map_err(errno)?;
                File::open(&self.inodes)
                    .and_then(|d| d.sync_all())
                    .map_err(errno)?;
                A::Done
            }
        })
    }
}

/// May an entry of kind `new` replace one of kind `old` (rename(2) rules)?
fn check_replace(new: FileKind, old: FileKind) -> Res<()> {
    match (new == FileKind::Dir, old == FileKind::Dir) {
        (true, false) => Err(libc::ENOTDIR),
        (false, true) => Err(libc::EISDIR),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
