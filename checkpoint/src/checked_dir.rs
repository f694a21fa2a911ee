//! Directories root works in on a user's behalf, handled by descriptor.
//!
//! `checkpoint` run by root writes into `/var/chkpt/PID`, a directory the
//! job's owner controls; `restart` reads images from it. Anything done by
//! path there can be redirected by the user with a symlink or a renamed
//! directory between two steps. So every step is relative to a directory
//! descriptor opened with `O_DIRECTORY | O_NOFOLLOW`: files are created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, opened with `O_NOFOLLOW` and checked on
//! the open descriptor, moved with `renameat`, owned with `fchown` — never
//! re-resolved by name.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, renameat, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::error::{ChkptError, Result};

/// An open directory and the path it was opened by (for messages only).
pub struct CheckedDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// A regular file opened by [`CheckedDir::open_file`], with its status as
/// read from the descriptor.
pub struct OpenedFile {
    pub file: File,
    pub path: PathBuf,
    pub uid: u32,
    pub len: u64,
}

fn io(path: &Path, e: nix::Error) -> ChkptError {
    ChkptError::io(path, std::io::Error::from(e))
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
}

/// Open flags of a directory that must not be a symlink.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

impl CheckedDir {
    /// Open `path`, which must be a directory; a symlink as its last
    /// component is refused (earlier components are the administrator's).
    pub fn open(path: &Path) -> Result<Self> {
        let fd =
            openat(AT_FDCWD, path, dir_flags(), Mode::empty()).map_err(|e| refused(path, e))?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another descriptor of the same directory.
    pub fn dup(&self) -> Result<Self> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| ChkptError::io(&self.path, e))?;
        Ok(Self {
            fd,
            path: self.path.clone(),
        })
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Status of the directory itself (from the descriptor).
    pub fn stat(&self) -> Result<FileStat> {
        fstat(&self.fd).map_err(|e| io(&self.path, e))
    }

    /// Open the subdirectory `name` (not a symlink).
    pub fn open_dir(&self, name: &str) -> Result<Self> {
        let path = self.join(name);
        let fd =
            openat(&self.fd, name, dir_flags(), Mode::empty()).map_err(|e| refused(&path, e))?;
        Ok(Self { fd, path })
    }

    /// Create the subdirectory `name` with `mode`; `Ok(false)` if something
    /// of that name already exists (it is not looked at here).
    pub fn make_dir(&self, name: &str, mode: u32) -> Result<bool> {
        match mkdirat(&self.fd, name, Mode::from_bits_truncate(mode)) {
            Ok(()) => Ok(true),
            Err(nix::Error::EEXIST) => Ok(false),
            Err(e) => Err(io(&self.join(name), e)),
        }
    }

