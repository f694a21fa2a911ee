//! Extended attributes and POSIX ACLs set through one node's mount are read
//! through another's, with the errno semantics of a local file system.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::xattrs::{get, list, remove, set};
use common::{as_tests_user, run, Cluster};

#[test]
fn xattrs_round_trip_across_nodes_with_local_errnos() {
    let cl = Cluster::with_kdfs(2);
    let (a, b) = (cl.mnt(0).join("f"), cl.mnt(1).join("f"));
    fs::write(&a, b"data").unwrap();
    set(&a, "user.color", b"red", 0).unwrap();
    set(&a, "trusted.t", b"root only", 0).unwrap();
    set(&a, "security.s", b"sec", 0).unwrap();
    let big = vec![7u8; 3000];
    set(&a, "user.big", &big, 0).unwrap();
    assert_eq!(get(&b, "user.color", 64).unwrap(), b"red");
    assert_eq!(get(&b, "user.big", 4096).unwrap(), big);
    assert_eq!(get(&b, "trusted.t", 64).unwrap(), b"root only");
    assert_eq!(get(&b, "security.s", 64).unwrap(), b"sec");
    // Size 0 asks the length; a short buffer is ERANGE; unset is ENODATA.
    assert_eq!(get(&b, "user.big", 0).unwrap(), b"3000");
    assert_eq!(get(&b, "user.big", 10).unwrap_err(), libc::ERANGE);
    assert_eq!(get(&b, "user.none", 64).unwrap_err(), libc::ENODATA);
    // XATTR_CREATE / XATTR_REPLACE.
    assert_eq!(
        set(&b, "user.color", b"x", libc::XATTR_CREATE).unwrap_err(),
        libc::EEXIST
    );
    assert_eq!(
        set(&b, "user.new", b"x", libc::XATTR_REPLACE).unwrap_err(),
        libc::ENODATA
    );
    set(&b, "user.color", b"blue", libc::XATTR_REPLACE).unwrap();
    assert_eq!(get(&a, "user.color", 64).unwrap(), b"blue");
    // The store's own attributes never show; only what users set.
    assert_eq!(
        list(&b),
        vec!["security.s", "trusted.t", "user.big", "user.color"]
    );
    remove(&b, "user.big").unwrap();
    assert_eq!(remove(&a, "user.big").unwrap_err(), libc::ENODATA);
    assert_eq!(get(&a, "user.big", 64).unwrap_err(), libc::ENODATA);
    // Namespaces a file system does not keep are refused.
    assert_eq!(
        set(&a, "system.bogus", b"x", 0).unwrap_err(),
        libc::EOPNOTSUPP
    );
    // Hostile names: too long for the store once prefixed.
    let long = format!("user.{}", "n".repeat(245));
    assert_eq!(set(&a, &long, b"x", 0).unwrap_err(), libc::ERANGE);
    // security.capability of another node's file: its absence is
    // remembered (the kernel asks at every write), setting it through this
    // mount forgets that.
    let remote = cl.mnt(0).join("on2");
    fs::write(cl.mnt(1).join("on2"), b"x").unwrap();
    assert_eq!(
        get(&remote, "security.capability", 64).unwrap_err(),
        libc::ENODATA
    );
    fs::write(&remote, b"written through node 1").unwrap();
    let mut caps = 0x0200_0001u32.to_le_bytes().to_vec();
    for w in [1u32 << 10, 0, 0, 0] {
        caps.extend(w.to_le_bytes());
    }
    set(&remote, "security.capability", &caps, 0).unwrap();
    assert_eq!(get(&remote, "security.capability", 64).unwrap(), caps);
    assert_eq!(
        get(&cl.mnt(1).join("on2"), "security.capability", 64).unwrap(),
        caps
    );
    // On a directory of node 2, read through node 1.
    fs::create_dir(cl.mnt(1).join("d")).unwrap();
    set(&cl.mnt(1).join("d"), "user.dir", b"yes", 0).unwrap();
    assert_eq!(get(&cl.mnt(0).join("d"), "user.dir", 8).unwrap(), b"yes");
    // An ordinary user: user.* of their own files only; trusted.* is
    // neither readable nor listed for them.
    fs::set_permissions(cl.mnt(0).join("d"), fs::Permissions::from_mode(0o777)).unwrap();
    let mine = cl.mnt(0).join("d/mine");
    assert!(run(as_tests_user("touch").arg(&mine)).status.success());
    let out = run(as_tests_user("setfattr")
        .args(["-n", "user.k", "-v", "v"])
        .arg(&mine));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(as_tests_user("setfattr")
        .args(["-n", "user.k", "-v", "v"])
        .arg(&a));
    assert!(
        !out.status.success(),
        "a user wrote an attribute of root's file"
    );
    let out = run(as_tests_user("getfattr").args(["-d", "-m", "-"]).arg(&b));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("user.color") && !shown.contains("trusted.t"),
        "{shown}"
    );
    // Not even listed for them (as on ext4); root sees it listed.
    let out = run(as_tests_user("getfattr")
        .args(["--absolute-names", "-m", "-"])
        .arg(&b));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("user.color")
            && listed.contains("security.s")
            && !listed.contains("trusted"),
        "{listed}"
    );
    assert!(list(&b).contains(&"trusted.t".to_string()));
    assert_eq!(get(&cl.mnt(1).join("d/mine"), "user.k", 8).unwrap(), b"v");
}

#[test]
fn posix_acls_round_trip_across_nodes_and_set_the_mode() {
    let cl = Cluster::with_kdfs(2);
    let (a, b) = (cl.mnt(0).join("f"), cl.mnt(1).join("f"));
    fs::write(&a, b"data").unwrap();
    fs::set_permissions(&a, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(Command::new("setfacl")
        .args(["-m", "u:tests:rwx,m::r-x"])
        .arg(&a));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new("getfacl").args(["-c", "-n"]).arg(&b));
    let acl = String::from_utf8_lossy(&out.stdout);
    let (uid, _) = common::tests_user();
    assert!(acl.contains(&format!("user:{uid}:rwx")), "{acl}");
    assert!(acl.contains("mask::r-x"), "{acl}");
    // The mask became the group bits, as on a local file system.
    assert_eq!(
        fs::metadata(&b).unwrap().permissions().mode() & 0o777,
        0o654
    );
    // A default ACL on a directory of node 2, read through node 1.
    let d = cl.mnt(1).join("d");
    fs::create_dir(&d).unwrap();
    let out = run(Command::new("setfacl")
        .args(["-d", "-m", "u:tests:rx"])
        .arg(&d));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new("getfacl")
        .args(["-c", "-n", "-d"])
        .arg(cl.mnt(0).join("d")));
    let acl = String::from_utf8_lossy(&out.stdout);
    assert!(acl.contains(&format!("user:{uid}:r-x")), "{acl}");
    // Removed through node 2: gone on node 1.
    let out = run(Command::new("setfacl").arg("-b").arg(&b));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        get(&a, "system.posix_acl_access", 64).unwrap_err(),
        libc::ENODATA
    );
}
