//! mkfs.kdfs DIR ROOT_NODEID: format a node's local directory for kDFS.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kdfs::client::conn::admin_call;
use kdfs::format::{mkfs, MkfsOptions};
use krg_proto::kdfs::{KdfsAdminReply, KdfsAdminRequest};
use krg_proto::NodeId;

/// Format DIR as this node's part of a kDFS whose root directory lives on
/// node ROOT_NODEID.
///
/// This node's id is asked from the local krgd, which must be running and a
/// member of a started cluster, as must ROOT_NODEID. On the root node the
/// root directory and its meta-file are created too. The local krgd then
/// serves DIR (mounted or not, and again after a restart); a non-root store
/// formatted while the root node does not serve yet joins at its first
/// mount. Then `mount -t kdfs DIR MOUNTPOINT` on every node, in any order.
///
/// With --replicas 2, every change to DIR is also made, before it is
/// answered, to a copy of DIR kept by the next member (DIR/mirrors/<this
/// node> there), which serves this node's files while this node is down;
/// with --replicas 3, to the next two (the second serves them if both this
/// node and the first are down).
/// A node formatted again (its disk was lost) gets its files back from
/// that copy before its krgd serves the new DIR.
#[derive(Parser, Debug)]
#[command(name = "mkfs.kdfs", version)]
struct Args {
    /// The local directory to format (empty, unless --force).
    dir: PathBuf,
    /// Node holding the root directory of the file system.
    root_node: NodeId,
    /// Erase DIR's content (including an existing kDFS) first.
    #[arg(long)]
    force: bool,
    /// Copies of each file kept on this node: 1, 2 or 3 (the others on
    /// the next members in id order, which serve them while this node is
    /// down). Give the same on every node.
    #[arg(long, value_name = "N", default_value_t = 1)]
    replicas: u8,
    /// Admin socket of the local krgd.
    #[arg(long, value_name = "PATH", default_value = krg_proto::DEFAULT_SOCKET, env = "KRG_SOCKET")]
    socket: PathBuf,
}

fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start runtime")?;
    let reply = rt.block_on(admin_call(&args.socket, KdfsAdminRequest::Info))?;
    let KdfsAdminReply::Info {
        node,
        cluster_started,
        members,
        attached,
        ..
    } = reply
    else {
        bail!("krgd answered out of turn")
    };
    if !cluster_started {
        bail!("no cluster is running on this node (start it with `krgadm cluster start`)");
    }
    if !members.iter().any(|m| m.id == args.root_node) {
        let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
        bail!(
            "root node {} is not a cluster member (members: {})",
            args.root_node,
            ids.join(" ")
        );
    }
    if let Some(served) = attached {
        let same = std::fs::canonicalize(&args.dir).ok() == Some(PathBuf::from(&served));
        if !same && !args.force {
            bail!(
                "node {node}'s krgd already serves kDFS directory {served} (one per node; --force detaches it and serves {} instead)",
                args.dir.display()
            );
        }
        if args.force {
            // Stop serving before the directory is erased or replaced.
            rt.block_on(admin_call(&args.socket, KdfsAdminRequest::Detach))?;
        }
    }
    let sb = mkfs(&MkfsOptions {
        dir: args.dir.clone(),
        node,
        root_node: args.root_node,
        force: args.force,
        replicas: args.replicas,
    })?;
    let dir = std::fs::canonicalize(&args.dir).unwrap_or_else(|_| args.dir.clone());
    let dir_s = dir
        .to_str()
        .with_context(|| format!("{} is not UTF-8", dir.display()))?
        .to_string();
    // krgd serves the store from now on, mounted or not (and again after a
    // restart): mounts on other nodes need not wait for a mount here.
    let attached = rt.block_on(admin_call(
        &args.socket,
        KdfsAdminRequest::Attach {
            dir: dir_s,
            fs_id: None,
        },
    ));
    if sb.root_node == node {
        attached.context("formatted, but the local krgd does not serve it")?;
        println!(
            "{}: kDFS {:032x}, node {node}, root directory here",
            args.dir.display(),
            sb.fs_id
        );
    } else if let Ok(KdfsAdminReply::Attached { fs_id, .. }) = attached {
        println!(
            "{}: kDFS {fs_id:032x}, node {node}, root on node {} (served)",
            args.dir.display(),
            sb.root_node
        );
    } else {
        println!(
            "{}: kDFS part of node {node}, root on node {} (not served yet: it joins at its first mount)",
            args.dir.display(),
            sb.root_node
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    krg_clidoc::intercept::<Args>(&PAGE);
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mkfs.kdfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The hand-written part of this binary's man page (`--generate man`).
const PAGE: krg_clidoc::Page = krg_clidoc::Page {
    section: "8",
    sections: &[
        krg_clidoc::Section {
            title: "EXIT STATUS",
            body: "0: the store was made.
1: it was not (the directory exists and is not empty, no krgd answering); one line says why.",
        },
        krg_clidoc::Section {
            title: "EXAMPLES",
            body: "  mkfs.kdfs /KDFS 1
  mkfs.kdfs /ANOTHER-KDFS 1
  mkfs.kdfs --replicas 2 /KDFS 1    (on every node: each store mirrored on the next member)",
        },
        krg_clidoc::Section {
            title: "FILES",
            body: "DIR/kdfs.sb, DIR/root.meta, DIR/ino.next, DIR/inodes/: the store.
DIR/generation: a mirrored store's generation (who serves it is decided in the cluster's Raft log).
DIR/mirrors/NODE/: the copy of node NODE's store this node keeps as its mirror (--replicas 2 or 3).
/run/krg/krgd.sock: the local krgd (--socket, KRG_SOCKET).",
        },
        krg_clidoc::Section {
            title: "SEE ALSO",
            body: "mount.kdfs(8), krgd(8)",
        },
    ],
};
