//! The Debian package as an administrator meets it: `packaging/deb/build.sh`
//! builds it from the workspace's binaries, `dpkg --root` installs it into
//! an empty directory (maintainer scripts run with DPKG_ROOT), and the test
//! checks the file list, the conffile, the modes, `/var/chkpt`, runs
//! `krgd --version` and `man -l` from the installed tree, then purges it and
//! checks that nothing is left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An empty root dpkg can install into.
fn empty_root(root: &Path) {
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
}

fn dpkg(root: &Path) -> Command {
    let mut c = Command::new("dpkg");
    c.arg(format!("--root={}", root.display()))
        .arg("--force-script-chrootless")
        .arg("--force-depends")
        .arg("--force-not-root")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    c
}

const FILES: &[&str] = &[
    "usr/sbin/krgd",
    "usr/sbin/krg-init",
    "usr/sbin/krgadm",
    "usr/sbin/nfsroot",
    "usr/bin/krg",
    "usr/bin/checkpoint",
    "usr/bin/restart",
    "usr/bin/migrate",
    "usr/bin/krgcapset",
    "sbin/mkfs.kdfs",
    "sbin/fsck.kdfs",
    "sbin/mount.kdfs",
    "usr/sbin/kdfsctl",
    "lib/systemd/system/krgd.service",
    "etc/krg/krgd.toml",
    "usr/share/man/man8/krgd.8.gz",
    "usr/share/man/man8/krgadm.8.gz",
    "usr/share/man/man8/mount.kdfs.8.gz",
    "usr/share/man/man8/mkfs.kdfs.8.gz",
    "usr/share/man/man8/fsck.kdfs.8.gz",
    "usr/share/man/man8/kdfsctl.8.gz",
    "usr/share/man/man8/krg-init.8.gz",
    "usr/share/man/man8/nfsroot.8.gz",
    "usr/share/man/man1/krg.1.gz",
    "usr/share/man/man1/checkpoint.1.gz",
    "usr/share/man/man1/restart.1.gz",
    "usr/share/man/man1/migrate.1.gz",
    "usr/share/man/man1/krgcapset.1.gz",
    "usr/share/man/man5/krgd.toml.5.gz",
    "usr/share/man/man5/plugins.conf.5.gz",
    "usr/share/bash-completion/completions/krgadm",
    "usr/share/bash-completion/completions/krg",
    "usr/share/zsh/vendor-completions/_krgadm",
    "usr/share/fish/vendor_completions.d/krgadm.fish",
    "usr/lib/krg/plugins/disk_probe.sh",
    "usr/share/doc/krg/copyright",
];

#[test]
fn deb_installs_into_an_empty_root_and_purges_clean() {
    // The binaries of this test's profile, built (no-op when up to date).
    let mut build = krg_tests::cargo_build(&["krgd", "krgadm", "checkpoint", "kdfs", "nfsroot"]);
    assert!(build.status().unwrap().success());
    let bins = krg_tests::bin_dir();
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deb/build.sh");
    let deb = run(Command::new(&script)
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(out.path())
        .args(["--compress", "none"]));
    let deb = deb.trim();
    assert!(
        deb.ends_with("_amd64.deb") || deb.ends_with(".deb"),
        "{deb}"
    );
    let info = run(Command::new("dpkg-deb").args(["--field", deb]));
    assert!(info.contains("Package: krg\n"), "{info}");
    assert!(info.contains("Depends: libc6, fuse3"), "{info}");

    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    empty_root(root);
    run(dpkg(root).arg("--install").arg(deb));

    let listed = run(dpkg(root).args(["--listfiles", "krg"]));
    for f in FILES {
        let path = format!("/{f}");
        assert!(
            listed.lines().any(|l| l == path),
            "{path} not in the package:\n{listed}"
        );
        assert!(root.join(f).exists(), "{f} not installed");
    }
    for f in ["usr/sbin/krgd", "sbin/mount.kdfs", "usr/bin/krg"] {
        let mode = std::fs::metadata(root.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "{f}");
    }
    // The configuration is a conffile; the unit runs the packaged krgd only
    // once a cluster key exists.
    let conffiles = run(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["--showformat=${Conffiles}", "--show", "krg"]));
    assert!(conffiles.contains("/etc/krg/krgd.toml"), "{conffiles}");
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/krgd.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/sbin/krgd --config /etc/krg/krgd.toml"),
        "{unit}"
    );
    assert!(
        unit.contains("ConditionPathExists=/etc/krg/cluster.key"),
        "{unit}"
    );
    // postinst made the checkpoint directory, sticky and world-writable.
    let chkpt = std::fs::metadata(root.join("var/chkpt")).unwrap();
    assert!(chkpt.is_dir());
    assert_eq!(chkpt.permissions().mode() & 0o7777, 0o1777);

    // The installed binaries run; the installed man pages render.
    let version = run(Command::new(root.join("usr/sbin/krgd")).arg("--version"));
    assert!(version.starts_with("krgd "), "{version}");
    let page = run(Command::new("man")
        .arg("-l")
        .arg(root.join("usr/share/man/man8/krgadm.8.gz"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "200"));
    assert!(page.contains("krgadm nodes add"), "{page}");

    // Purge: every file the package and its scripts made is gone.
    run(dpkg(root).args(["--purge", "krg"]));
    for f in FILES.iter().chain(["var/chkpt", "etc/krg"].iter()) {
        assert!(!root.join(f).exists(), "{f} left after purge");
    }
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
    assert!(!status.contains("Package: krg\n"), "{status}");
}

#[test]
fn purge_keeps_checkpoints_and_build_refuses_bad_input() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deb/build.sh");
    let out = Command::new(&script).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim(),
        "build.sh: unknown argument: --bogus (see --help)"
    );
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(&script)
        .arg("--bin-dir")
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("krgd is missing: build the workspace first"),
        "{err}"
    );

    // postrm on purge removes an empty /var/chkpt but keeps one holding a
    // user's checkpoint.
    let postrm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deb/postrm");
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("var/chkpt/4242")).unwrap();
    std::fs::create_dir_all(root.path().join("var/lib/krg/raft")).unwrap();
    run(Command::new(&postrm)
        .arg("purge")
        .env("DPKG_ROOT", root.path()));
    assert!(root.path().join("var/chkpt/4242").exists());
    assert!(!root.path().join("var/lib/krg").exists());
}
