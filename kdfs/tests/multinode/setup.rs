//! mkfs.kdfs and mount.kdfs: refusals and the mount helper.

use super::*;

#[test]
fn mkfs_and_mount_refusals_and_mount_helper() {
    let c = Cluster::start(2);
    // Root must be a member.
    let out = c.mkfs(0, 9, false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("root node 9 is not a cluster member"));
    // Non-empty refused without --force.
    fs::write(c.nodes[0].store.join("junk"), b"x").unwrap();
    let out = c.mkfs(0, 1, false);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.mkfs(0, 1, true).status.success());
    let out = c.mkfs(0, 1, false);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already formatted"));
    assert!(c.mkfs(1, 1, false).status.success());

    // Another directory while the krgd serves one: refused (one per node).
    let other = c.nodes[0].data.join("other-store");
    let out = run(Command::new(common::mkfs_bin())
        .arg("--socket")
        .arg(&c.nodes[0].sock)
        .arg(&other)
        .arg("1"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serves kDFS directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Corrupted superblock: refused at mount with a clear error.
    let sb = c.nodes[0].store.join("kdfs.sb");
    let good = fs::read(&sb).unwrap();
    let mut bad = good.clone();
    bad[18] ^= 0x55;
    fs::write(&sb, &bad).unwrap();
    let out = c.mount(0, "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kdfs.sb") && err.contains("checksum"), "{err}");
    fs::write(&sb, &good).unwrap();
    // Corrupted root meta-file: refused too.
    let rm = c.nodes[0].store.join("root.meta");
    let good_rm = fs::read(&rm).unwrap();
    fs::write(&rm, b"KDFS-RT\0garbage-garbage").unwrap();
    let out = c.mount(0, "");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("root.meta"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(&rm, &good_rm).unwrap();
    // A mount point that is a file, or is missing: one line naming it, and
    // nothing mounted.
    let file = c.nodes[0].data.join("a-file");
    fs::write(&file, b"").unwrap();
    for (at, why) in [
        (file.clone(), "Not a directory"),
        (c.nodes[0].data.join("missing"), "No such file"),
    ] {
        let out = run(common::in_netns(&c.nodes[0].netns, common::mount_bin())
            .arg(&c.nodes[0].store)
            .arg(&at)
            .arg("-o")
            .arg(c.mount_opts(0)));
        // Taken down before any assertion, so that a failure leaves none.
        let mounted = common::is_mounted(&at);
        if mounted {
            let _ = run(Command::new("umount").arg("-l").arg(&at));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!mounted && !out.status.success(), "mounted on {at:?}");
        assert!(
            err.contains("cannot mount on") && err.contains(why),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }

    // mount(8) helper convention: mount -t kdfs runs /sbin/mount.kdfs. One
    // installed there (by tests/local-cluster.sh, or a package) may be of
    // an older build: this build's helper takes its place for the call.
    let helper = HelperSwap::install(std::path::Path::new("/sbin/mount.kdfs"));
    let out = run(Command::new("mount")
        .args(["-t", "kdfs", "-o"])
        .arg(c.mount_opts(0))
        .arg(&c.nodes[0].store)
        .arg(c.mnt(0)));
    drop(helper);
    assert!(
        out.status.success(),
        "mount -t kdfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(common::is_mounted(c.mnt(0)));
    assert!(c.mount(1, "").status.success());
    fs::write(c.mnt(1).join("via-helper"), b"y").unwrap();
    assert_eq!(fs::read(c.mnt(0).join("via-helper")).unwrap(), b"y");
    // umount ends it cleanly.
    let out = run(Command::new("umount").arg(c.mnt(0)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!common::is_mounted(c.mnt(0)));
    // Node 1 keeps serving its files to the cluster after the local umount.
    assert_eq!(fs::read(c.mnt(1).join("via-helper")).unwrap(), b"y");
}

/// This build's mount.kdfs at `path` while it lives; whatever was there
/// before is put back on drop (also when the test fails).
struct HelperSwap {
    path: std::path::PathBuf,
    saved: Option<std::path::PathBuf>,
}

impl HelperSwap {
    fn install(path: &std::path::Path) -> Self {
        let saved = path.symlink_metadata().is_ok().then(|| {
            let aside = path.with_extension(format!("kdfs-test-{}", std::process::id()));
            fs::rename(path, &aside).unwrap();
            aside
        });
        symlink(common::mount_bin(), path).unwrap();
        Self {
            path: path.to_path_buf(),
            saved,
        }
    }
}

impl Drop for HelperSwap {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        if let Some(aside) = &self.saved {
            let _ = fs::rename(aside, &self.path);
        }
    }
}
