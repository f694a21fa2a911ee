//! Many writers at once: every write is applied whole or refused whole, and
//! concurrent mkdir/rmdir/symlink of the same names never corrupt the tree.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::thread;

use common::{errno, Daemon};

#[test]
fn concurrent_writers_see_whole_values_only() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::simple(tmp.path());
    fs::create_dir(d.path("probes/mem_probe")).unwrap();
    let attr = Arc::new(d.path("probes/mem_probe/probe_period"));
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let attr = attr.clone();
            thread::spawn(move || {
                for i in 0..40u64 {
                    if i % 3 == 0 {
                        // Nonsense must be refused and never show up.
                        let e = fs::write(&*attr, format!("{w}x{i}\n")).unwrap_err();
                        assert_eq!(errno(e), libc::EINVAL);
                    } else {
                        fs::write(&*attr, format!("{}\n", 1000 + w * 100 + i)).unwrap();
                    }
                    let now: u64 = fs::read_to_string(&*attr)
                        .unwrap()
                        .trim()
                        .parse()
                        .expect("a whole number");
                    assert!((1000..1800).contains(&now), "{now}");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
}

#[test]
fn concurrent_mkdir_rmdir_and_links_of_the_same_names() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::simple(tmp.path());
    fs::create_dir(d.path("probes/mem_probe")).unwrap();
    fs::create_dir(d.path("schedulers/s")).unwrap();
    fs::create_dir(d.path("schedulers/s/echo_policy")).unwrap();
    let root = Arc::new(d.mnt.clone());
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let root = root.clone();
            thread::spawn(move || {
                let (mut made, mut linked) = (0, 0);
                for i in 0..30 {
                    // Everyone races for the same filter and the same port.
                    let f = root.join(format!("filters/moving_average.{}", i % 3));
                    match fs::create_dir(&f) {
                        Ok(()) => made += 1,
                        Err(e) => assert_eq!(errno(e), libc::EEXIST, "worker {w}"),
                    }
                    let port = root.join("schedulers/s/echo_policy/port_race");
                    match symlink(root.join("probes/mem_probe/ram_free"), &port) {
                        Ok(()) => linked += 1,
                        Err(e) => assert_eq!(errno(e), libc::EEXIST),
                    }
                    let _ = fs::remove_file(&port);
                    match fs::remove_dir(&f) {
                        Ok(()) => {}
                        Err(e) => assert_eq!(errno(e), libc::ENOENT),
                    }
                }
                (made, linked)
            })
        })
        .collect();
    let mut total_made = 0;
    for w in workers {
        total_made += w.join().unwrap().0;
    }
    assert!(total_made >= 3);
    // Whatever the interleaving, the tree is consistent and empty again.
    assert_eq!(fs::read_dir(d.path("filters")).unwrap().count(), 0);
    assert!(fs::symlink_metadata(d.path("schedulers/s/echo_policy/port_race")).is_err());
    fs::remove_dir(d.path("schedulers/s/echo_policy")).unwrap();
    fs::remove_dir(d.path("probes/mem_probe")).unwrap();
}
