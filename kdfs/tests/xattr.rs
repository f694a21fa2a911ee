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

/// Whether the `tests` user can read `p`.
fn tests_can_read(p: &std::path::Path) -> bool {
    as_tests_user("cat")
        .arg(p)
        .output()
        .unwrap()
        .status
        .success()
}

/// `setfacl ARGS PATH` as root, which must succeed.
fn setfacl(args: &[&str], p: &std::path::Path) {
    let out = run(Command::new("setfacl").args(args).arg(p));
    assert!(
        out.status.success(),
        "setfacl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kernel enforces ACLs (FUSE_POSIX_ACL), through every node's mount
/// and at once: before, an ACL that denied a user was stored and shown
/// but the mode alone was checked, so a user shut out of a 0644 file by
/// `setfacl -m u:tests:---` still read it as "other" (the attack this
/// reproduces). A chmod masks named users off as on a local file
/// system, and a directory's default ACL is inherited by what is made in
/// it, through another node too; without one, the umask applies.
#[test]
fn posix_acls_are_enforced_on_every_node() {
    let cl = Cluster::with_kdfs(2);
    // a file of node 1, and one of node 2, each seen through both mounts
    for (owner, other) in [(0, 1), (1, 0)] {
        let f = format!("f{owner}");
        let (mine, theirs) = (cl.mnt(owner).join(&f), cl.mnt(other).join(&f));
        fs::write(&mine, b"data").unwrap();
        fs::set_permissions(&mine, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(tests_can_read(&mine) && tests_can_read(&theirs));
        setfacl(&["-m", "u:tests:---"], &theirs);
        assert!(!tests_can_read(&mine), "denied by the ACL on its own node");
        assert!(
            !tests_can_read(&theirs),
            "denied by the ACL on the other node"
        );
        setfacl(&["-x", "u:tests"], &mine);
        assert!(tests_can_read(&mine) && tests_can_read(&theirs));
    }
    // chmod 600 takes a named user's rights away (the ACL's mask follows)
    let h = cl.mnt(0).join("h");
    fs::write(&h, b"x").unwrap();
    fs::set_permissions(&h, fs::Permissions::from_mode(0o600)).unwrap();
    setfacl(&["-m", "u:tests:rw"], &h);
    assert!(tests_can_read(&cl.mnt(1).join("h")));
    fs::set_permissions(cl.mnt(1).join("h"), fs::Permissions::from_mode(0o600)).unwrap();
    assert!(!tests_can_read(&h), "chmod 600 left the named user in");
    let out = run(Command::new("getfacl").args(["-c", "-n"]).arg(&h));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mask::---"));
    // the same through the file's own node's mount (its sole mount
    // changes the mode itself, without krgd)
    setfacl(&["-m", "u:tests:rw"], &cl.mnt(1).join("h"));
    assert!(tests_can_read(&h));
    fs::set_permissions(&h, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        !tests_can_read(&cl.mnt(1).join("h")),
        "chmod 600 by the sole mount left the named user in"
    );
    // a default ACL of node 2's directory, a file made in it through node 1
    let d = cl.mnt(1).join("d");
    fs::create_dir(&d).unwrap();
    setfacl(&["-d", "-m", "u:tests:---,o::r"], &d);
    let new = cl.mnt(0).join("d/new");
    fs::write(&new, b"x").unwrap();
    let out = run(Command::new("getfacl").args(["-c", "-n"]).arg(&new));
    let acl = String::from_utf8_lossy(&out.stdout);
    let (uid, _) = common::tests_user();
    assert!(acl.contains(&format!("user:{uid}:---")), "{acl}");
    assert!(!tests_can_read(&new), "the inherited ACL denies");
    fs::create_dir(cl.mnt(0).join("d/sub")).unwrap();
    let out = run(Command::new("getfacl")
        .args(["-c", "-n", "-d"])
        .arg(cl.mnt(1).join("d/sub")));
    let acl = String::from_utf8_lossy(&out.stdout);
    assert!(
        acl.contains(&format!("user:{uid}:---")),
        "a subdirectory inherits the default: {acl}"
    );
    // no default ACL: the umask
    let out = run(Command::new("sh")
        .args([
            "-c",
            "umask 027; mkdir \"$0/um\"; touch \"$0/um/f\"; stat -c %a \"$0/um\" \"$0/um/f\"",
        ])
        .arg(cl.mnt(0)));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "750\n640\n");
}
