//! Images on real file systems: build from a prepared tree, read-only
//! versions, clones by btrfs snapshot (loop-mounted btrfs), reflink copy
//! (loop-mounted xfs) and overlayfs (the test directory's own file system),
//! and render writing into the clones. Needs root (mount), as CI runs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use common::*;
use std::path::Path;

fn build_and_version(root: &Path, work: &Path) -> String {
    let tree = prepared_tree(work);
    let bins = work.join("bins");
    std::fs::create_dir_all(&bins).unwrap();
    std::fs::copy("/bin/true", bins.join("krgd")).unwrap();
    for b in ["mount.kdfs", "fsck.kdfs", "krg"] {
        std::fs::copy("/bin/true", bins.join(b)).unwrap();
    }
    let r = root.to_str().unwrap();
    let s = ok(&[
        "image",
        "build",
        "base",
        "--root",
        r,
        "--from-tree",
        tree.to_str().unwrap(),
        "--krg-bin-dir",
        bins.to_str().unwrap(),
    ]);
    assert!(s.contains("built image base"), "{s}");
    let img = root.join("base");
    assert!(img.join("usr/local/sbin/krgd").is_file());
    assert!(img.join("usr/sbin/mount.kdfs").is_file());
    assert!(img.join("usr/sbin/fsck.kdfs").is_file());
    assert!(img.join("usr/local/bin/krg").is_file());
    assert!(img.join("config/krg_scheduler").is_dir());
    assert!(img
        .join("etc/systemd/system/multi-user.target.wants/krgd.service")
        .symlink_metadata()
        .is_ok());
    assert!(
        std::fs::read(img.join("etc/krg/cluster.key"))
            .unwrap()
            .len()
            >= 16
    );
    let e = fails(&[
        "image",
        "build",
        "base",
        "--root",
        r,
        "--from-tree",
        tree.to_str().unwrap(),
    ]);
    assert!(e.contains("base already exists"), "{e}");
    let s1 = ok(&["image", "snapshot", "base", "--root", r]);
    assert!(s1.starts_with("made base@1"), "{s1}");
    let s2 = ok(&["image", "snapshot", "base", "--root", r]);
    assert!(s2.starts_with("made base@2"), "{s2}");
    s1
}

/// Clone base@1 to node1 and check it is a writable, independent copy.
fn clone_and_use(root: &Path, work: &Path, want: &str) {
    let r = root.to_str().unwrap();
    let s = ok(&["image", "clone", "base@1", "node1", "--root", r]);
    assert!(
        s.contains(&format!("cloned base@1 to node1 using {want}")),
        "{s}"
    );
    std::fs::write(root.join("node1/etc/os-release"), "changed\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("base@1/etc/os-release")).unwrap(),
        "PRETTY_NAME=\"test tree\"\n"
    );
    // Render writes each node's files into its clone.
    let desc = write_description(work, root, "");
    let out = work.join("out");
    let (d, o) = (desc.to_str().unwrap(), out.to_str().unwrap());
    let s = ok(&["render", d, "--out", o]);
    assert!(s.contains("node node2: its root"), "{s}");
    let k: krgd::config::Settings =
        toml::from_str(&std::fs::read_to_string(root.join("node1/etc/krg/krgd.toml")).unwrap())
            .unwrap();
    assert_eq!(k.node_id, Some(1));
    assert_eq!(
        std::fs::read_to_string(root.join("node1/etc/hostname")).unwrap(),
        "node1\n"
    );
    assert!(ok(&["render", d, "--out", o]).starts_with("nothing changed"));
    let ls = ok(&["image", "ls", "--root", r]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("node1 ") && l.contains("clone") && l.contains("base@1")),
        "{ls}"
    );
    let e = fails(&["image", "rm", "base@1", "--root", r]);
    assert!(e.contains("origin of node1"), "{e}");
    ok(&["image", "rm", "node1", "--root", r]);
    ok(&["image", "rm", "base@1", "--root", r]);
    ok(&["image", "rm", "base@2", "--root", r]);
    ok(&["image", "rm", "base", "--root", r]);
    let ls = ok(&["image", "ls", "--root", r]);
    assert_eq!(ls.lines().count(), 1, "{ls}");
}

