//! The syscalls the store needs that neither std nor nix offers: the
//! xattrs of an object named relative to a directory descriptor, and
//! fallocate on an open file. Everything else the store does through nix's
//! `*at` calls on the descriptors it holds.
//!
//! Linux before 6.13 has no `getxattrat`: object `name` of directory `dir` is
//! reached as `/proc/self/fd/<dir>/<name>` with the `l*xattr` calls, which
//! looks `name` up in the very directory `dir` holds (the magic link is
//! followed, `name` is not), as an `*at` call with `AT_SYMLINK_NOFOLLOW`
//! would. `name` is one path component (the store's names are).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// `/proc/self/fd/<dir>/<name>`: `name` in directory `dir`.
fn at(dir: BorrowedFd, name: &OsStr) -> io::Result<CString> {
    if name.as_bytes().contains(&b'/') {
        return Err(einval());
    }
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    CString::new(p).map_err(|_| einval())
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Read a u64 kept in xattr `key` of `name` in `dir` (not following a
/// symlink); `None` when the attribute is absent.
pub fn get_u64_xattr(dir: BorrowedFd, name: &OsStr, key: &str) -> io::Result<Option<u64>> {
    let p = at(dir, name)?;
    let k = CString::new(key).map_err(|_| einval())?;
    let mut buf = [0u8; 8];
    // SAFETY: p and k are NUL-terminated; buf is 8 writable bytes and its length is passed.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
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

/// Store `value` in xattr `key` of `name` in `dir` (not following a
/// symlink). Setting an xattr also updates the inode's ctime, as a
/// link-count change must.
pub fn set_u64_xattr(dir: BorrowedFd, name: &OsStr, key: &str, value: u64) -> io::Result<()> {
    let p = at(dir, name)?;
    let k = CString::new(key).map_err(|_| einval())?;
    let buf = value.to_le_bytes();
    // SAFETY: p and k are NUL-terminated; buf is 8 readable bytes and its length is passed.
    check(unsafe { libc::lsetxattr(p.as_ptr(), k.as_ptr(), buf.as_ptr().cast(), buf.len(), 0) })
}

fn size(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// Call `read(ptr, len)` first with an empty buffer (the size), then with
/// a buffer of that size; asked again if the value grew meanwhile (ERANGE).
fn read_sized(mut read: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let n = size(read(std::ptr::null_mut(), 0))?;
        let mut buf = vec![0u8; n];
        match size(read(buf.as_mut_ptr().cast(), buf.len())) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The whole value of xattr `key` of `name` in `dir` (not following a
/// symlink), whatever its size (asked again if it grew meanwhile).
pub fn get_xattr(dir: BorrowedFd, name: &OsStr, key: &CString) -> io::Result<Vec<u8>> {
    let p = at(dir, name)?;
    // SAFETY: p and key are NUL-terminated; read_sized passes either NULL
    // with size 0 (asking the size) or a buffer of that many writable bytes.
    read_sized(|buf, len| unsafe { libc::lgetxattr(p.as_ptr(), key.as_ptr(), buf, len) })
}

/// The NUL-terminated xattr names of `name` in `dir` (not following a symlink).
pub fn list_xattr(dir: BorrowedFd, name: &OsStr) -> io::Result<Vec<u8>> {
    let p = at(dir, name)?;
    // SAFETY: p is NUL-terminated; read_sized passes either NULL with size
    // 0 (asking the size) or a buffer of that many writable bytes.
    read_sized(|buf, len| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) })
}

/// Set xattr `key` of `name` in `dir` to `value` (not following a symlink).
pub fn set_xattr(
    dir: BorrowedFd,
    name: &OsStr,
    key: &CString,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let p = at(dir, name)?;
    // SAFETY: p and key are NUL-terminated; value is value.len() readable bytes.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// Remove xattr `key` of `name` in `dir` (not following a symlink).
pub fn remove_xattr(dir: BorrowedFd, name: &OsStr, key: &CString) -> io::Result<()> {
    let p = at(dir, name)?;
    // SAFETY: p and key are NUL-terminated.
    check(unsafe { libc::lremovexattr(p.as_ptr(), key.as_ptr()) })
}

/// fallocate(2) on an open file.
pub fn fallocate(fd: &std::fs::File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (off, len) = (i64::try_from(offset), i64::try_from(len));
    let (Ok(off), Ok(len)) = (off, len) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: the fd is open for the lifetime of `fd`; the ranges are plain integers.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off, len) })
}
