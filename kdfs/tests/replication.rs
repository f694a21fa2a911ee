//! `mkfs.kdfs --replicas 2`: each node's store mirrored on the next
//! member, which serves that node's files for reading while it is down.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{wait_until, Cluster};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn what_a_reader_sees(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let m = fs::symlink_metadata(&p).unwrap();
            let body = if m.is_file() {
                format!(
                    "{} bytes, sum {}",
                    m.len(),
                    fs::read(&p)
                        .unwrap()
                        .iter()
                        .map(|b| u64::from(*b))
                        .sum::<u64>()
                )
            } else if m.is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else {
                "dir".into()
            };
            format!(
                "{} {:o} {} {body}",
                p.file_name().unwrap().to_string_lossy(),
                m.mode(),
                m.mtime()
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_node_s_files_are_read_from_its_mirror_while_it_is_down() {
    let mut c = Cluster::with_kdfs_formatted(3, &["--replicas", "2"]);
    // Made through node 2's mount: node 2's files, mirrored on node 3.
    let d = c.mnt(1).join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("before-copy"), pattern(6 << 20, 1)).unwrap();
    c.wait_mirrored(1);
    // Changes after the copy reach the mirror one by one.
    let mut f = File::create(d.join("fsynced")).unwrap();
    f.write_all(&pattern(100_000, 2)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::set_permissions(d.join("fsynced"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("fsynced", d.join("link")).unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("sub/small"), b"small").unwrap();
    fs::write(d.join("gone"), b"x").unwrap();
    fs::remove_file(d.join("gone")).unwrap();
    fs::rename(d.join("sub/small"), d.join("renamed")).unwrap();
    let xattr = c.mnt(1).join("d/renamed");
    common::xattrs::set(&xattr, "user.color", b"blue", 0).unwrap();

    let (st, code) = c.kdfs_status(0);
    assert!(st.contains("copies: 2:"), "{st}");
    assert!(st.contains("node 2: mirrored on node 3 (in sync)"), "{st}");
    assert!(st.contains("keeps a full copy of node(s) 2"), "{st}");
    assert_eq!(code, Some(0), "{st}");
    let through_1 = c.mnt(0).join("d");
    let want = what_a_reader_sees(&through_1);
    assert_eq!(want.len(), 5, "{want:#?}");

    // Held open through node 1 across the failure.
    let mut held = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(through_1.join("renamed"))
        .unwrap();

    c.kill_krgd(1);
    let t = Instant::now();
    let seen = what_a_reader_sees(&through_1);
    let first_read = t.elapsed();
    assert_eq!(seen, want, "node 2's files read from its mirror");
    assert_eq!(
        fs::read(through_1.join("fsynced")).unwrap(),
        pattern(100_000, 2)
    );
    assert_eq!(fs::read(through_1.join("renamed")).unwrap(), b"small");
    assert_eq!(
        common::xattrs::get(&through_1.join("renamed"), "user.color", 64),
        Ok(b"blue".to_vec())
    );
    assert!(
        first_read < Duration::from_secs(3),
        "the first read took {first_read:?}"
    );
    // Writes go on there too, once the cluster marked node 2 failed and
    // node 3 took its store over (a write meanwhile waits for that).
    fs::write(through_1.join("fsynced"), b"changed while node 2 was down").unwrap();
    let first_write = t.elapsed();
    fs::write(through_1.join("new"), b"made while node 2 was down").unwrap();
    fs::remove_file(through_1.join("link")).unwrap();
    // Node 2's own mount (its krgd gone) reads through the mirror too,
    // not its stale store in place.
    let through_2 = c.mnt(1).join("d");
    assert_eq!(
        fs::read(through_2.join("fsynced")).unwrap(),
        b"changed while node 2 was down"
    );
    assert_eq!(
        fs::read(through_2.join("new")).unwrap(),
        b"made while node 2 was down"
    );
    // The file held open goes on, opened again on the mirror.
    use std::io::{Read, Seek};
    held.write_all(b"SMALL!").unwrap();
    held.sync_all().unwrap();
    held.rewind().unwrap();
    let mut back = String::new();
    held.read_to_string(&mut back).unwrap();
    assert_eq!(back, "SMALL!");
    drop(held);
    assert!(
        first_write < Duration::from_secs(5),
        "the first write took {first_write:?}"
    );
    eprintln!("node 2 killed: first read after {first_read:?}, first write after {first_write:?}");
    let (st, code) = c.kdfs_status(0);
    assert!(
        st.contains("node 2: served by node 3, its mirror, while it is down"),
        "{st}"
    );
    assert!(
        st.contains("node 1: mirrored on node 2, which is down"),
        "{st}"
    );
    assert_eq!(code, Some(0), "its files are reachable: {st}");
    let node3 = fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap();
    assert!(
        node3.contains("node failed; this node serves its store"),
        "{node3}"
    );

    // Back, node 2 takes its store back from node 3 (only what changed is
    // copied) before serving it, then mirrors it on node 3 again.
    c.start_krgd(1);
    c.wait_took_store_back(1);
    // (a mount tries a node it found down again after half a second)
    wait_until("node 2 back for mount 1", Duration::from_secs(10), || {
        fs::write(through_1.join("after"), b"after").is_ok()
    });
    assert_eq!(
        fs::read(c.mnt(1).join("d/fsynced")).unwrap(),
        b"changed while node 2 was down"
    );
    assert_eq!(
        fs::read(c.mnt(1).join("d/new")).unwrap(),
        b"made while node 2 was down"
    );
    assert!(!c.mnt(1).join("d/link").exists());
    assert_eq!(fs::read(c.mnt(1).join("d/renamed")).unwrap(), b"SMALL!");
    assert_eq!(fs::read(c.mnt(2).join("d/after")).unwrap(), b"after");

    // The mirror down: once the cluster marks it failed, node 2's changes
    // go on without it.
    c.kill_krgd(2);
    let t = Instant::now();
    fs::write(c.mnt(1).join("d/without-mirror"), b"w").unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "a change waited {:?}",
        t.elapsed()
    );
    assert_eq!(fs::read(through_1.join("without-mirror")).unwrap(), b"w");
    let log = fs::read_to_string(c.nodes[1].data.join("krgd.log")).unwrap();
    assert!(
        log.contains("the mirror failed; going on without it"),
        "{log}"
    );
}

/// Node 2 cut off the network (its namespace's link down: no reset, no
/// answer). The majority side goes on with node 2's files through node 3;
/// node 2, in the minority, changes nothing of them (its writes fail, they
/// never diverge); healed, node 2 takes its store back with the majority's
/// changes.
#[test]
fn a_node_cut_off_changes_nothing_and_the_majority_goes_on() {
    let lab = krg_tests::netlab::NetLab::new(3).unwrap();
    let places = (1..=3)
        .map(|id| (Some(lab.ns(id)), lab.addr(id).unwrap().to_string()))
        .collect();
    let c = Cluster::start_in(places).format_and_mount(&["--replicas", "2"]);
    let on2 = c.mnt(1).join("on2");
    fs::write(&on2, b"before").unwrap();
    c.wait_mirrored(1);
    let through_1 = c.mnt(0).join("on2");
    assert_eq!(fs::read(&through_1).unwrap(), b"before");

    lab.isolate(2).unwrap();
    let t = Instant::now();
    fs::write(&through_1, b"majority").unwrap();
    let resumed = t.elapsed();
    eprintln!("node 2 cut off: a write of its file through node 1 done after {resumed:?}");
    assert!(resumed < Duration::from_secs(6), "took {resumed:?}");
    // The minority side: node 2's own writes fail.
    let minority = fs::write(&on2, b"minority");
    assert!(minority.is_err(), "a write in the minority succeeded");
    assert_eq!(fs::read(&through_1).unwrap(), b"majority");

    lab.heal(2).unwrap();
    wait_until("node 2 has its store back", Duration::from_secs(60), || {
        let log = fs::read_to_string(c.nodes[1].data.join("krgd.log")).unwrap_or_default();
        log.contains("took the store back")
    });
    wait_until(
        "node 2 serves the majority's write",
        Duration::from_secs(20),
        || fs::read(&on2).is_ok_and(|b| b == b"majority"),
    );
    assert_eq!(fs::read(&through_1).unwrap(), b"majority");
}

/// Node 2's krgd frozen (SIGSTOP) long enough for the cluster to give its
/// store to node 3, then thawed: it must not serve its stale copy — it
/// finds the decision in the log, stops, and takes the store back.
#[test]
fn a_frozen_node_thawed_serves_nothing_stale() {
    let c = Cluster::with_kdfs_formatted(3, &["--replicas", "2"]);
    let on2 = c.mnt(1).join("on2");
    fs::write(&on2, b"old").unwrap();
    c.wait_mirrored(1);
    let pid = c.krgd_pid(1).unwrap() as i32;
    let signal = |sig| {
        // SAFETY: kill(2) of the krgd this test started, by its PID.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    };
    signal(libc::SIGSTOP);
    let through_1 = c.mnt(0).join("on2");
    let t = Instant::now();
    fs::write(&through_1, b"new").unwrap();
    let resumed = t.elapsed();
    eprintln!("node 2 stopped: a write of its file through node 1 done after {resumed:?}");
    // (a first connection to the stopped node waits for nothing either)
    assert!(resumed < Duration::from_secs(4), "took {resumed:?}");
    signal(libc::SIGCONT);
    // From now on, whoever answers, nobody answers "old".
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(8) {
        match fs::read(&through_1) {
            Ok(b) => assert_eq!(b, b"new", "a stale read after the thaw"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until("node 2 has its store back", Duration::from_secs(30), || {
        let log = fs::read_to_string(c.nodes[1].data.join("krgd.log")).unwrap_or_default();
        log.contains("took the store back")
    });
    assert_eq!(fs::read(&on2).unwrap(), b"new");
}

/// Node index `i`, whose krgd is down: its mount gone, its store erased
/// (the disk lost), its krgd started, the store formatted again; returns
/// once the node serves it again, restored from its mirror.
fn lose_disk_and_format_again(c: &mut Cluster, i: usize) {
    c.umount(i);
    let store = c.nodes[i].store.clone();
    fs::remove_dir_all(&store).unwrap();
    fs::create_dir(&store).unwrap();
    fs::set_permissions(&store, fs::Permissions::from_mode(0o700)).unwrap();
    c.start_krgd(i);
    let o = c.mkfs_with(i, 1, &["--replicas", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until(
        "the node serves its store again",
        Duration::from_secs(30),
        || {
            let log = fs::read_to_string(c.nodes[i].data.join("krgd.log")).unwrap_or_default();
            log.contains("restored from its mirror") && log.contains("this node serves its store")
        },
    );
}

/// Node 2's disk lost: its krgd killed, its store erased, formatted again
/// (`mkfs.kdfs --replicas 2`). The new, empty store gets node 2's files
/// back from its mirror — those made before, and those changed while it
/// was down — before it is served; then node 2 serves them again.
#[test]
fn a_node_formatted_again_after_its_disk_was_lost_gets_its_files_back() {
    let mut c = Cluster::with_kdfs_formatted(3, &["--replicas", "2"]);
    let d = c.mnt(1).join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("big"), pattern(5 << 20, 3)).unwrap();
    fs::write(d.join("small"), b"small").unwrap();
    std::os::unix::fs::symlink("small", d.join("link")).unwrap();
    c.wait_mirrored(1);
    fs::write(d.join("after-copy"), b"after the copy").unwrap();

    c.kill_krgd(1);
    let through_1 = c.mnt(0).join("d");
    fs::write(through_1.join("small"), b"changed while node 2 was down").unwrap();
    let want = what_a_reader_sees(&through_1);
    lose_disk_and_format_again(&mut c, 1);
    assert_eq!(what_a_reader_sees(&through_1), want);
    assert!(c.mount(1, "").status.success());
    assert_eq!(what_a_reader_sees(&c.mnt(1).join("d")), want);
    assert_eq!(
        fs::read(c.mnt(1).join("d/small")).unwrap(),
        b"changed while node 2 was down"
    );
    // Served by node 2 (the mirror hands it back): new files go on there.
    fs::write(c.mnt(1).join("d/new"), b"new").unwrap();
    assert_eq!(fs::read(through_1.join("new")).unwrap(), b"new");
    let (st, code) = c.kdfs_status(0);
    assert!(st.contains("node 2: mirrored on node 3"), "{st}");
    assert_eq!(code, Some(0), "{st}");
}

/// Two faults at once: node 2's mirror (node 3) down and marked failed,
/// then node 2's disk lost and formatted again. Node 2 must not serve its
/// new, empty store meanwhile (its first copy to node 3 would empty the
/// copy that keeps its files): it waits for node 3, then gets its files
/// back from the copy on node 3's disk.
#[test]
fn a_node_formatted_again_while_its_mirror_is_down_waits_for_the_mirror() {
    let mut c = Cluster::with_kdfs_formatted(3, &["--replicas", "2"]);
    let d = c.mnt(1).join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("kept"), pattern(1 << 20, 7)).unwrap();
    c.wait_mirrored(1);
    c.wait_mirrored(2);
    let want = what_a_reader_sees(&d);

    c.kill_krgd(2);
    wait_until("node 3 marked failed", Duration::from_secs(20), || {
        let log = fs::read_to_string(c.nodes[0].data.join("krgd.log")).unwrap_or_default();
        log.contains("node failed; this node serves its store")
    });
    c.kill_krgd(1);
    c.umount(1);
    let store = c.nodes[1].store.clone();
    fs::remove_dir_all(&store).unwrap();
    fs::create_dir(&store).unwrap();
    fs::set_permissions(&store, fs::Permissions::from_mode(0o700)).unwrap();
    c.start_krgd(1);
    let o = c.mkfs_with(1, 1, &["--replicas", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log2_path = c.nodes[1].data.join("krgd.log");
    let log2 = || fs::read_to_string(&log2_path).unwrap_or_default();
    wait_until(
        "node 2 waits for its mirror",
        Duration::from_secs(20),
        || log2().contains("waits for its mirror's copy"),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !log2().contains("this node serves its store"),
        "node 2 served an empty store: {}",
        log2()
    );

    c.start_krgd(2);
    wait_until("node 2 restored", Duration::from_secs(60), || {
        let log = log2();
        log.contains("restored from its mirror") && log.contains("this node serves its store")
    });
    assert!(c.mount(1, "").status.success());
    assert_eq!(what_a_reader_sees(&c.mnt(1).join("d")), want);
    assert_eq!(what_a_reader_sees(&c.mnt(0).join("d")), want);
}

/// A single-copy kDFS converted with `kdfsctl replicas 2`, mounted on
/// every node: each node's mount stops writing its store in place; node 1's
/// holds a file of its own open with passthrough, so node 1 converts only
/// once it is closed (what was written through it reaches the mirror with
/// the full copy), the others at once — a file node 1's mount holds open
/// on node 2 goes on. Then three copies (fewer is refused); a node's files
/// outlive its krgd, node 1's (written in place before, through krgd
/// after) included.
#[test]
fn a_single_copy_kdfs_converted_to_two_copies_outlives_a_node() {
    use std::io::{Read, Seek};
    let mut c = Cluster::with_kdfs(3);
    fs::create_dir(c.mnt(1).join("d")).unwrap();
    fs::write(c.mnt(1).join("d/f"), pattern(3 << 20, 5)).unwrap();
    fs::write(c.mnt(0).join("on1"), b"node 1").unwrap();
    let (_, err, code) = c.kdfsctl(0, &["replicas", "4"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("4 copies: a store keeps 1 to 3"), "{err}");
    assert_eq!(
        c.kdfsctl(0, &["replicas", "2", "a", "b"]).2,
        Some(2),
        "a bad command line"
    );
    let (_, err, code) = c.kdfsctl(0, &["replicas", "many", "/"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("many: not a count of copies"), "{err}");
    let (st, _) = c.kdfs_status(0);
    assert!(st.contains("copies: 1 (no replication)"), "{st}");

    // Node 1's own file held open (passthrough: written in place), and
    // node 2's file held open through node 1.
    let mut own = fs::OpenOptions::new()
        .write(true)
        .open(c.mnt(0).join("on1"))
        .unwrap();
    let mut held = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(c.mnt(0).join("d/f"))
        .unwrap();
    let (out, err, code) = c.kdfsctl(0, &["replicas", "2"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("node 1: converts once the files its kdfs mount opened before are closed"),
        "{out}"
    );
    assert!(out.contains("node 2: keeps 2 copies"), "{out}");
    assert!(out.contains("node 3: keeps 2 copies"), "{out}");
    let (st, _) = c.kdfs_status(0);
    assert!(
        st.contains("node 1: converting to 2 copies once its mount stops writing in place (1 file handle(s)"),
        "{st}"
    );
    held.write_all(b"still open").unwrap();
    held.rewind().unwrap();
    let mut head = [0u8; 10];
    held.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"still open");
    drop(held);
    let mut want = pattern(3 << 20, 5);
    want[..10].copy_from_slice(b"still open");
    own.write_all(b"node 1, in place").unwrap();
    drop(own);
    wait_until(
        "every store's mirror copied",
        Duration::from_secs(60),
        || (0..3).all(|i| c.mirrored(i)),
    );
    fs::write(c.mnt(0).join("after"), b"through krgd").unwrap();
    let (st, code) = c.kdfs_status(0);
    assert!(st.contains("copies: 2:"), "{st}");
    assert!(st.contains("node 2: mirrored on node 3 (in sync)"), "{st}");
    assert_eq!(code, Some(0), "{st}");

    // And on to three copies, mounted: node 2's store gets its second
    // mirror, node 1.
    let (out, err, code) = c.kdfsctl(0, &["replicas", "3"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_until(
        "node 2's two mirrors in sync",
        Duration::from_secs(30),
        || {
            c.kdfs_status(0)
                .0
                .contains("node 2: mirrored on node 3 (in sync) and node 1 (in sync)")
        },
    );
    let (out, _, code) = c.kdfsctl(0, &["replicas", "2"]);
    assert_eq!(code, Some(1), "fewer copies: {out}");
    assert!(
        out.contains("node 2: not changed: it keeps more copies already"),
        "{out}"
    );

    c.kill_krgd(1);
    assert_eq!(fs::read(c.mnt(0).join("d/f")).unwrap(), want);
    fs::write(c.mnt(0).join("d/g"), b"while node 2 is down").unwrap();
    assert_eq!(
        fs::read(c.mnt(2).join("d/g")).unwrap(),
        b"while node 2 is down"
    );
    // Node 1's files, from its mirrors: what its mount wrote in place
    // before the conversion, and through krgd after.
    c.start_krgd(1);
    wait_until("node 2 has its store back", Duration::from_secs(30), || {
        c.plain_log(1).contains("took the store back")
    });
    c.kill_krgd(0);
    let on3 = c.mnt(2);
    wait_until(
        "node 1's files served by a mirror",
        Duration::from_secs(20),
        || fs::read(on3.join("after")).is_ok_and(|b| b == b"through krgd"),
    );
    assert_eq!(fs::read(on3.join("on1")).unwrap(), b"node 1, in place");
}

/// As above, but the mirror's krgd restarted after node 2 was lost (a
/// power cut): the copies it kept are void in memory, and node 2's files
/// come back from the copy on its disk, complete when it stopped (with
/// what node 3 changed while it served them: that was the copy itself).
/// The same when node 2 comes back with its disk: it takes its store back
/// from node 3's disk.
#[test]
fn a_node_formatted_again_gets_its_files_back_from_a_restarted_mirror_s_disk() {
    let mut c = Cluster::with_kdfs_formatted(3, &["--replicas", "2"]);
    let d = c.mnt(1).join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), pattern(2 << 20, 7)).unwrap();
    c.wait_mirrored(1);
    c.kill_krgd(1);
    let through_1 = c.mnt(0).join("d");
    fs::write(through_1.join("g"), b"while node 2 was down").unwrap();
    let want = what_a_reader_sees(&through_1);
    c.kill_krgd(2);
    c.start_krgd(2);
    lose_disk_and_format_again(&mut c, 1);
    let log = fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap();
    assert!(log.contains("copying back the copy on disk"), "{log}");
    assert_eq!(what_a_reader_sees(&through_1), want);
    assert_eq!(fs::read(through_1.join("f")).unwrap(), pattern(2 << 20, 7));

    // Node 2 lost again (not its disk), node 3 serves its store, and
    // node 3's krgd restarts: node 2, back, takes its store back from the
    // copy node 3 served, on node 3's disk.
    wait_until(
        "node 2's mirror copied again",
        Duration::from_secs(30),
        || c.mirrored(1),
    );
    c.kill_krgd(1);
    fs::write(through_1.join("h"), b"served by node 3").unwrap();
    c.kill_krgd(2);
    c.start_krgd(2);
    c.start_krgd(1);
    wait_until("node 2 has its store back", Duration::from_secs(30), || {
        let log = fs::read_to_string(c.nodes[1].data.join("krgd.log")).unwrap_or_default();
        log.contains("took the store back")
    });
    let log = fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap();
    assert!(log.contains("before it restarted, from its disk"), "{log}");
    wait_until("node 2 serves it", Duration::from_secs(10), || {
        fs::read(through_1.join("h")).is_ok_and(|b| b == b"served by node 3")
    });
}
