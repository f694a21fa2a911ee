//! nfsroot: describe a diskless krg cluster once, in one TOML file, and
//! render, check and maintain everything its nodes boot from — DHCP (ISC
//! dhcpd or dnsmasq), the TFTP tree with per-node iPXE and GRUB menus, NFS
//! exports, the image's fstab and hosts, one krgd.toml per node — plus the
//! images themselves: debootstrap builds, read-only versions and cheap
//! per-node clones (btrfs snapshot, reflink copy or overlayfs). `serve` runs
//! the boot services of a rendering (dnsmasq, NFS-Ganesha) and `lab` boots
//! nodes from it in QEMU VMs on a private bridge (`nfsroot boot-test`).

pub mod atomic;
pub mod check;
pub mod desc;
pub mod diff;
pub mod error;
pub mod example;
pub mod image;
pub mod lab;
pub mod nodes;
pub mod output;
pub mod paths;
pub mod render;
pub mod serve;
pub mod sys;
pub mod tools;

pub use desc::Description;
pub use error::{NfsrootError, Result};
