//! Files that live inside the image a node boots: /etc/fstab, /etc/hosts,
//! /etc/hostname, /etc/krg/krgd.toml and, in shared mode, a systemd
//! generator that mounts the node's read-write directories.

use std::fmt::Write;

use super::{krgd, Ctx, Plan, PlannedDir, PlannedFile};
use crate::desc::RootMode;

/// Where, under `--out`, the shared-mode generator is rendered.
pub const GENERATOR_PATH: &str = "root/etc/systemd/system-generators/krg-node-mounts";

/// The scheduler tree's mount point, relative to a node's root.
fn scheduler_mount() -> &'static str {
    krg_proto::DEFAULT_SCHEDULER_MOUNT.trim_start_matches('/')
}

pub fn fstab(c: &Ctx) -> String {
    let d = c.d;
    let mut s = String::new();
    let _ = writeln!(s, "# /etc/fstab of a krg node (session {}) — rendered by nfsroot; edit the description and re-render.", d.cluster.session_id);
    let _ = writeln!(s, "#");
    let _ = writeln!(
        s,
        "# The root file system is NFS, mounted by the initramfs from the kernel command"
    );
    let _ = writeln!(
        s,
        "# line (root=/dev/nfs nfsroot=...), so it has no line here."
    );
    let _ = writeln!(
        s,
        "# The krg scheduler tree /config/krg_scheduler is a FUSE mount that krgd serves"
    );
    let _ = writeln!(
        s,
        "# itself (this kernel has no configfs): it needs no line here either, only the"
    );
    let _ = writeln!(
        s,
        "# /config/krg_scheduler directory in the image, which nfsroot creates."
    );
    let _ = writeln!(
        s,
        "# /var/run and /var/lock are symlinks to /run in Debian, hence tmpfs on /run."
    );
    let _ = writeln!(s, "#");
    let _ = writeln!(
        s,
        "# <file system> <mount point> <type> <options> <dump> <pass>"
    );
    let _ = writeln!(s, "proc\t/proc\tproc\tnosuid,nodev,noexec\t0 0");
    let _ = writeln!(s, "tmpfs\t/run\ttmpfs\tnosuid,nodev,mode=0755\t0 0");
    let rw =
        |dir: &str| d.image.mode == RootMode::Shared && d.image.rw_dirs.iter().any(|x| x == dir);
    if !rw("tmp") {
        let _ = writeln!(s, "tmpfs\t/tmp\ttmpfs\tnosuid,nodev,mode=1777\t0 0");
    }
    if d.image.mode == RootMode::Shared {
        if !rw("var") {
            let _ = writeln!(
                s,
                "# The root is read-only and /var is not a per-node directory: keep what must be"
            );
            let _ = writeln!(s, "# writable in memory.");
            let _ = writeln!(s, "tmpfs\t/var/tmp\ttmpfs\tnosuid,nodev,mode=1777\t0 0");
            let _ = writeln!(s, "tmpfs\t/var/log\ttmpfs\tnosuid,nodev,mode=0755\t0 0");
            let _ = writeln!(s, "tmpfs\t/var/lib/krg\ttmpfs\tnosuid,nodev,mode=0700\t0 0");
        }
        let _ = writeln!(
            s,
            "# Per-node read-write {} are NFS-mounted by the systemd generator",
            d.image.rw_dirs.join(", ")
        );
        let _ = writeln!(s, "# /etc/systemd/system-generators/krg-node-mounts (it reads node_id= from /proc/cmdline).");
    }
    s
}

pub fn hosts(c: &Ctx) -> String {
    let d = c.d;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# /etc/hosts of krg session {} — rendered by nfsroot; edit the description and re-render.",
        d.cluster.session_id
    );
    let _ = writeln!(s, "127.0.0.1\tlocalhost");
    let _ = writeln!(s, "::1\tlocalhost ip6-localhost ip6-loopback");
    let _ = writeln!(
        s,
        "{}\t{}.{} {}",
        c.server, d.server.name, d.cluster.domain, d.server.name
    );
    for n in &d.nodes {
        let _ = writeln!(s, "{}\t{}.{} {}", n.ip, n.name, d.cluster.domain, n.name);
    }
    s
}

