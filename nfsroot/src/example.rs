//! The commented example description written by `nfsroot init`.

pub const EXAMPLE: &str = r#"# krg diskless cluster description, read by `nfsroot render`.
# Every DHCP, TFTP, NFS, fstab, hosts and krgd.toml file is rendered from it:
# edit this file (or use `nfsroot nodes add|del`) and render again.

[cluster]
# Nodes of one session form one cluster; every node boots with session_id=<this>.
session_id = 1
# DNS domain of the nodes (node1.krg.lan).
domain = "krg.lan"

[server]
# The boot server: it serves DHCP, TFTP and NFS to the nodes.
address = "10.0.0.1"
# Its name in the nodes' /etc/hosts.
name = "bootserver"
# Interface dnsmasq binds to (optional; ISC dhcpd picks by subnet).
# interface = "eth1"
# Directory the TFTP server serves; copy or bind-mount <out>/tftp there.
tftp_root = "/srv/krg/tftp"

[network]
subnet = "10.0.0.0/24"
# gateway = "10.0.0.254"
# dns = ["10.0.0.1"]

[boot]
# What DHCP hands out first: "ipxe" (then ipxe/boot.ipxe picks the node's menu
# by MAC) or "grub" (GRUB loads grub/grub.cfg-01-<mac>).
loader = "ipxe"
# Kernel and initrd, relative to the TFTP root. The initrd must mount an NFS
# root (Debian: initramfs-tools with MODULES=netboot).
kernel = "krg/vmlinuz"
initrd = "krg/initrd.img"
# Copy the newest /boot/vmlinuz-* and its initrd.img-* of the boot image there
# (build the image with --include ...,linux-image-amd64,initramfs-tools).
kernel_from_image = true
# Extra kernel arguments, after node_id= session_id= root=/dev/nfs nfsroot=...
append = "quiet"
# Seconds the boot menu waits.
timeout = 5

[image]
# Where images, their read-only versions and per-node clones live.
root = "/srv/krg/images"
# The version nodes boot (`nfsroot image snapshot base` makes base@1, base@2, ...).
boot = "base@1"
# "clone": each node boots its own writable clone named after it
#          (`nfsroot image clone base@1 node1`).
# "shared": all nodes boot the version read-only, with per-node read-write
#          directories (rw_dirs) kept under <root>/.state/<node>/.
mode = "clone"
# rw_dirs = ["tmp", "var", "root"]

[krgd]
# TCP port krgd listens on; peers are the other nodes at this port.
port = 7600
cluster_key_file = "/etc/krg/cluster.key"
# heartbeat_ms = 200
# failure_timeout_ms = 1000

# One [[node]] per machine. node_id is what the node boots with (node_id=N)
# and what `krgadm nodes add` uses.
[[node]]
name = "node1"
mac = "52:54:00:00:00:01"
ip = "10.0.0.11"
node_id = 1

[[node]]
name = "node2"
mac = "52:54:00:00:00:02"
ip = "10.0.0.12"
node_id = 2
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn example_is_a_valid_description() {
        let d = crate::desc::Description::parse(super::EXAMPLE, std::path::Path::new("example"))
            .unwrap();
        assert_eq!(d.nodes.len(), 2);
    }
}
