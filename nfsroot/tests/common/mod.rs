//! Helpers shared by the integration tests: run the real binary, make
//! loop-mounted btrfs and xfs file systems (torn down on drop).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn nfsroot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nfsroot"))
        .args(args)
        .env_remove("NFSROOT_IMAGES")
        .output()
        .expect("running nfsroot")
}

/// Run nfsroot, assert success, return stdout.
pub fn ok(args: &[&str]) -> String {
    let o = nfsroot(args);
    assert!(
        o.status.success(),
        "nfsroot {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run nfsroot, assert failure, return stderr.
pub fn fails(args: &[&str]) -> String {
    let o = nfsroot(args);
    assert!(
        !o.status.success(),
        "nfsroot {args:?} should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn write_description(dir: &Path, images: &Path, extra_image: &str) -> PathBuf {
    let text = nfsroot::example::EXAMPLE
        .replace("/srv/krg/images", &images.display().to_string())
        .replace(
            "mode = \"clone\"",
            &format!("mode = \"clone\"\n{extra_image}"),
        );
    let p = dir.join("cluster.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A small root tree standing in for a debootstrap result.
pub fn prepared_tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    for d in ["etc", "usr/bin", "var/lib", "tmp", "root"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    std::fs::write(t.join("etc/os-release"), "PRETTY_NAME=\"test tree\"\n").unwrap();
    std::fs::write(t.join("var/lib/state"), "seed\n").unwrap();
    std::fs::copy("/bin/true", t.join("usr/bin/true")).unwrap();
    t
}

/// A loop-mounted file system made by `mkfs` (btrfs or xfs).
pub struct LoopFs {
    pub mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// None when the mkfs tool is not installed.
    pub fn new(fstype: &str, size_mib: u64) -> Option<LoopFs> {
        let mkfs = format!("mkfs.{fstype}");
        let found = ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .any(|d| Path::new(d).join(&mkfs).exists());
        if !found {
            eprintln!("{mkfs} not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(size_mib << 20).unwrap();
        let st = Command::new(&mkfs).arg("-q").arg(&img).output().unwrap();
        assert!(
            st.status.success(),
            "{mkfs}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let st = Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        Some(LoopFs { mnt, _dir: dir })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // Overlay clones inside must go first; `umount -R` handles nesting.
        let _ = Command::new("umount").arg("-R").arg(&self.mnt).status();
    }
}

/// Unmounts, on drop, every mount below a directory (deepest first), so a
/// failing test does not leave overlay clones mounted.
pub struct MountSweeper(pub PathBuf);

impl Drop for MountSweeper {
    fn drop(&mut self) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.0))
            .map(str::to_string)
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg(&p).status();
        }
    }
}
