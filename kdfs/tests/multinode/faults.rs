//! A node, a mount or a FUSE client killed: bounded failures, handles
//! closed after their lease, fsynced data kept.

use super::*;

#[test]
fn node_failure_is_bounded_and_recovers_and_fsynced_data_survives() {
    let mut c = Cluster::with_kdfs(3);
    fs::write(c.mnt(1).join("on2"), b"two").unwrap();
    fs::create_dir(c.mnt(2).join("dir3")).unwrap();
    let mut f = File::create(c.mnt(2).join("on3")).unwrap();
    f.write_all(b"three, fsynced").unwrap();
    f.sync_all().unwrap();
    drop(f);

    c.kill_krgd(2);
    let t = Instant::now();
    let e = fs::read(c.mnt(0).join("on3")).unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::ENOTCONN)),
        "{e}"
    );
    let e = fs::read_dir(c.mnt(0).join("dir3")).map(|_| ()).unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::ENOTCONN)),
        "{e}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "failing took {:?}",
        t.elapsed()
    );
    // The rest of the namespace works.
    assert_eq!(fs::read(c.mnt(0).join("on2")).unwrap(), b"two");
    fs::write(c.mnt(0).join("while-3-down"), b"ok").unwrap();
    assert_eq!(fs::read(c.mnt(1).join("while-3-down")).unwrap(), b"ok");

    // Node 3's krgd comes back (serving its directory again by itself).
    c.start_krgd(2);
    let p = c.mnt(0).join("on3");
    wait_until("node 3's files back", Duration::from_secs(30), || {
        fs::read(&p).is_ok()
    });
    assert_eq!(fs::read(&p).unwrap(), b"three, fsynced");
    assert!(c.mnt(0).join("dir3").is_dir());
}

/// A node that fails while its mount holds another node's file open
/// leaves a handle there that nothing will release. Once the node has
/// been failed for a lock lease (10 s) the owner closes it, as the
/// release would have: here the file was unlinked meanwhile, and its data
/// goes with the handle. Not before: a node back sooner finds its files
/// open.
#[test]
fn the_handles_of_a_node_failed_for_a_lease_are_closed() {
    let mut c = Cluster::with_kdfs(3);
    let mut f = held_unlinked(&c);

    c.kill_krgd(1);
    let failed = |c: &Cluster| {
        let o = run(Command::new(common::bin_dir().join("krgadm"))
            .arg("--socket")
            .arg(&c.nodes[0].sock)
            .args(["nodes", "status"]));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some("2") && l.contains("failed"))
    };
    wait_until("node 2 marked failed", Duration::from_secs(20), || {
        failed(&c)
    });
    closed_after_lease(
        &c,
        Instant::now(),
        Duration::from_secs(3),
        Duration::from_secs(8),
    );
    // what node 2's mount still holds is a closed handle now
    let mut b = [0u8; 16];
    assert!(f.read(&mut b).is_err(), "the closed handle still reads");
}

/// A file of node 1 (1 MiB of 7s) held open through node 2's mount, then
/// unlinked through node 1's: node 1 keeps its data for the handle.
fn held_unlinked(c: &Cluster) -> File {
    fs::write(c.mnt(0).join("held"), vec![7u8; 1 << 20]).unwrap();
    let f = File::open(c.mnt(1).join("held")).unwrap();
    fs::remove_file(c.mnt(0).join("held")).unwrap();
    assert_eq!(data_on(c, 0), 1 << 20, "unlinked while open keeps its data");
    f
}

