//! Which processes use a store: each that opens it (krgd serving it,
//! mount.kdfs reading it in place, fsck.kdfs) holds a `flock` on its
//! directory ([`super::StoreDir::lock_in_use`]), and the kernel lists
//! every one in `/proc/locks` with the process that took it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The processes other than this one holding a lock on store directory
/// `dir`, by pid (sorted, once each).
pub fn other_users(dir: &Path) -> std::io::Result<Vec<u32>> {
    let m = std::fs::metadata(dir)?;
    let locks = std::fs::read_to_string("/proc/locks")?;
    Ok(holders(
        &locks,
        (
            nix::sys::stat::major(m.dev()),
            nix::sys::stat::minor(m.dev()),
        ),
        m.ino(),
        std::process::id(),
    ))
}

/// The pids `locks` (`/proc/locks`' text) shows holding a lock of inode
/// `ino` on device `dev` (major, minor), but `me`.
fn holders(locks: &str, dev: (u64, u64), ino: u64, me: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = locks
        .lines()
        // "1: FLOCK  ADVISORY  READ  1234 08:01:5678 0 EOF"; a waiter's
        // line has "->" after the number.
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().filter(|w| *w != "->").collect();
            let pid = f.get(4)?.parse::<u32>().ok()?;
            let mut id = f.get(5)?.split(':');
            let major = u64::from_str_radix(id.next()?, 16).ok()?;
            let minor = u64::from_str_radix(id.next()?, 16).ok()?;
            let inode = id.next()?.parse::<u64>().ok()?;
            ((major, minor) == dev && inode == ino && pid != me).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::holders;

    #[test]
    fn the_holders_of_one_inode_but_this_process() {
        let locks = "1: FLOCK  ADVISORY  READ  1234 08:01:5678 0 EOF\n\
                     2: FLOCK  ADVISORY  READ  99 08:01:5678 0 EOF\n\
                     3: POSIX  ADVISORY  WRITE 777 08:01:9999 0 EOF\n\
                     4: FLOCK  ADVISORY  READ  555 00:2a:5678 0 EOF\n\
                     4: -> FLOCK  ADVISORY  WRITE 888 08:01:5678 0 EOF\n\
                     garbage\n";
        assert_eq!(holders(locks, (8, 1), 5678, 99), vec![888, 1234]);
        assert_eq!(holders(locks, (0, 0x2a), 5678, 99), vec![555]);
    }
}
