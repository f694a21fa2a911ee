//! Hand-overs that fail midway, crash, or run in turn, and the store
//! being handed over.

use super::*;

/// A hand-over that fails midway (a failure point after its first name was
/// pointed at a copy) is undone: the names are node 3's again, the copies
/// are gone, node 3's store takes writes again.
#[test]
fn a_failed_hand_over_is_undone() {
    let c = Cluster::with_kdfs(3);
    let (m1, m3) = (c.mnt(0).to_path_buf(), c.mnt(2).to_path_buf());
    fs::create_dir_all(m3.join("d3/sub")).unwrap();
    fs::write(m3.join("d3/f"), b"node 3's data").unwrap();
    fs::write(m3.join("d3/sub/g"), b"deeper").unwrap();
    fs::create_dir(m1.join("d1")).unwrap();
    fs::hard_link(m3.join("d3/f"), m3.join("d1/f-link")).unwrap();
    // A striped file with units on node 3: they are handed over before
    // the names, and given back by the undo.
    fs::create_dir(m1.join("s")).unwrap();
    kdfsctl_stripe(&[Path::new("64K:3"), &m1.join("s")]);
    fs::write(m1.join("s/f"), pattern(7 * (64 << 10), 3)).unwrap();
    // And one node 3 owns (over 3,1,2), copied with the walk: the other
    // holders' units are renamed to the copy, and back by the undo.
    fs::create_dir(m3.join("d3/st")).unwrap();
    kdfsctl_stripe(&[Path::new("64K:3"), &m3.join("d3/st")]);
    fs::write(m3.join("d3/st/f"), pattern(8 * (64 << 10), 9)).unwrap();
    assert!(kdfsctl_stripe(&[&m1.join("d3/st/f")]).contains("on nodes 3,1,2"));
    let owned_by_3 = fs::metadata(m1.join("d3/st/f")).unwrap().ino();
    Command::new("sync").status().unwrap();
    let before = tree(&m1);
    let kept = (objects(&c, 0), objects(&c, 1));

    fs::write(c.nodes[2].data.join("crash-at"), "fail:handover-repointed").unwrap();
    nodes_del(&c, 0, "3");
    let log3 = plain(&fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap());
    assert!(
        log3.contains("the hand-over failed") && log3.contains("undo_failures=0"),
        "{log3}"
    );
    assert!(log3.contains("kdfs: not handed over"), "{log3}");

    same_tree(&tree(&m1), &before, "the tree after the undo");
    for p in ["d3", "d3/f", "d3/sub/g", "d1/f-link"] {
        assert_eq!(owner(&m1.join(p)), 3, "{p} is node 3's again");
    }
    assert_eq!((objects(&c, 0), objects(&c, 1)), kept, "copies left behind");
    assert!(kdfsctl_stripe(&[&m1.join("s/f")]).contains("on nodes 1,2,3"));
    assert!(kdfsctl_stripe(&[&m1.join("d3/st/f")]).contains("on nodes 3,1,2"));
    assert_eq!(
        fs::read_dir(c.nodes[2].store.join("stripes"))
            .unwrap()
            .count(),
        1,
        "node 3's stripe units"
    );
    for (i, copies) in [(0, 1), (1, 2)] {
        let names: Vec<String> = fs::read_dir(c.nodes[i].store.join("stripes"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&format!("{owned_by_3:016x}")) && names.len() == copies,
            "node {}'s units of node 3's striped file (and no other name): {names:?}",
            i + 1
        );
    }
    // Writable again.
    fs::write(m3.join("d3/f"), b"written after the undo").unwrap();
    assert_eq!(
        fs::read(m3.join("d1/f-link")).unwrap(),
        b"written after the undo"
    );
}

/// The root node's hand-over failing once the target holds the new root
/// (a failure point) is undone: every superblock names node 1 again, the
/// target keeps no root meta-file, and the tree is as it was.
#[test]
fn a_failed_root_hand_over_is_undone() {
    let c = Cluster::with_kdfs(3);
    let (m1, m2) = (c.mnt(0).to_path_buf(), c.mnt(1).to_path_buf());
    fs::create_dir(m1.join("d1")).unwrap();
    fs::write(m1.join("d1/f"), b"node 1's").unwrap();
    fs::write(m1.join("top"), b"in the root").unwrap();
    fs::write(m2.join("of2"), b"node 2's in the root").unwrap();
    Command::new("sync").status().unwrap();
    let before = tree(&m2);

    fs::write(c.nodes[0].data.join("crash-at"), "fail:handover-root-moved").unwrap();
    nodes_del(&c, 1, "1");
    let log1 = plain(&fs::read_to_string(c.nodes[0].data.join("krgd.log")).unwrap());
    assert!(
        log1.contains("the hand-over failed") && log1.contains("undo_failures=0"),
        "{log1}"
    );
    for i in 0..3 {
        let sb = kdfs::format::read_superblock(&c.nodes[i].store).unwrap();
        assert_eq!(sb.root_node, 1, "node {}'s superblock", i + 1);
        let meta = c.nodes[i].store.join("root.meta").exists();
        assert_eq!(meta, i == 0, "node {}'s root meta-file", i + 1);
    }
    // (a mount that followed the root to the target follows it back)
    std::thread::sleep(kdfs::client::root::FOLLOW_EVERY * 2);
    same_tree(&tree(&m2), &before, "the tree after the undo");
    assert_eq!(owner(&m2.join("top")), 1);
}

