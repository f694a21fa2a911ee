//! The client's own mount(2) of /dev/fuse, instead of fuser's.
//!
//! fuser's `Session::new` mounts, and when its session ends it unmounts by
//! path. After `umount MOUNTPOINT` the kernel has removed the mount before
//! that, and by then another mount may sit at the same path — a remount
//! right after an unmount — which fuser's unmount then takes down: the new
//! mount's files vanish (ENOENT from the directory under it). That is the
//! likely cause of a CI failure (a remount right after an unmount read
//! ENOENT for a file the other node read), and every foreground unmount
//! printed fuser's `Failed to umount filesystem: Invalid argument` (its
//! attempt, on an empty path).
//!
//! So the client opens /dev/fuse, mounts it itself as fuser would (as
//! root: mount.kdfs needs the cluster key and krgd's attach anyway), and
//! hands the descriptor to fuser (`Session::from_fd`), which then never
//! unmounts anything. The only unmount by path left is [`detach`], for a
//! mount whose set-up failed right after it was made, while it is this
//! process's for sure.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::MountOptions;
use crate::KdfsError;

/// Mount a fresh FUSE connection at `mountpoint` (an absolute, resolved
/// path), naming `source` in the mount table; its /dev/fuse descriptor.
pub fn mount_fuse(
    source: &Path,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<OwnedFd, KdfsError> {
    let io = |what: &Path, e: nix::Error| KdfsError::io(what, std::io::Error::from(e));
    let meta = std::fs::metadata(mountpoint).map_err(|e| KdfsError::io(mountpoint, e))?;
    // The kernel would mount over a file too (with a file's mode as the
    // root's), and the namespace's root directory would then be a file.
    if !meta.is_dir() {
        return Err(KdfsError::io(
            mountpoint,
            std::io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    let root_mode = meta.permissions().mode();
    let dev_path = Path::new("/dev/fuse");
    let dev = open(dev_path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| io(dev_path, e))?;
    let data = kernel_options(
        dev.as_raw_fd(),
        root_mode,
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let source = CString::new(source.as_os_str().as_encoded_bytes())
        .map_err(|_| KdfsError::Invalid(format!("{} holds a NUL byte", source.display())))?;
    mount(
        Some(source.as_c_str()),
        mountpoint,
        Some("fuse"),
        flags(opts),
        Some(data.as_str()),
    )
    .map_err(|e| io(mountpoint, e))?;
    Ok(dev)
}

/// The FUSE options of the mount: the connection, the root's mode, the
/// owner, the kernel's permission checks against the attributes the client
/// returns (for every caller: `allow_other`), and the subtype, so that the
/// mount table says `fuse.kdfs`.
fn kernel_options(fd: i32, root_mode: u32, uid: u32, gid: u32) -> String {
    format!(
        "fd={fd},rootmode={root_mode:o},user_id={uid},group_id={gid},\
         default_permissions,allow_other,subtype=kdfs"
    )
}

/// The generic mount flags `opts` ask for (set-id bits and device nodes
/// count only when asked for).
fn flags(opts: &MountOptions) -> MsFlags {
    let mut f = MsFlags::empty();
    for (off, flag) in [
        (!opts.suid, MsFlags::MS_NOSUID),
        (!opts.dev, MsFlags::MS_NODEV),
        (!opts.exec, MsFlags::MS_NOEXEC),
        (opts.read_only, MsFlags::MS_RDONLY),
    ] {
        if off {
            f |= flag;
        }
    }
    f
}

/// Take down the mount this process has just made at `mountpoint`, whose
/// set-up failed (lazily: nothing uses it yet).
pub fn detach(mountpoint: &Path) {
    if let Err(e) = umount2(mountpoint, MntFlags::MNT_DETACH) {
        tracing::warn!(mountpoint = %mountpoint.display(), error = %e,
            "kdfs: a mount whose set-up failed is left in place");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_is_asked_for_its_permission_checks_and_the_kdfs_subtype() {
        let o = kernel_options(7, 0o40755, 0, 0);
        assert_eq!(
            o,
            "fd=7,rootmode=40755,user_id=0,group_id=0,default_permissions,allow_other,subtype=kdfs"
        );
    }

    #[test]
    fn set_id_bits_and_devices_count_only_when_asked_for() {
        let f = flags(&MountOptions::default());
        assert!(f.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
        assert!(!f.intersects(MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY));
        let o = MountOptions::parse("suid,dev,noexec,ro").unwrap();
        let f = flags(&o);
        assert!(!f.intersects(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
        assert!(f.contains(MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY));
    }
}
