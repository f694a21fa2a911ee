//! A migration cut by a fault: the process runs on the origin, or ends
//! when post-copy lost the memory it needed.

use super::*;

/// The target's krgd is killed while it receives 600 MiB of memory: the
/// origin's copy runs on, and what the target had received is removed
/// when its krgd starts again.
#[test]
fn target_killed_mid_transfer_leaves_it_on_the_origin() -> Result<()> {
    let _g = serial();
    let mut c = formed(2)?;
    let (job, out, n) = movable(&c, BIG, "big.txt");
    let pid = job.0;
    let via = socket(&c, 1);
    let mut m = Command::new(bin("migrate"))
        .env("KRG_SOCKET", via)
        .args([&pid.to_string(), "2"])
        .stderr(Stdio::piped())
        .spawn()?;
    // the image is on its way: its memory is sent while the process runs
    let incoming = c.dir.path().join("data2/migrate/in");
    wait_for(Duration::from_secs(60), "the image to arrive", || {
        received(&incoming).filter(|&n| n >= 64 << 20).map(|_| ())
    })?;
    c.node(2)?.kill9();
    let t = Instant::now();
    let status = m.wait()?;
    let mut e = String::new();
    std::io::Read::read_to_string(m.stderr.as_mut().unwrap(), &mut e)?;
    assert!(!status.success(), "{e}");
    assert!(e.contains("keeps running on node 1"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(40));
    grows(&out, n);
    assert_ne!(state(pid), Some('T'));
    // what the killed krgd had received goes when node 2 starts again
    // (until Dec 7 evening it stayed in its data directory for good)
    assert!(received(&incoming).unwrap_or(0) >= 64 << 20);
    c.start(2)?;
    let left: Vec<_> = std::fs::read_dir(&incoming)?.flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

/// The target cut off by a network partition while the image is on its
/// way (nodes in network namespaces on a bridge, the target's link
/// down): no connection breaks, nothing answers. The majority marks the
/// target failed within the failure detection time, and the migration
/// gives up then, the process running on where it was.
#[test]
fn target_partitioned_mid_transfer_leaves_it_on_the_origin() -> Result<()> {
    let _g = serial();
    let c = TestCluster::namespaces(3)?.formed(3, SETTLE)?;
    // started in node 1's namespaces (a process of that node), then
    // flagged there
    let out = c.dir.path().join("big.txt");
    let krgd1 = c.nodes[&1].pid().unwrap().to_string();
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &krgd1, "-m", "-n", "--", "python3", "-c", BIG])
        .arg(&out);
    let mut child = detached_stdio(&mut cmd).spawn()?;
    let job = Job(child.id() as i32);
    std::thread::spawn(move || child.wait());
    capset(&c, 1, job.0);
    let n = grows(&out, 0);
    let pid = job.0;
    let mut m = Command::new(bin("migrate"))
        .env("KRG_SOCKET", socket(&c, 1))
        .args([&pid.to_string(), "3"])
        .stderr(Stdio::piped())
        .spawn()?;
    let incoming = c.dir.path().join("data3/migrate/in");
    wait_for(Duration::from_secs(60), "the image to arrive", || {
        if let Ok(Some(st)) = m.try_wait() {
            let mut e = String::new();
            let _ = std::io::Read::read_to_string(m.stderr.as_mut()?, &mut e);
            panic!("migrate ended before the cut ({st}): {e}");
        }
        received(&incoming).filter(|&n| n >= 64 << 20).map(|_| ())
    })?;
    c.lab.as_ref().expect("lab").isolate(3)?;
    let t = Instant::now();
    let status = m.wait()?;
    let took = t.elapsed();
    let mut e = String::new();
    std::io::Read::read_to_string(m.stderr.as_mut().unwrap(), &mut e)?;
    eprintln!("migrate ended {took:?} after the cut: {e}");
    assert!(!status.success(), "{e}");
    assert!(e.contains("keeps running on node 1"), "{e}");
    assert!(e.contains("node 3 failed"), "{e}");
    // the failure timeout (1 s) and the majority's agreement, with room
    // for a loaded machine; the step timeout (30 s) is what it was before
    assert!(took < Duration::from_secs(8), "{took:?}: {e}");
    grows(&out, n);
    assert_ne!(state(pid), Some('T'));
    Ok(())
}

/// Post-copy's price: the origin's krgd killed while the target still
/// pulls the memory. The process on the target cannot be completed: it is
/// killed (not left running on pages of zeros, nor hanging on a fault
/// forever), and the target's krgd goes on.
#[test]
fn postcopy_without_its_origin_ends_the_process() -> Result<()> {
    let _g = serial();
    let mut c = formed(2)?;
    let (job, _out, _) = movable(&c, BIG, "big.txt");
    let pid = job.0;
    let o = migrate(&c, 1, &["--postcopy", &pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    c.node(1)?.kill9();
    wait_for(Duration::from_secs(60), "the process to be ended", || {
        matches!(state(pid), None | Some('Z')).then_some(())
    })?;
    c.krgadm_ok(2, &["nodes", "status"])?;
    Ok(())
}

/// Post-copy, the target's krgd killed after the handover, as it is about
/// to restore: the origin still has the whole image and takes the process
/// back, every page as it was.
#[test]
fn postcopy_target_killed_after_the_handover_falls_back() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(2)?;
    let crash = c.arm_crash_points();
    let c = c.formed(2, SETTLE)?;
    let (job, out, before) = movable(&c, STAMPER, "stamps.txt");
    let pid = job.0;
    std::fs::write(&crash, "krgd-postcopy-commit")?;
    let o = migrate(&c, 1, &["--postcopy", &pid.to_string(), "2"]);
    assert!(!o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("run on node 1 again"), "{}", err(&o));
    assert!(!crash.exists(), "the crash point did not fire");
    grows(&out, before + 3);
    stamps_intact(&out, pid);
    assert_ne!(state(pid), Some('T'));
    Ok(())
}
