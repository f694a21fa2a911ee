//! Finding the system tools nfsroot drives (dhcpd, dnsmasq, debootstrap,
//! btrfs, grub-script-check), with the Debian package to install when one
//! is missing.

use std::path::Path;

use crate::error::{NfsrootError, Result};

/// Look a daemon binary up on PATH and in the sbin directories, which a
/// non-root PATH often lacks.
pub fn find_tool(name: &str) -> Result<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"]);
    for d in dirs {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let pkg = match name {
        "dhcpd" => "isc-dhcp-server",
        "mkfs.btrfs" | "btrfs" => "btrfs-progs",
        "qemu-system-x86_64" => "qemu-system-x86 ipxe-qemu",
        "ganesha.nfsd" => "nfs-ganesha nfs-ganesha-vfs",
        "ip" => "iproute2",
        other => other,
    };
    Err(NfsrootError::Tool {
        tool: name.into(),
        message: format!("not installed (apt-get install {pkg})"),
    })
}
