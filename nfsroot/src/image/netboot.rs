//! What a root tree needs to be booted over the network, done by `image
//! build` when the tree has a kernel: an initramfs that mounts an NFS root.
//!
//! Debian's initramfs-tools mounts `root=/dev/nfs nfsroot=SERVER:PATH,OPTS`
//! with klibc's `ipconfig` and `nfsmount`, but its default `MODULES=most`
//! image is large (every storage driver), which costs minutes to load over
//! TFTP. `MODULES=netboot` keeps the network drivers and NFS, so the
//! configuration goes into `etc/initramfs-tools/conf.d/` and the initramfs
//! is made again in the tree (a chroot with /proc, /sys and /dev mounted for
//! the time of the command, unmounted again whatever happens).

use std::fs;
use std::path::Path;
use std::process::Command;

use super::mechanism;
use crate::atomic::write_atomic;
use crate::error::{NfsrootError, Result};

/// The initramfs-tools configuration nfsroot installs, relative to the root.
pub const INITRAMFS_CONF: &str = "etc/initramfs-tools/conf.d/krg-netboot.conf";

const INITRAMFS_CONF_TEXT: &str = "\
# Installed by nfsroot image build: this image boots diskless, from an NFS
# root given on the kernel command line (root=/dev/nfs nfsroot=... ip=dhcp).
# netboot: network drivers and NFS only, so the initrd stays small enough to
# load quickly over TFTP.
MODULES=netboot
BOOT=nfs
";

/// Kernel versions installed in the tree (`boot/vmlinuz-<version>`).
pub fn kernels(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("boot"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Configure and regenerate the initramfs of every kernel in the tree.
/// Nothing to do (Ok(false)) for a tree without a kernel or without
/// initramfs-tools.
pub fn prepare(root: &Path, log: &mut dyn FnMut(&str)) -> Result<bool> {
    if kernels(root).is_empty() {
        return Ok(false);
    }
    if !root.join("usr/sbin/update-initramfs").is_file() {
        log("the image has a kernel but no initramfs-tools: its initrd cannot mount an NFS root (add initramfs-tools to --include)");
        return Ok(false);
    }
    write_atomic(
        &root.join(INITRAMFS_CONF),
        INITRAMFS_CONF_TEXT.as_bytes(),
        0o644,
    )?;
    log("making the initramfs for an NFS root (MODULES=netboot)");
    let mounts = ChrootMounts::new(root)?;
    let out = Command::new(crate::tools::find_tool("chroot")?)
        .arg(root)
        .args(["update-initramfs", "-u", "-k", "all"])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| NfsrootError::Tool {
            tool: "chroot update-initramfs".into(),
            message: e.to_string(),
        });
    drop(mounts);
    let out = out?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(NfsrootError::Tool {
            tool: "update-initramfs (in the image)".into(),
            message: tail[tail.len().saturating_sub(3)..].join(" | "),
        });
    }
    Ok(true)
}

/// /proc, /sys and /dev of the host, mounted into a tree for a chroot
/// command; unmounted (in reverse order) on drop.
struct ChrootMounts {
    mounted: Vec<std::path::PathBuf>,
}

impl ChrootMounts {
    fn new(root: &Path) -> Result<ChrootMounts> {
        let mut m = ChrootMounts {
            mounted: Vec::new(),
        };
        for (what, dir, opts) in [
            ("proc", "proc", ["-t", "proc"]),
            ("sysfs", "sys", ["-t", "sysfs"]),
            ("/dev", "dev", ["--rbind", "--make-rslave"]),
        ] {
            let target = root.join(dir);
            fs::create_dir_all(&target)
                .map_err(|e| NfsrootError::io(format!("creating {}", target.display()), e))?;
            let mut args: Vec<&std::ffi::OsStr> = opts.iter().map(|o| o.as_ref()).collect();
            args.push(what.as_ref());
            args.push(target.as_os_str());
            mechanism::run("mount", &args)?;
            m.mounted.push(target);
        }
        Ok(m)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        for t in self.mounted.drain(..).rev() {
            // -l: a /dev bind with submounts (pts, shm) goes in one step.
            let _ = Command::new("umount").arg("-R").arg("-l").arg(&t).status();
        }
    }
}