/// kill -9 of the leaving krgd in the middle of its pass (held by a pause
/// point after its first names were pointed at copies): it is a failed
/// node then, removed at once. Every name still reads what it held or
/// fails (its inode stayed on the dead node); none reads other bytes.
#[test]
fn a_hand_over_cut_by_a_crash_leaves_no_wrong_file() {
    let mut c = Cluster::with_kdfs(3);
    let (m1, m3) = (c.mnt(0).to_path_buf(), c.mnt(2).to_path_buf());
    fs::create_dir(m3.join("d3")).unwrap();
    fs::create_dir(m1.join("d1")).unwrap();
    for i in 0..40 {
        fs::write(m3.join(format!("d3/f{i}")), format!("file {i} of node 3")).unwrap();
        fs::write(m3.join(format!("d1/g{i}")), format!("file {i} in node 1's")).unwrap();
    }
    Command::new("sync").status().unwrap();
    let before = tree(&m1);
    fs::write(
        c.nodes[2].data.join("crash-at"),
        "pause:handover-repointed:20000",
    )
    .unwrap();
    let del = nodes_del_held(&c);
    let log3 = || plain(&fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap_or_default());
    wait_until("the pass held mid-way", Duration::from_secs(20), || {
        log3().contains("pause point reached")
    });
    c.umount(2);
    c.kill_krgd(2);
    let out = del.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut moved, mut lost) = (0, 0);
    for (p, seen_before) in &before {
        match fs::symlink_metadata(m1.join(p)) {
            Ok(m) if m.is_file() => match fs::read(m1.join(p)) {
                Ok(data) => {
                    assert_eq!(&data, &seen_before.7, "{} reads other bytes", p.display());
                    moved += 1;
                }
                Err(_) => lost += 1,
            },
            Ok(_) => {}
            Err(_) => lost += 1,
        }
    }
    assert!(moved > 0 && lost > 0, "moved {moved}, lost {lost}");
}

/// Two nodes leaving at once, each naming the other's inodes in its
/// directories: they hand over in turn, and everything ends on node 1.
#[test]
fn two_leaving_nodes_hand_over_in_turn() {
    let mut c = Cluster::with_kdfs(3);
    let (m1, m2, m3) = (
        c.mnt(0).to_path_buf(),
        c.mnt(1).to_path_buf(),
        c.mnt(2).to_path_buf(),
    );
    fs::create_dir(m2.join("d2")).unwrap();
    fs::create_dir(m3.join("d2/d3")).unwrap();
    fs::write(m2.join("d2/d3/of2"), b"node 2's file in node 3's directory").unwrap();
    fs::write(m3.join("d2/of3"), b"node 3's file in node 2's directory").unwrap();
    Command::new("sync").status().unwrap();
    assert_eq!((owner(&m1.join("d2")), owner(&m1.join("d2/d3"))), (2, 3));
    let before = tree(&m1);

    nodes_del(&c, 0, "2:3");
    for i in [1, 2] {
        let log = fs::read_to_string(c.nodes[i].data.join("krgd.log")).unwrap();
        assert!(log.contains("kdfs: handed over"), "node {}: {log}", i + 1);
    }
    for i in [1, 2] {
        c.umount(i);
        c.kill_krgd(i);
    }
    assert_eq!(tree(&m1), before);
    for p in before.keys() {
        assert_eq!(owner(&m1.join(p)), 1, "{}", p.display());
    }
}

/// While node 3 hands over, its store refuses every change (EROFS), so
/// that what is copied is what stays; other nodes' files are not affected.
#[test]
fn a_store_being_handed_over_is_read_only() {
    let c = Cluster::with_kdfs(3);
    let (m1, m3) = (c.mnt(0).to_path_buf(), c.mnt(2).to_path_buf());
    fs::create_dir(m3.join("d3")).unwrap();
    fs::write(m3.join("d3/f"), b"before the hand-over").unwrap();
    fs::write(m1.join("of1"), b"node 1's").unwrap();
    // Hold the pass 3 s once the store is read-only.
    fs::write(
        c.nodes[2].data.join("crash-at"),
        "pause:handover-read-only:3000",
    )
    .unwrap();
    let del = nodes_del_held(&c);
    let log3 = || plain(&fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap_or_default());
    wait_until("node 3's store read-only", Duration::from_secs(20), || {
        log3().contains("pause point reached")
    });
    // Meanwhile every member shows node 3 as leaving.
    for i in 0..2 {
        let out = krgadm(&c, i, &["nodes", "status"]);
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let row3 = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some("3"));
        assert!(row3.is_some_and(|r| r.contains("leaving")), "{table}");
    }
    let erofs = |r: std::io::Result<()>| {
        assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(libc::EROFS)));
    };
    erofs(fs::write(m1.join("d3/f"), b"changed meanwhile"));
    erofs(fs::write(m1.join("d3/new"), b"made meanwhile"));
    erofs(fs::set_permissions(
        m1.join("d3/f"),
        fs::Permissions::from_mode(0o600),
    ));
    erofs(fs::rename(m1.join("d3/f"), m1.join("d3/g")));
    fs::write(m1.join("of1"), b"node 1's, changed").unwrap();
    let out = del.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log3().contains("kdfs: handed over"), "{}", log3());
    assert_eq!(fs::read(m1.join("d3/f")).unwrap(), b"before the hand-over");
    assert_ne!(owner(&m1.join("d3/f")), 3);
    assert_eq!(fs::read(m1.join("of1")).unwrap(), b"node 1's, changed");
}
