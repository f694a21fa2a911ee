//! Extended-attribute calls on a path, without following a symlink, as
//! the tests make them: an errno for what the file system refuses.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

pub fn set(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    // SAFETY: NUL-terminated path and name; value is value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// getxattr with a buffer of `size` bytes: the value, or the length for 0.
pub fn get(p: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; size];
    // SAFETY: buf has size writable bytes (a NULL-like empty buffer for 0).
    let r = unsafe { libc::lgetxattr(c(p).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if r < 0 {
        return Err(errno());
    }
    if size == 0 {
        return Ok(r.to_string().into_bytes());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

pub fn list(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf has 4096 writable bytes.
    let r = unsafe { libc::llistxattr(c(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: errno {}", errno());
    buf.truncate(r as usize);
    let mut v: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    v.sort();
    v
}

pub fn remove(p: &Path, name: &str) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    // SAFETY: NUL-terminated path and name.
    let r = unsafe { libc::lremovexattr(c(p).as_ptr(), n.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}
