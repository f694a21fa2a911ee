//! A leaving node that holds stripe units hands them over.

use super::*;

/// Node 3 holds units of striped files of nodes 1 and 2: its units go to
/// node 4 where it holds none of the file, else to a holder already there
/// (which then holds two positions), and the owners' layouts name them.
/// A descriptor opened before the leave reads and writes on (it takes the
/// new layout when node 3 answers ESTALE). Node 3 comes back and takes
/// node 4's units when node 4 leaves. Then node 2 leaves, owning a
/// striped file: the file moves, and the other holders' units with it.
#[test]
fn a_leaving_holder_hands_its_stripe_units_over() {
    const UNIT: usize = 64 << 10;
    let mut c = Cluster::with_kdfs(4);
    let m: Vec<PathBuf> = (0..4).map(|i| c.mnt(i).to_path_buf()).collect();
    fs::create_dir(m[0].join("s3")).unwrap();
    fs::create_dir(m[0].join("s4")).unwrap();
    kdfsctl_stripe(&[Path::new("64K:3"), &m[0].join("s3")]);
    kdfsctl_stripe(&[Path::new("64K:4"), &m[0].join("s4")]);
    // over nodes 1,2,3 (node 4 free), and over all four
    let three = pattern(12 * UNIT + 777, 0);
    let four = pattern(9 * UNIT, 0x5a);
    fs::write(m[0].join("s3/f"), &three).unwrap();
    fs::write(m[1].join("s4/g"), &four).unwrap();
    assert!(kdfsctl_stripe(&[&m[0].join("s3/f")]).contains("on nodes 1,2,3"));
    assert!(kdfsctl_stripe(&[&m[0].join("s4/g")]).contains("on nodes 2,3,4,1"));
    // held open through node 1 across the leave
    let mut held = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m[0].join("s3/f"))
        .unwrap();
    let mut first = vec![0u8; 100];
    std::os::unix::fs::FileExt::read_exact_at(&held, &mut first, 0).unwrap();
    // and through node 3's own mount, which reads its units in place
    let mut held3 = fs::File::open(m[2].join("s3/f")).unwrap();
    Command::new("sync").status().unwrap();

    nodes_del(&c, 0, "3");
    let log3 = plain(&fs::read_to_string(c.nodes[2].data.join("krgd.log")).unwrap());
    assert!(log3.contains("kdfs: handed over"), "{log3}");
    assert_eq!(
        fs::read_dir(c.nodes[2].store.join("stripes"))
            .unwrap()
            .count(),
        0,
        "node 3 kept stripe units"
    );
    // Unit 2 was node 3's: written through the descriptor opened before.
    held.seek(SeekFrom::Start(2 * UNIT as u64 + 10)).unwrap();
    held.write_all(b"after the leave").unwrap();
    held.sync_all().unwrap();
    let mut three = three;
    three[2 * UNIT + 10..2 * UNIT + 25].copy_from_slice(b"after the leave");
    let mut back = Vec::new();
    held.seek(SeekFrom::Start(0)).unwrap();
    std::io::Read::read_to_end(&mut held, &mut back).unwrap();
    assert!(back == three, "the held descriptor read other bytes");
    drop(held);
    // Node 3's mount finds no units in place any more: it asks its krgd,
    // which answers ESTALE, and reads with the new layout (not zeros).
    let mut back3 = Vec::new();
    std::io::Read::read_to_end(&mut held3, &mut back3).unwrap();
    assert!(back3 == three, "node 3's held descriptor read other bytes");
    drop(held3);

    assert!(kdfsctl_stripe(&[&m[0].join("s3/f")]).contains("on nodes 1,2,4"));
    let g = kdfsctl_stripe(&[&m[0].join("s4/g")]);
    assert!(!g.contains(",3") && g.contains("on nodes 2,"), "{g}");
    let reads_both = |nodes: &[usize], what: &str| {
        for &i in nodes {
            for (name, want) in [("s3/f", &three), ("s4/g", &four)] {
                let got = fs::read(m[i].join(name)).unwrap();
                let diff = got.iter().zip(want.iter()).position(|(a, b)| a != b);
                assert!(
                    got == *want,
                    "{what}: node {} read other bytes of {name}: len {} first difference at {diff:?}",
                    i + 1,
                    got.len()
                );
            }
        }
    };
    reads_both(&[0, 1, 3], "node 3 gone");

    // Node 3 back, then node 4 leaves: node 3 is the one node holding none
    // of s3/f, so it takes node 4's units (it answered ESTALE for that
    // file since its own leave, until the hand-over told it it holds
    // units again).
    wait_until("node 3 added back", Duration::from_secs(30), || {
        krgadm(&c, 0, &["nodes", "add", "-n", "3"]).status.success()
    });
    wait_until("node 3 online everywhere", Duration::from_secs(30), || {
        let out = krgadm(&c, 0, &["nodes", "status"]);
        String::from_utf8_lossy(&out.stdout)
            .matches("online")
            .count()
            == 4
    });
    nodes_del(&c, 0, "4");
    let log4 = plain(&fs::read_to_string(c.nodes[3].data.join("krgd.log")).unwrap());
    assert!(log4.contains("kdfs: handed over"), "{log4}");
    c.umount(3);
    c.kill_krgd(3);
    assert!(kdfsctl_stripe(&[&m[0].join("s3/f")]).contains("on nodes 1,2,3"));
    let g = kdfsctl_stripe(&[&m[0].join("s4/g")]);
    assert!(!g.contains(",4") && g.contains(",3"), "{g}");
    reads_both(&[0, 1, 2], "node 4 gone");

    // Node 2 owns s4/g: the file moves (a new inode on node 1 or 3, its
    // layout with that node in node 2's place), the other holder's units
    // get its id, and the target's are merged into its object. Node 2
    // holds units of s3/f too.
    let g_was = format!("{:016x}", fs::metadata(m[0].join("s4/g")).unwrap().ino());
    nodes_del(&c, 0, "2");
    let log2 = plain(&fs::read_to_string(c.nodes[1].data.join("krgd.log")).unwrap());
    assert!(log2.contains("kdfs: handed over"), "{log2}");
    // The other holders' copies lose the old id's name once it is gone.
    wait_until(
        "the old id's copies dropped",
        Duration::from_secs(10),
        || {
            [0, 2]
                .iter()
                .all(|&i| !c.nodes[i].store.join("stripes").join(&g_was).exists())
        },
    );
    c.umount(1);
    c.kill_krgd(1);
    let g = kdfsctl_stripe(&[&m[0].join("s4/g")]);
    let holders = g.rsplit(' ').next().unwrap().trim();
    assert!(
        holders.split(',').all(|n| n == "1" || n == "3"),
        "s4/g: {g}"
    );
    assert_ne!(owner(&m[0].join("s4/g")), 2);
    reads_both(&[0, 2], "node 2 gone");
    assert_eq!(
        fs::read_dir(c.nodes[1].store.join("stripes"))
            .unwrap()
            .count(),
        0,
        "node 2 kept stripe units"
    );
}

