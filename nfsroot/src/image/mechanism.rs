//! How a tree is copied: the cheapest mechanism the file system offers.
//! Each function wraps one syscall or tool; the choice is made in
//! [`choose`], and the caller prints which one it used.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{NfsrootError, Result};
use crate::tools::find_tool;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// btrfs subvolume snapshot: O(1), shares all blocks.
    Btrfs,
    /// Reflink copy (FICLONE, `cp --reflink=always`): shares data blocks,
    /// costs one metadata copy per file.
    Reflink,
    /// overlayfs: the source is the lower layer, writes go to a per-clone
    /// upper directory. O(1); the mount must be remade after a server reboot.
    Overlay,
    /// Plain copy: the last resort for read-only versions, O(size).
    Copy,
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mechanism::Btrfs => "btrfs subvolume snapshot",
            Mechanism::Reflink => "reflink copy",
            Mechanism::Overlay => "overlayfs",
            Mechanism::Copy => "full copy",
        })
    }
}

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// The root directory of every btrfs subvolume has inode number 256.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| NfsrootError::Image(format!("{}: path contains a NUL byte", p.display())))
}

/// Is `dir` on a btrfs file system?
pub fn is_btrfs(dir: &Path) -> Result<bool> {
    let c = cpath(dir)?;
    // SAFETY: statfs is plain data; zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs writes into the struct we own; c is a valid C string.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(NfsrootError::io(
            format!("statfs {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// Is `dir` the top of a btrfs subvolume (and so snapshottable)?
pub fn is_subvolume(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    is_btrfs(dir).unwrap_or(false)
        && fs::metadata(dir)
            .map(|m| m.ino() == BTRFS_FIRST_FREE_OBJECTID)
            .unwrap_or(false)
}

/// Can files in `dir` be reflinked? Tried on two scratch files with FICLONE.
pub fn reflink_works(dir: &Path) -> bool {
    let a = dir.join(format!(".nfsroot-reflink-probe-a.{}", std::process::id()));
    let b = dir.join(format!(".nfsroot-reflink-probe-b.{}", std::process::id()));
    let ok = (|| -> std::io::Result<bool> {
        fs::write(&a, [0u8; 4096])?;
        let src = fs::File::open(&a)?;
        let dst = fs::File::create(&b)?;
        Ok(ficlone(&dst, &src).is_ok())
    })()
    .unwrap_or(false);
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    ok
}

/// FICLONE: make `dst` share all of `src`'s data blocks.
fn ficlone(dst: &fs::File, src: &fs::File) -> std::io::Result<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409; // _IOW(0x94, 9, int)
                                                // SAFETY: both descriptors are open files we own for the call's duration.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Mechanisms usable to clone `src` into `parent`, cheapest first.
pub fn available(src: &Path, parent: &Path) -> Vec<Mechanism> {
    let mut v = Vec::new();
    if is_subvolume(src) && is_btrfs(parent).unwrap_or(false) {
        v.push(Mechanism::Btrfs);
    }
    if reflink_works(parent) {
        v.push(Mechanism::Reflink);
    }
    v.push(Mechanism::Overlay);
    v
}

/// The mechanism to use: the forced one if usable, else the cheapest.
pub fn choose(src: &Path, parent: &Path, forced: Option<Mechanism>) -> Result<Mechanism> {
    let avail = available(src, parent);
    match forced {
        None => Ok(avail[0]),
        Some(Mechanism::Copy) => Ok(Mechanism::Copy),
        Some(m) if avail.contains(&m) => Ok(m),
        Some(m) => Err(NfsrootError::Image(format!(
            "{m} is not available for {} (available here: {})",
            src.display(),
            avail
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

pub fn run(tool: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let exe = find_tool(tool)?;
    let out = Command::new(&exe)
        .args(args)
        .output()
        .map_err(|e| NfsrootError::Tool {
            tool: tool.into(),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        let msg = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " | ");
        Err(NfsrootError::Tool {
            tool: tool.into(),
            message: if msg.is_empty() {
                out.status.to_string()
            } else {
                msg
            },
        })
    }
}

pub fn btrfs_snapshot(src: &Path, dst: &Path, read_only: bool) -> Result<()> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["subvolume".as_ref(), "snapshot".as_ref()];
    if read_only {
        args.push("-r".as_ref());
    }
    args.push(src.as_os_str());
    args.push(dst.as_os_str());
    run("btrfs", &args)
}

pub fn btrfs_create(dst: &Path) -> Result<()> {
    run(
        "btrfs",
        &["subvolume".as_ref(), "create".as_ref(), dst.as_os_str()],
    )
}

pub fn btrfs_delete(dst: &Path) -> Result<()> {
    // A read-only snapshot must be made writable before it can be deleted by
    // a plain user; root can delete it directly.
    run(
        "btrfs",
        &["subvolume".as_ref(), "delete".as_ref(), dst.as_os_str()],
    )
}

/// `cp -a` of a whole tree; `reflink` insists on FICLONE for every file.
pub fn copy_tree(src: &Path, dst: &Path, reflink: bool) -> Result<()> {
    let flag = if reflink {
        "--reflink=always"
    } else {
        "--reflink=never"
    };
    run(
        "cp",
        &[
            "-a".as_ref(),
            flag.as_ref(),
            "--".as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    )
}

/// Mount an overlay of `lower` with `upper`/`work` on `target`. index and
/// nfs_export make the overlay exportable by the kernel NFS server.
pub fn overlay_mount(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let opts = overlay_options(lower, upper, work);
    run(
        "mount",
        &[
            "-t".as_ref(),
            "overlay".as_ref(),
            "overlay".as_ref(),
            "-o".as_ref(),
            opts.as_ref(),
            target.as_os_str(),
        ],
    )
}

pub fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={},index=on,nfs_export=on",
        lower.display(),
        upper.display(),
        work.display()
    )
}

pub fn is_mountpoint(dir: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = dir.to_string_lossy();
    // Field 5 is the mount point, with spaces etc. octal-escaped.
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m.replace("\\040", " ") == want)
}

pub fn umount(dir: &Path) -> Result<()> {
    run("umount", &[dir.as_os_str()])
}

const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IMMUTABLE_FL: libc::c_long = 0x10;

/// Set or clear the immutable flag on one file or directory. Symlinks and
/// device nodes are skipped: the flag cannot be set through them, and an
/// immutable parent directory already stops them being replaced.
fn set_immutable_one(path: &Path, on: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let mut flags: libc::c_long = 0;
    // SAFETY: the ioctls read/write one long through a pointer to our local.
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let new = if on {
        flags | FS_IMMUTABLE_FL
    } else {
        flags & !FS_IMMUTABLE_FL
    };
    // SAFETY: FS_IOC_SETFLAGS reads one int from `new`, which outlives the call.
    if new != flags && unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS as _, &new) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Make a whole tree immutable (or mutable again): even root cannot change a
/// read-only version by mistake. Returns false when the file system has no
/// such flag (the version is then read-only by convention only).
pub fn set_immutable_tree(root: &Path, on: bool) -> Result<bool> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p)
            .map_err(|e| NfsrootError::io(format!("reading {}", p.display()), e))?;
        if meta.is_dir() {
            let rd = fs::read_dir(&p)
                .map_err(|e| NfsrootError::io(format!("listing {}", p.display()), e))?;
            for e in rd.flatten() {
                stack.push(e.path());
            }
        }
        if !(meta.is_dir() || meta.is_file()) {
            continue;
        }
        match set_immutable_one(&p, on) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                ) =>
            {
                return Ok(false)
            }
            Err(e) => {
                return Err(NfsrootError::io(
                    format!("setting the immutable flag of {}", p.display()),
                    e,
                ))
            }
        }
    }
    Ok(true)
}

/// Remove a tree whatever it is: a btrfs subvolume, or a directory whose
/// files may carry the immutable flag. Missing is fine.
pub fn remove_tree(p: &Path) -> Result<()> {
    if fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    if is_subvolume(p) {
        return btrfs_delete(p);
    }
    set_immutable_tree(p, false)?;
    fs::remove_dir_all(p).map_err(|e| NfsrootError::io(format!("removing {}", p.display()), e))
}
