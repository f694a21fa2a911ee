//! The mount namespace of a `krg run` job: a copy of the node's with a
//! `/proc` of the job's PID namespace mounted over the node's ([`crate::ownproc`],
//! by its init). Such a tree may be saved: every path it holds names the
//! same file as it does for checkpoint, and restart gives it the same kind
//! of namespace. Any other difference (a mount the job made, or one the
//! node made since the job started that did not reach it) would make a
//! path name another file at restore: refused, naming the first one.

use crate::error::{ChkptError, Result};
use crate::procfs;

/// One mount as a path sees it: device, root in its file system, mount
/// point, file system type.
type Mount = (String, String, String, String);

/// Whether task `pid`'s mounts are checkpoint's plus its own `/proc`;
/// the error names the first mount that differs.
pub fn check_job_mounts(pid: i32) -> Result<()> {
    let ours = procfs::read_to_string("/proc/self/mountinfo")?;
    let theirs = procfs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map_err(|_| ChkptError::NoSuchProcess(pid))?;
    let mut ours = mounts(&ours);
    let mut theirs = mounts(&theirs);
    // the job's /proc: the last proc mounted on /proc
    let own = theirs
        .iter()
        .rposition(|m| m.2 == "/proc" && m.3 == "proc")
        .ok_or_else(|| refuse(pid, "it has no /proc of its own".into()))?;
    theirs.remove(own);
    ours.sort();
    theirs.sort();
    if let Some(m) = theirs.iter().find(|m| !ours.contains(m)) {
        return Err(refuse(
            pid,
            format!("{} ({}) is mounted only there", m.2, m.3),
        ));
    }
    if let Some(m) = ours.iter().find(|m| !theirs.contains(m)) {
        return Err(refuse(
            pid,
            format!("{} ({}) is not mounted there", m.2, m.3),
        ));
    }
    Ok(())
}

fn refuse(pid: i32, why: String) -> ChkptError {
    ChkptError::unsupported(
        pid,
        "a process whose mounts differ from the node's",
        format!("{why}: its paths would name other files at restart"),
    )
}

/// The mounts of a mountinfo text (lines that do not parse are left out:
/// the kernel writes none).
fn mounts(text: &str) -> Vec<Mount> {
    text.lines().filter_map(mount).collect()
}

/// `ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - TYPE SOURCE SUPER`.
fn mount(line: &str) -> Option<Mount> {
    let (head, tail) = line.split_once(" - ")?;
    let mut h = head.split(' ');
    let dev = h.nth(2)?;
    let root = h.next()?;
    let point = h.next()?;
    let fstype = tail.split(' ').next()?;
    Some((dev.into(), root.into(), point.into(), fstype.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mountinfo_line_is_read_and_garbage_left_out() {
        let t = "25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                 garbage\n\
                 40 25 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(
            mounts(t),
            vec![
                ("254:0".into(), "/".into(), "/".into(), "ext4".into()),
                ("0:5".into(), "/".into(), "/proc".into(), "proc".into()),
            ]
        );
    }
}