/// Node 1 still keeps an unlinked file's data `wait` after `t` (the
/// lease of the mount that held it open runs), then drops it within 25 s
/// but not before `min` after `t`, and its krgd says why.
fn closed_after_lease(c: &Cluster, t: Instant, wait: Duration, min: Duration) {
    std::thread::sleep(wait);
    assert_eq!(data_on(c, 0), 1 << 20, "closed before the lease ran out");
    wait_until(
        "the gone mount's handle closed",
        Duration::from_secs(25),
        || data_on(c, 0) == 0,
    );
    assert!(t.elapsed() >= min, "{:?}", t.elapsed());
    // the krgd counts and says so just after the release removed the data
    let log = || fs::read_to_string(c.nodes[0].data.join("krgd.log")).unwrap();
    wait_until("the krgd says why", Duration::from_secs(5), || {
        log().contains("closed the handles of a mount gone")
    });
    let text = common::observe::scrape(c.nodes[0].http_port);
    let reaped = common::observe::metric(&text, "krg_kdfs_handles_reaped_total");
    assert_eq!(reaped, Some(1.0), "{text}");
}

/// A mount killed (-9) with another node's file open, its node up: its
/// handle there is closed once its lease (renewed every 3 s) ran out, 10
/// s, as its release would have; the file, unlinked meanwhile, gives its
/// data back. While the mount lives, its lease keeps the handle open past
/// those 10 s.
#[test]
fn the_handles_of_a_mount_killed_are_closed_after_its_lease() {
    let c = Cluster::with_kdfs(2);
    c.umount(1);
    let mut client = foreground_client(&c, 1, "");
    let mut f = held_unlinked(&c);
    // and node 1's own mount holds one of its node's files the same way
    fs::write(c.mnt(0).join("own"), vec![8u8; 1 << 19]).unwrap();
    let g = File::open(c.mnt(0).join("own")).unwrap();
    fs::remove_file(c.mnt(1).join("own")).unwrap();
    std::thread::sleep(Duration::from_secs(12));
    let mut b = vec![0u8; 4096];
    f.read_exact(&mut b)
        .expect("a live mount's handle, past a lease");
    assert_eq!(b, vec![7u8; 4096]);
    let both = (1 << 20) + (1 << 19);
    assert_eq!(data_on(&c, 0), both, "a live mount's handle closed");
    drop(g);
    wait_until(
        "node 1's own handle released",
        Duration::from_secs(10),
        || data_on(&c, 0) == 1 << 20,
    );
    client.kill().unwrap();
    client.wait().unwrap();
    let t = Instant::now();
    drop(f);
    let _ = run(Command::new("umount").arg("-l").arg(c.mnt(1)));
    closed_after_lease(&c, t, Duration::from_secs(2), Duration::from_secs(5));
}

#[test]
fn fsynced_data_survives_kill_9_of_the_fuse_client() {
    let c = Cluster::with_kdfs(2);
    c.umount(1);
    let mnt = c.mnt(1).to_path_buf();
    // A client unmounted ends cleanly (its unmount work once panicked),
    // and does not unmount its path again afterwards: fuser did, and
    // took down whatever was mounted there by then (a remount).
    let log = c.nodes[1].data.join("foreground.log");
    let mut child = foreground_client(&c, 1, &format!(",log={}", log.display()));
    let _ = run(Command::new("umount").arg(&mnt));
    let status = child.wait().unwrap();
    let said = fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "the client ended with {status}: {said}");
    assert!(!said.contains("umount"), "{said}");
    // A foreground client whose pid we know, on node 2.
    let mut child = foreground_client(&c, 1, "");
    let mut f = File::create(mnt.join("durable")).unwrap();
    f.write_all(b"kept").unwrap();
    f.sync_all().unwrap();
    // kill -9 with the file still open.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(f);
    let _ = run(Command::new("umount").arg("-l").arg(&mnt));
    assert_eq!(fs::read(c.mnt(0).join("durable")).unwrap(), b"kept");
    let out = c.mount(1, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // CI once read ENOENT here: say what the new client logged if it does.
    match fs::read(c.mnt(1).join("durable")) {
        Ok(data) => assert_eq!(data, b"kept"),
        Err(e) => panic!(
            "reading durable through the new mount: {e}; its log:\n{}",
            fs::read_to_string(c.nodes[1].data.join("kdfs.log")).unwrap_or_default()
        ),
    }
}
