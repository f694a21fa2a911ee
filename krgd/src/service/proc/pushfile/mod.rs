//! `krg push` written by krgd itself: the destination file is opened by
//! the job (with the user's credentials, as before) and handed to krgd,
//! which writes the received bytes straight into it.
//!
//! Why: through a pipe, every byte of a push was copied once more per node
//! (krgd into the pipe, then the job's copy program out of it into the
//! file), and a process per node was woken for every chunk. That was a
//! fifth of the CPU of a 10-node push here.
//!
//! The job's stdin is then one end of a Unix stream socket pair (see
//! `job::make_stdio`), and the built-in copy of `krg-init` speaks first:
//!
//! ```text
//! job  → krgd   'F' + SCM_RIGHTS(destination)   krgd writes the file
//!               'C'                              the job copies: krgd
//!                                                writes stdin into the
//!                                                socket, then shuts it
//! krgd → job    (after 'F') errno: i32 LE        0 once every byte is
//!                                                written; else the errno
//!                                                of the failed write
//! ```
//!
//! The job exits 0, or 1 with `krg push: PATH: <error>` on its stderr, as
//! the copy program did. krgd writes only into a regular file of a local
//! file system ([`direct_writable`], checked by both ends): a file system a
//! user mounted with FUSE could hold a write, and so a thread of krgd,
//! forever; the job copies those itself. The writing thread
//! ([`writer`]) takes the job's file-system ids and drops its effective
//! capabilities first, so quotas and the blocks reserved for root apply to
//! the user's bytes as they did when the job wrote them.

pub mod writer;

use std::os::fd::AsFd;

/// The job hands its destination over (with the descriptor).
pub const HAND_OVER: u8 = b'F';
/// The job copies its stdin itself.
pub const COPY_HERE: u8 = b'C';

/// File systems krgd writes into for a job: local ones, whose writes
/// finish. (tmpfs/shmem, ramfs, ext2/3/4, xfs, btrfs.)
const LOCAL_FS: [libc::__fsword_t; 5] =
    [0x0102_1994, 0x8584_58f6, 0xEF53, 0x5846_5342, 0x9123_683E];

/// Whether `fd` is a regular file on a local file system, which krgd may
/// write for the job.
pub fn direct_writable(fd: impl AsFd) -> bool {
    let Ok(st) = nix::sys::stat::fstat(fd.as_fd()) else {
        return false;
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return false;
    }
    let Ok(fs) = nix::sys::statfs::fstatfs(fd) else {
        return false;
    };
    LOCAL_FS.contains(&fs.filesystem_type().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_local_file_systems_are_written_by_krgd() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        assert!(direct_writable(&file));
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        assert!(!direct_writable(&null), "a device");
        let proc = std::fs::File::open("/proc/self/status").unwrap();
        assert!(!direct_writable(&proc), "procfs is not a local store");
    }
}
