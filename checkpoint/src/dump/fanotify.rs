//! fanotify groups at checkpoint (root only, as making one again needs
//! CAP_SYS_ADMIN): the group's flags and each mark from fdinfo, a file's
//! path from its file handle (as for inotify), a mount's from its mount
//! id. Events waiting to be read are refused.

use crate::error::{ChkptError, Result};
use crate::image::{FanotifyImage, FanotifyMark, FdKind};

/// The `key:` value of a fdinfo line, hex.
fn hex(pid: i32, fd: i32, line: &str, key: &str) -> Result<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| ChkptError::Parse {
            what: format!("/proc/{pid}/fdinfo/{fd}"),
            detail: line.to_string(),
        })
}

/// A fanotify group of `pid` at fd `fd` (`info`: its fdinfo).
pub fn read(
    pid: i32,
    fd: i32,
    info: &str,
    frozen: bool,
    refuse: &dyn Fn(String) -> ChkptError,
) -> Result<FdKind> {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(refuse(
            "a fanotify group is made again with CAP_SYS_ADMIN and its marks found by file handle: only root can checkpoint it".into(),
        ));
    }
    let mut fa = FanotifyImage {
        flags: 0,
        event_flags: 0,
        marks: Vec::new(),
    };
    for l in info.lines() {
        let h = |k: &str| hex(pid, fd, l, k);
        if l.starts_with("fanotify flags:") {
            fa.flags = h("flags:")? as u32;
            fa.event_flags = h("event-flags:")? as u32;
        } else if l.starts_with("fanotify ino:") {
            let handle = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("f_handle:"))
                .ok_or_else(|| refuse(format!("a mark without a file handle: {l}")))?;
            let path = super::inotify::handle_path(h("sdev:")?, h("fhandle-type:")? as i32, handle)
                .map_err(|e| refuse(format!("the path of a fanotify mark cannot be found: {e}")))?;
            fa.marks.push(mark(false, path, l, &h)?);
        } else if l.starts_with("fanotify mnt_id:") {
            let id = h("mnt_id:")?;
            let path = mount_point(pid, id)
                .ok_or_else(|| refuse(format!("the mount {id} of a fanotify mark is not found")))?;
            fa.marks.push(mark(true, path, l, &h)?);
        } else if l.starts_with("fanotify ") {
            return Err(refuse(format!("a fanotify mark of a kind not saved: {l}")));
        }
    }
    if frozen && super::inotify::queued(pid, fd)? > 0 {
        return Err(refuse(
            "fanotify events are waiting to be read: they are not saved by this version".into(),
        ));
    }
    Ok(FdKind::Fanotify { file: 0, fa })
}

fn mark(
    mount: bool,
    path: String,
    _l: &str,
    h: &dyn Fn(&str) -> Result<u64>,
) -> Result<FanotifyMark> {
    Ok(FanotifyMark {
        mount,
        path,
        flags: h("mflags:")? as u32,
        mask: h("mask:")?,
        ignored_mask: h("ignored_mask:")?,
    })
}

/// The mount point of mount `id` as `pid` sees it (its mountinfo).
fn mount_point(pid: i32, id: u64) -> Option<String> {
    let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    mi.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first().and_then(|v| v.parse::<u64>().ok()) == Some(id))
        .and_then(|w| w.get(4).map(|s| s.replace("\\040", " ")))
}
