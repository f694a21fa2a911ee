//! What the NFS server shares with the nodes: `/etc/exports` for the kernel
//! NFS server, and the same exports as a `ganesha.conf` for NFS-Ganesha (a
//! userspace NFS server, VFS back end) on servers whose kernel has no nfsd.

use std::fmt::Write;

use super::Ctx;
use crate::desc::RootMode;

const RW: &str = "rw,sync,no_root_squash,no_subtree_check";
const RO: &str = "ro,async,no_root_squash,no_subtree_check";

pub fn exports(c: &Ctx) -> String {
    let d = c.d;
    let mut s = String::new();
    let _ = writeln!(s, "# /etc/exports for krg session {} — rendered by nfsroot; edit the description and re-render.", d.cluster.session_id);
    match d.image.mode {
        RootMode::Clone => {
            let _ = writeln!(
                s,
                "# Each node boots its own writable clone of {}, exported to it alone.",
                d.image.boot
            );
            for n in &d.nodes {
                let _ = writeln!(s, "{}\t{}({RW})", c.node_root(n).display(), n.ip);
            }
        }
        RootMode::Shared => {
            let _ = writeln!(
                s,
                "# All nodes boot {} read-only; each gets its own read-write {}.",
                d.image.boot,
                d.image.rw_dirs.join(", ")
            );
            let _ = writeln!(
                s,
                "{}\t{}({RO})",
                d.image.root.join(&d.image.boot).display(),
                c.subnet
            );
            for n in &d.nodes {
                for dir in &d.image.rw_dirs {
                    let _ = writeln!(s, "{}\t{}({RW})", c.state_dir(n, dir).display(), n.ip);
                }
            }
        }
    }
    s
}

/// One export: server path, who may mount it, read-write or not.
struct Export {
    path: String,
    clients: String,
    rw: bool,
}

fn export_list(c: &Ctx) -> Vec<Export> {
    let d = c.d;
    match d.image.mode {
        RootMode::Clone => d
            .nodes
            .iter()
            .map(|n| Export {
                path: c.node_root(n).display().to_string(),
                clients: n.ip.to_string(),
                rw: true,
            })
            .collect(),
        RootMode::Shared => {
            let mut v = vec![Export {
                path: d.image.root.join(&d.image.boot).display().to_string(),
                clients: c.subnet.to_string(),
                rw: false,
            }];
            for n in &d.nodes {
                for dir in &d.image.rw_dirs {
                    v.push(Export {
                        path: c.state_dir(n, dir).display().to_string(),
                        clients: n.ip.to_string(),
                        rw: true,
                    });
                }
            }
            v
        }
    }
}

/// `ganesha.conf` for NFS-Ganesha 4 (`ganesha.nfsd -F -f FILE`; `nfsroot
/// serve` runs it). The same exports as [`exports`], NFSv3 over TCP as the
/// nodes mount them, no lock manager (the initramfs mounts with nolock).
pub fn ganesha(c: &Ctx, recovery: &std::path::Path) -> String {
    let d = c.d;
    let mut s = String::new();
    let _ = writeln!(s, "# ganesha.conf for krg session {} — rendered by nfsroot; edit the description and re-render.", d.cluster.session_id);
    let _ = writeln!(
        s,
        "# NFS-Ganesha (VFS back end) serving what nfs/exports lists, for a server"
    );
    let _ = writeln!(
        s,
        "# without a kernel NFS server: ganesha.nfsd -F -f <this file> (nfsroot serve)."
    );
    let _ = writeln!(s, "NFS_CORE_PARAM {{");
    let _ = writeln!(
        s,
        "    # The nodes mount NFSv3 (nfsroot=...,vers=3,tcp); NFSv4 for the admin."
    );
    let _ = writeln!(s, "    Protocols = 3, 4;");
    let _ = writeln!(s, "    Bind_addr = {};", c.server);
    let _ = writeln!(s, "    NFS_Port = 2049;");
    let _ = writeln!(
        s,
        "    # The initramfs mounts with nolock: no lock manager, no quota service."
    );
    let _ = writeln!(s, "    Enable_NLM = false;");
    let _ = writeln!(s, "    Enable_RQUOTA = false;");
    let _ = writeln!(
        s,
        "    # No NFSv3 ACL side protocol: Ganesha 4.3 answers its SETACL with an error."
    );
    let _ = writeln!(s, "    Enable_NFSACL = false;");
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "NFSV4 {{");
    let _ = writeln!(
        s,
        "    # Nodes keep no NFSv4 state to reclaim: no 90 s grace period at start."
    );
    let _ = writeln!(s, "    Graceless = true;");
    let _ = writeln!(s, "    RecoveryRoot = \"{}\";", recovery.display());
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "NFS_KRB5 {{\n    Active_krb5 = false;\n}}");
    for (i, e) in export_list(c).iter().enumerate() {
        let access = if e.rw { "RW" } else { "RO" };
        let _ = writeln!(s, "EXPORT {{");
        let _ = writeln!(s, "    Export_Id = {};", i + 1);
        let _ = writeln!(s, "    Path = \"{}\";", e.path);
        let _ = writeln!(s, "    Pseudo = \"{}\";", e.path);
        let _ = writeln!(s, "    Protocols = 3, 4;");
        let _ = writeln!(s, "    Transports = TCP;");
        let _ = writeln!(s, "    SecType = sys;");
        let _ = writeln!(s, "    Squash = No_Root_Squash;");
        let _ = writeln!(s, "    # Nobody but the clients below.");
        let _ = writeln!(s, "    Access_Type = None;");
        let _ = writeln!(
            s,
            "    CLIENT {{\n        Clients = {};\n        Access_Type = {access};\n    }}",
            e.clients
        );
        let _ = writeln!(s, "    FSAL {{\n        Name = VFS;\n    }}");
        let _ = writeln!(s, "}}");
    }
    s
}
