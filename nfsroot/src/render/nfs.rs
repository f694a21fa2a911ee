//! `/etc/exports`: what the NFS server shares with the nodes.

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