/// Two nodes: the only node left to take a leaving holder's units is the
/// file's owner. They go into its object (the layout names it twice), and
/// the file keeps its modification time.
#[test]
fn the_owner_takes_the_units_when_no_other_node_can() {
    const UNIT: usize = 64 << 10;
    let mut c = Cluster::with_kdfs(2);
    let m1 = c.mnt(0).to_path_buf();
    fs::create_dir(m1.join("s")).unwrap();
    kdfsctl_stripe(&[Path::new("64K:2"), &m1.join("s")]);
    let data = pattern(9 * UNIT + 123, 0x33);
    fs::write(m1.join("s/f"), &data).unwrap();
    assert!(kdfsctl_stripe(&[&m1.join("s/f")]).contains("on nodes 1,2"));
    Command::new("sync").status().unwrap();
    let mtime = fs::metadata(m1.join("s/f")).unwrap().mtime_nsec();

    nodes_del(&c, 0, "2");
    let log2 = plain(&fs::read_to_string(c.nodes[1].data.join("krgd.log")).unwrap());
    assert!(log2.contains("kdfs: handed over"), "{log2}");
    c.umount(1);
    c.kill_krgd(1);
    assert!(kdfsctl_stripe(&[&m1.join("s/f")]).contains("on nodes 1,1"));
    assert!(fs::read(m1.join("s/f")).unwrap() == data, "other bytes");
    assert_eq!(fs::metadata(m1.join("s/f")).unwrap().mtime_nsec(), mtime);
}
