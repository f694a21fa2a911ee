//! The GlusterFS side of the bench: a volume on this host's own address
//! (glusterd refuses 127.0.0.1), its bricks under `KDFS_TEST_DIR` like
//! every other target, mounted for the run and torn down after.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A GlusterFS volume on loopback, mounted; torn down on drop.
pub struct Gluster {
    pub base: PathBuf,
    pub mnt: PathBuf,
    volume: &'static str,
    started_glusterd: Option<u32>,
}

impl Gluster {
    /// The 3-brick distribute volume of the first tables.
    pub fn start(base: &Path) -> Option<Gluster> {
        Gluster::start_volume(base, "kdfsbench", None, 3)
    }

    /// Volume `volume` of `bricks` bricks under `base` (`replica N` when
    /// given), mounted at `base/gmnt`.
    pub fn start_volume(
        base: &Path,
        volume: &'static str,
        replica: Option<u32>,
        bricks: usize,
    ) -> Option<Gluster> {
        if Command::new("glusterd").arg("--version").output().is_err() {
            eprintln!(
                "GlusterFS: no glusterd here (apt-get install glusterfs-server): \
                 its column is left empty"
            );
            return None;
        }
        let running = Command::new("gluster")
            .args(["--mode=script", "volume", "list"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        let mut started = None;
        if !running {
            let out = Command::new("glusterd")
                .args(["-p", "/run/kdfs-bench-glusterd.pid"])
                .output()
                .ok()?;
            if !out.status.success() {
                eprintln!(
                    "GlusterFS: glusterd did not start ({}): its column is left empty",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            std::thread::sleep(Duration::from_secs(2));
            started = fs::read_to_string("/run/kdfs-bench-glusterd.pid")
                .ok()
                .and_then(|s| s.trim().parse().ok());
        }
        // From here on, dropping `g` tears down whatever was set up.
        let g = Gluster {
            base: base.to_path_buf(),
            mnt: base.join("gmnt"),
            volume,
            started_glusterd: started,
        };
        // glusterd refuses loopback brick addresses: use this host's own
        // address (the traffic still never leaves the machine).
        let host =
            String::from_utf8_lossy(&Command::new("hostname").arg("-I").output().ok()?.stdout)
                .split_whitespace()
                .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())?
                .to_string();
        fs::create_dir_all(&g.mnt).ok()?;
        let mut args = vec![
            "--mode=script".to_string(),
            "volume".into(),
            "create".into(),
            volume.into(),
        ];
        if let Some(n) = replica {
            args.extend(["replica".into(), n.to_string()]);
        }
        for i in 0..bricks {
            let b = base.join(format!("brick{i}"));
            fs::create_dir_all(&b).ok()?;
            args.push(format!("{host}:{}", b.display()));
        }
        args.push("force".into());
        let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        if !ok(Command::new("gluster").args(&args))
            || !ok(Command::new("gluster").args(["--mode=script", "volume", "start", volume]))
            || !ok(Command::new("mount")
                .args(["-t", "glusterfs", &format!("{host}:/{volume}")])
                .arg(&g.mnt))
        {
            eprintln!("GlusterFS volume could not be set up; skipping it");
            return None;
        }
        Some(g)
    }
}

impl Drop for Gluster {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).output();
        let _ = Command::new("gluster")
            .args(["--mode=script", "volume", "stop", self.volume, "force"])
            .output();
        let _ = Command::new("gluster")
            .args(["--mode=script", "volume", "delete", self.volume])
            .output();
        if let Some(pid) = self.started_glusterd {
            // SAFETY: plain kill(2) of the glusterd this bench started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}
