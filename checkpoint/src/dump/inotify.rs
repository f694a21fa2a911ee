//! inotify instances at checkpoint: each watch's number and mask from
//! fdinfo, its path from its file handle (`open_by_handle_at`, root only);
//! events waiting to be read are refused (they are not saved).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{ChkptError, Result};
use crate::image::{FdKind, InotifyWatch, MAX_INOTIFY_WD};

/// An inotify instance: each watch's path comes from its file handle
/// (`open_by_handle_at`, which needs CAP_DAC_READ_SEARCH: root only).
pub fn read(
    pid: i32,
    fd: i32,
    info: &str,
    frozen: bool,
    refuse: &dyn Fn(String) -> ChkptError,
) -> Result<FdKind> {
    let mut watches = Vec::new();
    for l in info.lines().filter(|l| l.starts_with("inotify ")) {
        let get = |k: &str| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .ok_or_else(|| ChkptError::Parse {
                    what: format!("/proc/{pid}/fdinfo/{fd}"),
                    detail: l.to_string(),
                })
        };
        let hex = |k: &str| -> Result<u64> {
            u64::from_str_radix(get(k)?, 16).map_err(|_| ChkptError::Parse {
                what: format!("/proc/{pid}/fdinfo/{fd}"),
                detail: l.to_string(),
            })
        };
        let wd: i32 = get("wd:")?.parse().unwrap_or(-1);
        if !(1..=MAX_INOTIFY_WD).contains(&wd) {
            return Err(refuse(format!(
                "inotify watch descriptor {wd} is above {MAX_INOTIFY_WD}: not saved by this version"
            )));
        }
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(refuse(
                "inotify watches are found by file handle (open_by_handle_at): only root can checkpoint them".into(),
            ));
        }
        let path = handle_path(
            hex("sdev:")?,
            hex("fhandle-type:")? as i32,
            get("f_handle:")?,
        )
        .map_err(|e| {
            refuse(format!(
                "the path of inotify watch {wd} cannot be found: {e}"
            ))
        })?;
        watches.push(InotifyWatch {
            wd,
            mask: hex("mask:")? as u32,
            path,
        });
    }
    watches.sort_by_key(|w| w.wd);
    if frozen && queued(pid, fd)? > 0 {
        return Err(refuse(
            "inotify events are waiting to be read: they are not saved by this version".into(),
        ));
    }
    Ok(FdKind::Inotify { file: 0, watches })
}

/// Bytes waiting to be read on fd `fd` of `pid` (FIONREAD on a duplicate).
pub(super) fn queued(pid: i32, fd: i32) -> Result<i32> {
    let dup = crate::uffd::pidfd_open(pid)
        .and_then(|p| crate::uffd::pidfd_getfd(&p, fd))
        .map_err(|err| ChkptError::Sys {
            op: "pidfd_getfd".into(),
            pid,
            err,
        })?;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(dup.as_raw_fd(), libc::FIONREAD, &mut n) };
    Ok(n)
}

/// The path of the file a handle names on the filesystem `sdev` (the
/// kernel's dev_t: major << 20 | minor).
pub(super) fn handle_path(sdev: u64, htype: i32, hex: &str) -> std::io::Result<String> {
    let (maj, min) = (sdev >> 20, sdev & 0xfffff);
    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
    // a mount of the whole filesystem (root "/") gives the real path
    let mnt = mi
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.get(2) == Some(&format!("{maj}:{min}").as_str()))
        .min_by_key(|w| w.get(3) != Some(&"/"))
        .and_then(|w| w.get(4).map(|s| s.replace("\\040", " ")))
        .ok_or_else(|| std::io::Error::other(format!("no mount of device {maj}:{min}")))?;
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let dir = std::fs::File::open(&mnt)?;
    // struct file_handle: handle_bytes, handle_type, then the bytes
    let mut fh = Vec::with_capacity(8 + bytes.len());
    fh.extend_from_slice(&(bytes.len() as u32).to_ne_bytes());
    fh.extend_from_slice(&htype.to_ne_bytes());
    fh.extend_from_slice(&bytes);
    // SAFETY: open_by_handle_at reads the handle built above, returns an fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            fh.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    let f = unsafe { OwnedFd::from_raw_fd(r as i32) };
    let p = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    let p = p.to_string_lossy().into_owned();
    if p.ends_with(" (deleted)") || !p.starts_with('/') {
        return Err(std::io::Error::other(format!("it has no path ({p})")));
    }
    Ok(p)
}
