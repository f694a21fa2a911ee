//! Thin wrappers over the syscalls std does not offer: link-count xattrs,
//! renameat2, utimensat and friends on paths that must not follow symlinks.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use krg_proto::kdfs::{SetTime, Time};

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Read a u64 kept in xattr `name` of `path` (not following symlinks);
/// `None` when the attribute is absent.
pub fn get_u64_xattr(path: &Path, name: &str) -> io::Result<Option<u64>> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = [0u8; 8];
    // SAFETY: p and n are NUL-terminated; buf is 8 writable bytes and its length is passed.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if r != 8 {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(Some(u64::from_le_bytes(buf)))
}

/// Store `value` in xattr `name` of `path` (not following symlinks). Setting
/// an xattr also updates the inode's ctime, as a link-count change must.
pub fn set_u64_xattr(path: &Path, name: &str, value: u64) -> io::Result<()> {
    let p = cpath(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let buf = value.to_le_bytes();
    // SAFETY: p and n are NUL-terminated; buf is 8 readable bytes and its length is passed.
    check(unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), buf.as_ptr().cast(), buf.len(), 0) })
}

/// renameat2(2) between two absolute paths with `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE).
pub fn rename2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let f = cpath(from)?;
    let t = cpath(to)?;
    // SAFETY: both paths are NUL-terminated; AT_FDCWD is ignored for absolute paths.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    })
}

/// lchown(2): change owner and/or group (`u32::MAX` leaves one alone).
pub fn lchown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: p is NUL-terminated; -1 (u32::MAX) means "unchanged" to the kernel.
    check(unsafe { libc::lchown(p.as_ptr(), uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX)) })
}

fn timespec(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(Time { sec, nsec })) => libc::timespec {
            tv_sec: sec,
            tv_nsec: i64::from(nsec.min(999_999_999)),
        },
    }
}

/// utimensat(2) without following a final symlink.
pub fn set_times(path: &Path, atime: Option<SetTime>, mtime: Option<SetTime>) -> io::Result<()> {
    let p = cpath(path)?;
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: p is NUL-terminated and ts holds the two timespecs utimensat reads.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// mknod(2) for fifos, sockets and device nodes.
pub fn mknod(path: &Path, mode: u32, rdev: u32) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: p is NUL-terminated; mode and dev are plain integers.
    check(unsafe { libc::mknod(p.as_ptr(), mode as libc::mode_t, libc::dev_t::from(rdev)) })
}

/// fallocate(2) on an open file.
pub fn fallocate(fd: &std::fs::File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (off, len) = (i64::try_from(offset), i64::try_from(len));
    let (Ok(off), Ok(len)) = (off, len) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: the fd is open for the lifetime of `fd`; the ranges are plain integers.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off, len) })
}

/// statvfs(2) of the file system holding `path`.
pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let p = cpath(path)?;
    // SAFETY: zeroed statvfs is a valid out-buffer; p is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; st outlives the call.
    check(unsafe { libc::statvfs(p.as_ptr(), &mut st) })?;
    Ok(st)
}
