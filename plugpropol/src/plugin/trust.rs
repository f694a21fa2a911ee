//! Whether krgd may trust a file as root. The plug-in registry decides
//! what a root `mkdir` runs, so the registry and every executable it names
//! must be changeable by root (or krgd's own user) alone: owned by one of
//! them, a regular file, not group- or world-writable, and reached through
//! directories owned by one of them that are not group- or world-writable
//! unless sticky (in a sticky directory such as /tmp nobody else may
//! rename or delete their entries).
//!
//! Checks are made on descriptors, never on a path that is opened later:
//! the path is resolved once, then walked from `/` one component at a time
//! with `openat(O_NOFOLLOW)` under the directory just checked. Once the
//! whole chain is found safe, nobody but root can change what the resolved
//! path names, so it can be executed by that path.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// What is being trusted, for messages and for how the file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Opened for reading.
    Registry,
    /// Opened `O_PATH`: only checked, then executed by its resolved path.
    Executable,
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trust::Registry => "plug-in registry",
            Trust::Executable => "plug-in executable",
        })
    }
}

/// A file found safe, with its resolved path.
#[derive(Debug)]
pub struct Trusted {
    pub file: File,
    pub path: PathBuf,
}

/// Open `path` as `what` if every check passes; [`Error::Untrusted`] names
/// the file or directory that fails. A missing file is an [`Error::Io`]
/// whose source is `NotFound`.
pub fn open_trusted(path: &Path, what: Trust) -> Result<Trusted> {
    let real = path
        .canonicalize()
        .map_err(|e| Error::io(format!("{what} {}", path.display()), e))?;
    let names: Vec<&OsStr> = real
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((last, dirs)) = names.split_last() else {
        return Err(refuse(what, path, "is a directory"));
    };
    let mut at = PathBuf::from("/");
    let mut dir = open_root().map_err(|e| Error::io(format!("{what}: opening /"), e))?;
    check_dir(what, path, &at, &meta(&dir, &at)?)?;
    for name in dirs {
        at.push(name);
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        dir = open_at(&dir, name, flags)
            .map_err(|e| Error::io(format!("{what}: opening {}", at.display()), e))?;
        check_dir(what, path, &at, &meta(&dir, &at)?)?;
    }
    at.push(last);
    let flags = match what {
        // O_NONBLOCK: a FIFO planted there must not hang the open.
        Trust::Registry => libc::O_RDONLY | libc::O_NONBLOCK,
        Trust::Executable => libc::O_PATH,
    };
    let file =
        open_at(&dir, last, flags).map_err(|e| Error::io(format!("{what} {}", at.display()), e))?;
    check_file(what, &at, &meta(&file, &at)?)?;
    Ok(Trusted { file, path: at })
}

fn open_root() -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open("/")
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)` of one component.
fn open_at(dir: &File, name: &OsStr, flags: libc::c_int) -> std::io::Result<File> {
    let c = CString::new(name.as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `dir` is an open descriptor for the whole call and `c` a
    // NUL-terminated string that outlives it; openat keeps neither.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// fstat of an open descriptor (works on `O_PATH` ones too).
fn meta(f: &File, at: &Path) -> Result<Metadata> {
    f.metadata()
        .map_err(|e| Error::io(format!("checking {}", at.display()), e))
}

/// Root, and the user krgd runs as, are the owners to trust.
fn trusted_owner(uid: u32) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// A directory on the path: trusted owner, writable by others only if sticky.
fn check_dir(what: Trust, path: &Path, dir: &Path, m: &Metadata) -> Result<()> {
    let writable = m.mode() & 0o022 != 0;
    let sticky = m.mode() & libc::S_ISVTX != 0;
    let why = if !trusted_owner(m.uid()) {
        format!(
            "its directory {} is owned by uid {}, not root",
            dir.display(),
            m.uid()
        )
    } else if writable && !sticky {
        let mode = m.mode() & 0o7777;
        format!(
            "its directory {} is writable by group or others (mode {mode:04o}) and not sticky",
            dir.display()
        )
    } else {
        return Ok(());
    };
    Err(refuse(what, path, &why))
}

/// The file itself: a regular file, trusted owner, writable by its owner only.
fn check_file(what: Trust, path: &Path, m: &Metadata) -> Result<()> {
    let why = if !m.is_file() {
        "is not a regular file".to_string()
    } else if !trusted_owner(m.uid()) {
        format!("is owned by uid {}, not root", m.uid())
    } else if m.mode() & 0o022 != 0 {
        format!(
            "is writable by group or others (mode {:04o})",
            m.mode() & 0o7777
        )
    } else {
        return Ok(());
    };
    Err(refuse(what, path, &why))
}

fn refuse(what: Trust, path: &Path, why: &str) -> Error {
    Error::Untrusted(format!(
        "{what} {} {why}: another user could make krgd run their code as root; refused",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// An unprivileged uid; needs no entry in the user database.
    const NOBODY: u32 = 65534;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn chown(p: &Path, uid: u32) {
        std::os::unix::fs::chown(p, Some(uid), None).unwrap();
    }

    fn refused(p: &Path, what: Trust) -> String {
        match open_trusted(p, what) {
            Err(e @ Error::Untrusted(_)) => e.to_string(),
            other => panic!("{} not refused: {other:?}", p.display()),
        }
    }

    #[test]
    fn a_safe_file_is_opened_and_resolved() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("plugins.conf");
        std::fs::write(&f, "x probe /bin/true\n").unwrap();
        chmod(&f, 0o644);
        let t = open_trusted(&f, Trust::Registry).unwrap();
        assert_eq!(t.path, f.canonicalize().unwrap());
        // A link to it is followed to the file, which is what is checked.
        std::os::unix::fs::symlink(&f, d.path().join("link")).unwrap();
        let t = open_trusted(&d.path().join("link"), Trust::Registry).unwrap();
        assert_eq!(t.path, f.canonicalize().unwrap());
    }

    #[test]
    fn writable_or_foreign_files_and_directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.sh");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        chmod(&f, 0o777);
        assert!(refused(&f, Trust::Executable).contains("mode 0777"));
        chmod(&f, 0o620);
        assert!(refused(&f, Trust::Executable).contains("writable by group"));
        chmod(&f, 0o755);
        open_trusted(&f, Trust::Executable).unwrap();
        if trusted_owner(NOBODY) {
            return; // running as that uid: nothing foreign to test
        }
        chown(&f, NOBODY);
        assert!(refused(&f, Trust::Executable).contains("owned by uid 65534"));
        chown(&f, 0);
        // A directory others can write to, without the sticky bit.
        chmod(d.path(), 0o777);
        let why = refused(&f, Trust::Executable);
        assert!(
            why.contains("its directory") && why.contains("not sticky"),
            "{why}"
        );
        // With it, as /tmp: others cannot replace root's entries.
        chmod(d.path(), 0o1777);
        open_trusted(&f, Trust::Executable).unwrap();
        chown(d.path(), NOBODY);
        assert!(refused(&f, Trust::Executable).contains("owned by uid 65534"));
    }

    #[test]
    fn only_regular_files() {
        let d = tempfile::tempdir().unwrap();
        assert!(refused(d.path(), Trust::Registry).contains("not a regular file"));
        let fifo = d.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(refused(&fifo, Trust::Registry).contains("not a regular file"));
        let missing = open_trusted(&d.path().join("none"), Trust::Registry);
        assert!(
            matches!(&missing, Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
            "{missing:?}"
        );
    }
}