/// Shared mode: a systemd generator (run very early, before any mount) that
/// finds this node by `node_id=` on the kernel command line and writes one
/// mount unit per read-write directory. `KRG_CMDLINE` overrides
/// /proc/cmdline so that the script can be tested without booting.
pub fn generator(c: &Ctx) -> String {
    let d = c.d;
    let mut s = String::new();
    s.push_str("#!/bin/sh\n");
    let _ = writeln!(
        s,
        "# krg session {}: mounts this node's read-write directories from the server.",
        d.cluster.session_id
    );
    s.push_str("# Rendered by nfsroot; edit the description and re-render.\n");
    s.push_str("# systemd runs generators with the output directory as first argument.\nset -eu\nout=\"${1:-/run/systemd/generator}\"\n");
    s.push_str("cmdline=\"${KRG_CMDLINE:-$(cat /proc/cmdline)}\"\nid=\"\"\n");
    s.push_str(
        "for w in $cmdline; do\n  case \"$w\" in node_id=*) id=\"${w#node_id=}\" ;; esac\ndone\n",
    );
    s.push_str("mount_unit() { # $1 = directory name, $2 = NFS source\n");
    s.push_str("  cat > \"$out/$1.mount\" <<EOF\n[Unit]\nDescription=krg per-node /$1\nDefaultDependencies=no\nBefore=local-fs.target\n\n");
    s.push_str("[Mount]\nWhat=$2\nWhere=/$1\nType=nfs\nOptions=rw,vers=3,tcp,nolock\nEOF\n");
    s.push_str("  mkdir -p \"$out/local-fs.target.requires\"\n  ln -sf \"../$1.mount\" \"$out/local-fs.target.requires/$1.mount\"\n}\n");
    s.push_str("case \"$id\" in\n");
    for n in &d.nodes {
        let _ = writeln!(s, "  {})", n.node_id);
        for dir in &d.image.rw_dirs {
            let _ = writeln!(
                s,
                "    mount_unit {dir} {}:{}",
                c.server,
                c.state_dir(n, dir).display()
            );
        }
        s.push_str("    ;;\n");
    }
    s.push_str("  *) echo \"krg-node-mounts: node_id '$id' is not in the cluster description\" >&2 ;;\nesac\n");
    s
}

/// Files and directories inside the roots the nodes boot.
pub fn plan_node_roots(c: &Ctx, plan: &mut Plan) {
    let d = c.d;
    match d.image.mode {
        RootMode::Clone => {
            for n in &d.nodes {
                let root = c.node_root(n);
                let exists = root.symlink_metadata().is_ok()
                    || crate::image::read_meta(&d.image.root, &n.name).is_some();
                if exists {
                    if let Err(why) = crate::image::writable_clone(&d.image.root, &n.name) {
                        plan.notes
                            .push(format!("node {}: {why}; its files are not written", n.name));
                        continue;
                    }
                }
                if !root.is_dir() {
                    plan.notes.push(format!(
                        "node {}: its root {} does not exist yet; make it with `nfsroot image clone {} {}` and render again",
                        n.name,
                        root.display(),
                        d.image.boot,
                        n.name
                    ));
                    continue;
                }
                let mut add = |rel: &str, text: String| {
                    plan.files.push(PlannedFile {
                        path: root.join(rel),
                        contents: text.into_bytes(),
                        mode: 0o644,
                        role: Default::default(),
                    });
                };
                add("etc/fstab", fstab(c));
                add("etc/hosts", hosts(c));
                add("etc/hostname", format!("{}\n", n.name));
                add("etc/krg/krgd.toml", krgd::node(c, n));
                plan.dirs.push(PlannedDir {
                    path: root.join(scheduler_mount()),
                    mode: 0o755,
                    seed: None,
                });
            }
        }
        RootMode::Shared => {
            let image = d.image.root.join(&d.image.boot);
            if !image.is_dir() {
                plan.notes.push(format!(
                    "image {} does not exist yet in {}",
                    d.image.boot,
                    d.image.root.display()
                ));
            } else if std::fs::read(image.join("etc/fstab")).ok().as_deref()
                != Some(fstab(c).as_bytes())
            {
                plan.notes.push(format!(
                    "image {}: its /etc/fstab is not the rendered one; copy <out>/root/ into the image it was snapshot from and snapshot again",
                    d.image.boot
                ));
            }
            for n in &d.nodes {
                for dir in &d.image.rw_dirs {
                    let seed = image.join(dir);
                    plan.dirs.push(PlannedDir {
                        path: c.state_dir(n, dir),
                        mode: if dir == "tmp" { 0o1777 } else { 0o755 },
                        seed: seed.is_dir().then_some(seed),
                    });
                }
            }
        }
    }
}
