//! The virtual extended attributes of a kDFS mount (`kdfs.stripe`,
//! `kdfs.replicas`, `kdfs.replicas.new`) on a path, as `kdfsctl` reads and
//! sets them: through the mount, so that the kernel and the mount check
//! who may. Never follows a symlink.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::KdfsError;

/// Refuse a path that is not on a kDFS mount (one line saying so).
pub fn check_on_kdfs(path: &Path) -> Result<(), KdfsError> {
    let dev = std::fs::symlink_metadata(path)
        .map_err(|e| KdfsError::io(path, e))?
        .dev();
    let id = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let table = crate::mountinfo::read()?;
    let on_kdfs = crate::mountinfo::parse(&table)
        .iter()
        .any(|m| m.device == id && m.fstype == "fuse.kdfs");
    if on_kdfs {
        Ok(())
    } else {
        Err(KdfsError::Invalid(format!(
            "{} is not on a kDFS mount",
            path.display()
        )))
    }
}

fn c_str(path: &Path) -> Result<CString, KdfsError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| KdfsError::Invalid(format!("{}: a path with a NUL byte", path.display())))
}

/// Attribute `name` of `path`; `None` when it has none (ENODATA).
pub fn get(path: &Path, name: &str) -> Result<Result<Option<Vec<u8>>, io::Error>, KdfsError> {
    let p = c_str(path)?;
    let n = c_str(Path::new(name))?;
    let mut buf = vec![0u8; 256];
    // SAFETY: p and n are NUL-terminated; buf is buf.len() writable bytes.
    let got =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(Ok(None));
        }
        return Ok(Err(e));
    }
    buf.truncate(got as usize);
    Ok(Ok(Some(buf)))
}

/// Set attribute `name` of `path` to `value` (`None`: remove it).
pub fn set(
    path: &Path,
    name: &str,
    value: Option<&[u8]>,
) -> Result<Result<(), io::Error>, KdfsError> {
    let p = c_str(path)?;
    let n = c_str(Path::new(name))?;
    // SAFETY: p and n are NUL-terminated; the value is value.len() readable bytes.
    let r = unsafe {
        match value {
            Some(v) => libc::lsetxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0),
            None => libc::lremovexattr(p.as_ptr(), n.as_ptr()),
        }
    };
    if r < 0 {
        return Ok(Err(io::Error::last_os_error()));
    }
    Ok(Ok(()))
}

/// What a refusal says of an attribute: who may set it, what ENOTDIR
/// means.
pub struct Wording {
    /// Who may, besides root (`the directory's owner`).
    pub owner: &'static str,
    /// What ENOTDIR means.
    pub not_dir: &'static str,
}

/// Why the mount refused to `what` on `path`, in words.
pub fn refused(path: &Path, what: &str, e: &io::Error, words: &Wording) -> KdfsError {
    let why = match e.raw_os_error() {
        Some(libc::EPERM) => format!("only root or {} may", words.owner),
        Some(libc::EACCES) => "permission denied (write permission on it is needed)".to_string(),
        Some(libc::ENOTDIR) => words.not_dir.to_string(),
        _ => e.to_string(),
    };
    KdfsError::Invalid(format!("{}: cannot {what}: {why}", path.display()))
}
