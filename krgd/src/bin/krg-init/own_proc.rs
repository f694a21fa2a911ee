//! The job's own `/proc`: a mount namespace for the job, in which `/proc`
//! shows the job's PID namespace.
//!
//! Without it the job sees the node's `/proc`: `getpid()` answers the
//! namespace's number but `/proc/$$` names whichever host process has that
//! number, and `ps` lists the host's processes. The init, PID 1 of the
//! namespace, mounts procfs there before its program starts (procfs shows
//! the PID namespace of the process that mounts it); its children inherit
//! the mount namespace, and a job that migrates is restored into its new
//! init's (`checkpoint::restore::pidns`).
//!
//! The new namespace is a copy of the node's, every mount made a slave
//! first: mounts the node makes later reach the job where the node's
//! mounts propagate (`shared`, as systemd makes them), while a mount in the
//! job (its `/proc` first of all) never reaches the node. On a node whose
//! mounts are private, a job sees the node's mounts as they were when it
//! started.

use crate::errno;

/// Enter a mount namespace of the job's own and mount its `/proc`.
pub fn mount() -> Result<(), i32> {
    // SAFETY: unshare and mount with constant, NUL-terminated strings and
    // null pointers where the calls take none.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(errno());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(errno());
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            return Err(errno());
        }
    }
    Ok(())
}