    /// Create a new file `name`, 0600: never an existing file, never
    /// through a symlink.
    pub fn create_file(&self, name: &str) -> Result<File> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&self.fd, name, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| io(&self.join(name), e))?;
        Ok(File::from(fd))
    }

    /// Open (creating if needed) the lock file `name`: a regular file, not a
    /// symlink.
    pub fn open_lock_file(&self, name: &str) -> Result<File> {
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let path = self.join(name);
        let fd = openat(&self.fd, name, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| refused(&path, e))?;
        let st = fstat(&fd).map_err(|e| io(&path, e))?;
        if !is_regular(&st) {
            return Err(ChkptError::Permission(format!(
                "{} is not a regular file: refusing to use it",
                path.display()
            )));
        }
        Ok(File::from(fd))
    }

    /// Open `name` for reading: it must be a regular file with a single
    /// name (not a symlink, not a hard link to a file elsewhere).
    pub fn open_file(&self, name: &str) -> Result<OpenedFile> {
        let path = self.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = openat(&self.fd, name, flags, Mode::empty()).map_err(|e| refused(&path, e))?;
        let st = fstat(&fd).map_err(|e| io(&path, e))?;
        if !is_regular(&st) || st.st_nlink != 1 {
            return Err(ChkptError::Permission(format!(
                "{} is not a regular file with a single name: refusing it",
                path.display()
            )));
        }
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| ChkptError::io(&path, e))?;
        Ok(OpenedFile {
            file,
            uid: meta.uid(),
            len: meta.len(),
            path,
        })
    }

    /// Does `name` exist here (whatever it is; symlinks not followed)?
    pub fn contains(&self, name: &str) -> bool {
        fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    }

    /// Move `name` from this directory to `to`/`to_name`. What was at the
    /// destination (even a symlink) is replaced, never followed.
    pub fn rename_into(&self, name: &str, to: &CheckedDir, to_name: &str) -> Result<()> {
        renameat(&self.fd, name, &to.fd, to_name).map_err(|e| io(&to.join(to_name), e))
    }

    /// Remove the entry `name` (a symlink is removed, not its target).
    pub fn remove_file(&self, name: &str) -> Result<()> {
        unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir).map_err(|e| io(&self.join(name), e))
    }

    /// Remove the empty subdirectory `name` if it is still `dir` (the same
    /// inode): a directory swapped in under that name is left alone.
    pub fn remove_dir_if_same(&self, name: &str, dir: &CheckedDir) -> Result<()> {
        let here = fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
        let ours = dir.stat()?;
        match here {
            Ok(st) if st.st_ino == ours.st_ino && st.st_dev == ours.st_dev => {
                match unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
                    // renamed away since the stat (the directory's owner
                    // may): nothing of ours is left under that name
                    Err(nix::errno::Errno::ENOENT) => Ok(()),
                    r => r.map_err(|e| io(&self.join(name), e)),
                }
            }
            _ => Ok(()),
        }
    }

    /// Remove the flat directory `name` and the entries in it (none of
    /// them followed); a symlink of that name is removed itself.
    pub fn remove_flat_tree(&self, name: &str) -> Result<()> {
        let sub = match self.open_dir(name) {
            Ok(d) => d,
            Err(_) => return self.remove_file(name),
        };
        for e in sub.entries()? {
            let Some(e) = e.to_str() else { continue };
            sub.remove_file(e)?;
        }
        self.remove_dir_if_same(name, &sub)
    }

    /// Names in the directory (through the descriptor, not the path).
    pub fn entries(&self) -> Result<Vec<OsString>> {
        use std::os::fd::AsRawFd;
        let via = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let rd = std::fs::read_dir(&via).map_err(|e| ChkptError::io(&self.path, e))?;
        Ok(rd.flatten().map(|e| e.file_name()).collect())
    }

    /// Status of `name` without following a symlink.
    pub fn stat_entry(&self, name: &str) -> Result<FileStat> {
        fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| io(&self.join(name), e))
    }

    /// Give the directory to `uid:gid` with `mode`, by descriptor.
    pub fn set_owner(&self, uid: u32, gid: u32, mode: u32) -> Result<()> {
        fchmod(&self.fd, Mode::from_bits_truncate(mode)).map_err(|e| io(&self.path, e))?;
        chown_fd(&self.fd, &self.path, uid, gid)
    }

    /// Give the file `name` of this directory to `uid:gid` (opened without
    /// following a symlink, changed by descriptor).
    pub fn chown_file(&self, name: &str, uid: u32, gid: u32) -> Result<()> {
        let path = self.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = openat(&self.fd, name, flags, Mode::empty()).map_err(|e| refused(&path, e))?;
        chown_fd(&fd, &path, uid, gid)
    }

    /// Is it a directory? (from the descriptor)
    pub fn is_dir(&self) -> Result<bool> {
        Ok(is_dir(&self.stat()?))
    }
}

/// `fchown`, only when root (a user's files are theirs already).
fn chown_fd(fd: impl AsFd, path: &Path, uid: u32, gid: u32) -> Result<()> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|e| io(path, e))
}

/// An open refused because the name is a symlink (ELOOP with O_NOFOLLOW,
/// ENOTDIR for a symlink where a directory was wanted) says so.
fn refused(path: &Path, e: nix::Error) -> ChkptError {
    match e {
        nix::Error::ELOOP | nix::Error::ENOTDIR => ChkptError::Permission(format!(
            "{} is a symlink or not a directory: refusing to follow it",
            path.display()
        )),
        e => io(path, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        let dir = CheckedDir::open(d.path()).unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("link")).unwrap();
        std::os::unix::fs::symlink(d.path(), d.path().join("dirlink")).unwrap();
        assert!(dir.create_file("link").is_err());
        assert!(dir.open_file("link").is_err());
        assert!(dir.open_lock_file("link").is_err());
        assert!(dir.open_dir("dirlink").is_err());
        assert!(CheckedDir::open(&d.path().join("dirlink")).is_err());
        dir.remove_flat_tree("dirlink").unwrap();
        assert!(d.path().exists() && !dir.contains("dirlink"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"secret");
    }

    #[test]
    fn hard_links_and_non_files_refused_for_reading() {
        let d = tempfile::tempdir().unwrap();
        let dir = CheckedDir::open(d.path()).unwrap();
        std::fs::write(d.path().join("a"), b"x").unwrap();
        assert!(dir.open_file("a").is_ok());
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        assert!(dir.open_file("a").is_err());
        std::fs::create_dir(d.path().join("sub")).unwrap();
        assert!(dir.open_file("sub").is_err());
    }

    #[test]
    fn swapped_directory_is_not_removed() {
        let d = tempfile::tempdir().unwrap();
        let dir = CheckedDir::open(d.path()).unwrap();
        assert!(dir.make_dir("t", 0o700).unwrap());
        assert!(!dir.make_dir("t", 0o700).unwrap());
        let t = dir.open_dir("t").unwrap();
        std::fs::rename(d.path().join("t"), d.path().join("moved")).unwrap();
        std::fs::create_dir(d.path().join("t")).unwrap();
        dir.remove_dir_if_same("t", &t).unwrap();
        assert!(d.path().join("t").exists());
        // files created through the descriptor land in the moved directory
        drop(t.create_file("f").unwrap());
        assert!(d.path().join("moved/f").exists());
    }
}
