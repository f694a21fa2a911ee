//! What `kdfsctl stripe` does: show or set the striping of a path of a
//! kDFS mount, through the mount's `kdfs.stripe` attribute (so the kernel
//! and the mount check who may: root or the directory's owner, with write
//! permission on it).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use krg_proto::kdfs::StripePolicy;

use crate::KdfsError;

const NAME: &[u8] = b"kdfs.stripe\0";

/// Refuse a path that is not on a kDFS mount (one line saying so).
fn check_on_kdfs(path: &Path) -> Result<(), KdfsError> {
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

fn c_path(path: &Path) -> Result<CString, KdfsError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| KdfsError::Invalid(format!("{}: a path with a NUL byte", path.display())))
}

fn os_err(path: &Path, what: &str) -> KdfsError {
    let e = std::io::Error::last_os_error();
    let why = match e.raw_os_error() {
        Some(libc::EPERM) => "only root or the directory's owner may".to_string(),
        Some(libc::EACCES) => "permission denied (write permission on it is needed)".to_string(),
        Some(libc::ENOTDIR) => {
            "not a directory: a file's layout is given when it is made".to_string()
        }
        _ => e.to_string(),
    };
    KdfsError::Invalid(format!("{}: cannot {what}: {why}", path.display()))
}

/// The striping of `path`: a directory's policy (`4M:4`), a file's layout
/// (`4M:3 on nodes 1,2,3`); `None` when it has none.
pub fn show(path: &Path) -> Result<Option<String>, KdfsError> {
    check_on_kdfs(path)?;
    let p = c_path(path)?;
    let mut buf = vec![0u8; 256];
    // SAFETY: p and NAME are NUL-terminated; buf is buf.len() writable bytes.
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            NAME.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENODATA) {
            return Ok(None);
        }
        return Err(os_err(path, "read its striping"));
    }
    buf.truncate(n as usize);
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Set the policy of directory `path` (`None`: files made in it from now
/// on are not striped).
pub fn set(path: &Path, policy: Option<StripePolicy>) -> Result<(), KdfsError> {
    check_on_kdfs(path)?;
    let p = c_path(path)?;
    // SAFETY: p and NAME are NUL-terminated; the value is value.len() readable bytes.
    let r = unsafe {
        match policy {
            Some(pol) => {
                let value = pol.to_string();
                libc::lsetxattr(
                    p.as_ptr(),
                    NAME.as_ptr().cast(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }
            None => libc::lremovexattr(p.as_ptr(), NAME.as_ptr().cast()),
        }
    };
    if r < 0 {
        return Err(os_err(path, "set its striping"));
    }
    Ok(())
}