#[test]
fn btrfs_versions_are_read_only_snapshots_and_clones_are_snapshots() {
    let Some(fs) = LoopFs::new("btrfs", 512) else {
        panic!("mkfs.btrfs is required: apt-get install btrfs-progs");
    };
    let root = fs.mnt.join("images");
    let work = tempfile::tempdir().unwrap();
    let _sweep = MountSweeper(work.path().to_path_buf());
    let s = build_and_version(&root, work.path());
    assert!(s.contains("btrfs subvolume snapshot, read-only"), "{s}");
    let e = std::fs::write(root.join("base@1/etc/new"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    clone_and_use(&root, work.path(), "btrfs subvolume snapshot");
}

#[test]
fn xfs_clones_are_reflink_copies_and_versions_immutable() {
    let Some(fs) = LoopFs::new("xfs", 512) else {
        panic!("mkfs.xfs is required: apt-get install xfsprogs");
    };
    let root = fs.mnt.join("images");
    let work = tempfile::tempdir().unwrap();
    let _sweep = MountSweeper(work.path().to_path_buf());
    let s = build_and_version(&root, work.path());
    assert!(s.contains("reflink copy, read-only"), "{s}");
    let e = std::fs::write(root.join("base@1/etc/new"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "immutable: {e}");
    // Overlay clones of an immutable version are refused with the reason.
    let e = fails(&[
        "image",
        "clone",
        "base@1",
        "x",
        "--root",
        root.to_str().unwrap(),
        "--mechanism",
        "overlay",
    ]);
    assert!(e.contains("immutable flags"), "{e}");
    clone_and_use(&root, work.path(), "reflink copy");
}

#[test]
fn ext4_clones_fall_back_to_overlayfs() {
    // The test directory's own file system: neither btrfs nor reflink-capable
    // (ext4 here). tmpfs is used if that is what the temp dir is on: no reflink either.
    let work = tempfile::tempdir().unwrap();
    let _sweep = MountSweeper(work.path().to_path_buf());
    let root = work.path().join("images");
    let s = build_and_version(&root, work.path());
    if s.contains("reflink") {
        eprintln!(
            "the temp dir supports reflink; the overlay fallback is covered by --mechanism below"
        );
    }
    let r = root.to_str().unwrap();
    let e = fails(&[
        "image",
        "clone",
        "base@1",
        "n",
        "--root",
        r,
        "--mechanism",
        "btrfs",
    ]);
    assert!(
        e.contains("btrfs subvolume snapshot is not available"),
        "{e}"
    );
    if !s.contains("reflink") {
        clone_and_use(&root, work.path(), "overlayfs");
        return;
    }
    ok(&["image", "rm", "base@1", "--root", r]);
}

#[test]
fn overlay_clone_survives_remount() {
    let work = tempfile::tempdir().unwrap();
    let _sweep = MountSweeper(work.path().to_path_buf());
    let root = work.path().join("images");
    let r = root.to_str().unwrap();
    let tree = prepared_tree(work.path());
    ok(&[
        "image",
        "build",
        "gold",
        "--root",
        r,
        "--from-tree",
        tree.to_str().unwrap(),
    ]);
    let s = ok(&[
        "image",
        "clone",
        "gold",
        "node1",
        "--root",
        r,
        "--mechanism",
        "overlay",
    ]);
    assert!(
        s.contains("using overlayfs") && s.contains("overlay "),
        "{s}"
    );
    std::fs::write(root.join("node1/etc/mine"), "kept\n").unwrap();
    assert!(std::process::Command::new("umount")
        .arg(root.join("node1"))
        .status()
        .unwrap()
        .success());
    assert!(ok(&["image", "ls", "--root", r]).contains("not mounted"));
    // Render must not write into the empty mount point of an unmounted overlay.
    let desc = write_description(work.path(), &root, "");
    let text = std::fs::read_to_string(&desc)
        .unwrap()
        .replace("boot = \"base@1\"", "boot = \"gold\"");
    std::fs::write(&desc, text).unwrap();
    let out = work.path().join("out");
    let s = ok(&[
        "render",
        desc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        s.contains("node node1: overlay clone node1 is not mounted"),
        "{s}"
    );
    assert_eq!(std::fs::read_dir(root.join("node1")).unwrap().count(), 0);
    assert_eq!(
        ok(&["image", "mount", "node1", "--root", r]).trim(),
        "mounted node1"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("node1/etc/mine")).unwrap(),
        "kept\n"
    );
    ok(&["image", "rm", "node1", "--root", r]);
    ok(&["image", "rm", "gold", "--root", r]);
}

#[test]
fn nodes_add_with_clone_makes_the_new_nodes_clone_and_renders_into_it() {
    let work = tempfile::tempdir().unwrap();
    let _sweep = MountSweeper(work.path().to_path_buf());
    let root = work.path().join("images");
    let r = root.to_str().unwrap();
    let tree = prepared_tree(work.path());
    ok(&[
        "image",
        "build",
        "base",
        "--root",
        r,
        "--from-tree",
        tree.to_str().unwrap(),
    ]);
    ok(&["image", "snapshot", "base", "--root", r]);
    let desc = write_description(work.path(), &root, "");
    let out = work.path().join("out");
    let (d, o) = (desc.to_str().unwrap(), out.to_str().unwrap());
    let s = ok(&[
        "nodes",
        "add",
        d,
        "node7",
        "52:54:00:00:00:07",
        "10.0.0.17",
        "--node-id",
        "7",
        "--clone",
        "--out",
        o,
    ]);
    assert!(s.contains("added node node7 with node_id 7"), "{s}");
    assert!(s.contains("cloned base@1 to node7 using"), "{s}");
    let k: krgd::config::Settings =
        toml::from_str(&std::fs::read_to_string(root.join("node7/etc/krg/krgd.toml")).unwrap())
            .unwrap();
    assert_eq!(k.node_id, Some(7));
    let exports = std::fs::read_to_string(out.join("nfs/exports")).unwrap();
    assert!(
        exports.contains(&format!("{r}/node7\t10.0.0.17(rw,")),
        "{exports}"
    );
    ok(&["image", "rm", "node7", "--root", r]);
}

#[test]
fn render_copies_the_newest_kernel_and_initrd_of_the_boot_image() {
    let work = tempfile::tempdir().unwrap();
    let _sweep = MountSweeper(work.path().to_path_buf());
    let root = work.path().join("images");
    let r = root.to_str().unwrap();
    let tree = prepared_tree(work.path());
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    for (v, byte) in [("6.1.0-9-amd64", 0xf9u8), ("6.1.0-10-amd64", 0xfa)] {
        std::fs::write(
            tree.join(format!("boot/vmlinuz-{v}")),
            [0x4d, 0x5a, byte, 0xff],
        )
        .unwrap();
        std::fs::write(
            tree.join(format!("boot/initrd.img-{v}")),
            [0x1f, 0x8b, byte, 0xff],
        )
        .unwrap();
    }
    std::fs::write(tree.join("boot/vmlinuz-6.2.0-orphan"), "no initrd").unwrap();
    ok(&[
        "image",
        "build",
        "base",
        "--root",
        r,
        "--from-tree",
        tree.to_str().unwrap(),
    ]);
    ok(&["image", "snapshot", "base", "--root", r]);
    let desc = write_description(work.path(), &root, "");
    let out = work.path().join("out");
    let (d, o) = (desc.to_str().unwrap(), out.to_str().unwrap());
    let s = ok(&["render", d, "--out", o, "--diff"]);
    assert!(
        s.contains("new binary file") && s.contains("tftp/krg/vmlinuz (4 bytes)"),
        "{s}"
    );
    ok(&["render", d, "--out", o]);
    assert_eq!(
        std::fs::read(out.join("tftp/krg/vmlinuz")).unwrap(),
        [0x4d, 0x5a, 0xfa, 0xff]
    );
    assert_eq!(
        std::fs::read(out.join("tftp/krg/initrd.img")).unwrap(),
        [0x1f, 0x8b, 0xfa, 0xff]
    );
    assert!(ok(&["render", d, "--out", o]).starts_with("nothing changed"));
}

#[test]
fn image_update_installs_new_binaries_and_is_refused_for_versions_clones_and_origins() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("images");
    let _sweep = MountSweeper(root.clone());
    let r = root.to_str().unwrap();
    let tree = prepared_tree(t.path());
    let bins = t.path().join("bins");
    std::fs::create_dir_all(&bins).unwrap();
    std::fs::copy("/bin/true", bins.join("krgd")).unwrap();
    let b = bins.to_str().unwrap();
    let tr = tree.to_str().unwrap();
    ok(&[
        "image",
        "build",
        "base",
        "--root",
        r,
        "--from-tree",
        tr,
        "--krg-bin-dir",
        b,
    ]);
    let key = std::fs::read(root.join("base/etc/krg/cluster.key")).unwrap();
    // A rebuilt krg goes in; the cluster key stays.
    std::fs::copy("/bin/false", bins.join("krgd")).unwrap();
    std::fs::copy("/bin/true", bins.join("krgadm")).unwrap();
    let s = ok(&["image", "update", "base", "--root", r, "--krg-bin-dir", b]);
    assert!(s.contains("updated image base"), "{s}");
    assert_eq!(
        std::fs::read(root.join("base/usr/local/sbin/krgd")).unwrap(),
        std::fs::read("/bin/false").unwrap()
    );
    assert!(root.join("base/usr/local/sbin/krgadm").is_file());
    assert_eq!(
        std::fs::read(root.join("base/etc/krg/cluster.key")).unwrap(),
        key
    );

    let e = fails(&["image", "update", "base", "--root", r]);
    assert!(e.contains("nothing to update"), "{e}");
    let e = fails(&["image", "update", "nosuch", "--root", r, "--krg-bin-dir", b]);
    assert!(e.contains("no image named nosuch"), "{e}");
    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = fails(&[
        "image",
        "update",
        "base",
        "--root",
        r,
        "--krg-bin-dir",
        empty.to_str().unwrap(),
    ]);
    assert!(e.contains("has no krgd binary"), "{e}");
    ok(&["image", "snapshot", "base", "--root", r]);
    let e = fails(&["image", "update", "base@1", "--root", r, "--krg-bin-dir", b]);
    assert!(e.contains("base@1 is a version"), "{e}");
    let e = fails(&["image", "update", "base", "--root", r, "--krg-bin-dir", b]);
    assert!(e.contains("base is the origin of base@1"), "{e}");
    ok(&["image", "clone", "base@1", "c1", "--root", r]);
    let e = fails(&["image", "update", "c1", "--root", r, "--krg-bin-dir", b]);
    assert!(e.contains("c1 is a clone"), "{e}");
    ok(&["image", "rm", "c1", "--root", r]);
    ok(&["image", "rm", "base@1", "--root", r]);
    ok(&["image", "update", "base", "--root", r, "--krg-bin-dir", b]);
}
