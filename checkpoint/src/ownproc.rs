//! A job's own `/proc`: a mount namespace in which `/proc` shows the PID
//! namespace of the process that makes it.
//!
//! Without it a `krg run` job sees the node's `/proc`: `getpid()` answers
//! the namespace's number but `/proc/$$` names whichever node process has
//! that number, and `ps` lists the node's processes. A job's init (PID 1
//! of its namespace, `krg-init`) calls [`enter`] before its program starts
//! (procfs shows the PID namespace of the process that mounts it), and its
//! children inherit the namespace; a job that migrates is restored into
//! its new init's (`restore::pidns`).
//!
//! The new namespace is a copy of the caller's with every mount made a
//! slave first: mounts the node makes later reach the job where the
//! node's mounts propagate (`shared`, as systemd makes them), while a
//! mount in the job (its `/proc` first of all) never reaches the node. On
//! a node whose mounts are private a job sees the mounts as they were
//! when it started.

use std::io;

/// Enter a new mount namespace (a slave copy of this one) and mount a
/// `/proc` of this process's PID namespace there. The error names the
/// step that failed.
pub fn enter() -> Result<(), (&'static str, io::Error)> {
    // SAFETY: unshare and mount with constant, NUL-terminated strings and
    // null pointers where the calls take none; they change only this
    // process's namespaces.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(("unshare(CLONE_NEWNS)", io::Error::last_os_error()));
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(("mount --make-rslave /", io::Error::last_os_error()));
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            return Err(("mount proc on /proc", io::Error::last_os_error()));
        }
    }
    Ok(())
}
