//! This process's mount table (`/proc/self/mountinfo`), read for what the
//! kDFS tools need of it: which device and which file system sit at a mount
//! point, and what was mounted there.

use std::path::{Path, PathBuf};

use crate::KdfsError;

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// "major:minor" of the mounted file system.
    pub device: String,
    pub mount_point: PathBuf,
    /// e.g. `ext4`, or `fuse.kdfs` for a kDFS mount.
    pub fstype: String,
    /// What was mounted: a device, or for kDFS the node's store directory.
    pub source: String,
}

/// Read this process's mount table.
pub fn read() -> Result<String, KdfsError> {
    let path = Path::new("/proc/self/mountinfo");
    std::fs::read_to_string(path).map_err(|e| KdfsError::io(path, e))
}

/// The mounts of `table`, in its order (older first). Lines that do not
/// parse are skipped.
pub fn parse(table: &str) -> Vec<Mount> {
    table.lines().filter_map(parse_line).collect()
}

/// The newest mount at `mount_point` (the one a path walk reaches).
pub fn newest_at(table: &str, mount_point: &Path) -> Option<Mount> {
    parse(table)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mount_point)
}

/// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`
fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    if dash < 6 || fields.len() < dash + 3 {
        return None;
    }
    Some(Mount {
        device: fields[2].to_string(),
        mount_point: PathBuf::from(unescape(fields[4])),
        fstype: unescape(fields[dash + 1]),
        source: unescape(fields[dash + 2]),
    })
}

/// The table escapes space, tab, newline and backslash in octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:52 / /mnt/my\\040kdfs rw,nosuid,nodev,relatime shared:40 - fuse.kdfs /srv/kdfs rw,user_id=0
91 22 0:53 / /mnt/my\\040kdfs rw,relatime - fuse.kdfs /srv/other\\040store rw
garbage line
";

    #[test]
    fn the_newest_mount_at_a_path_with_its_escapes_undone() {
        let m = newest_at(TABLE, Path::new("/mnt/my kdfs")).unwrap();
        assert_eq!(m.device, "0:53");
        assert_eq!(m.fstype, "fuse.kdfs");
        assert_eq!(m.source, "/srv/other store");
        assert_eq!(parse(TABLE).len(), 3, "the garbage line is skipped");
        assert!(newest_at(TABLE, Path::new("/mnt")).is_none());
    }
}
