//! Clone time of an image by each mechanism this machine offers, at two
//! image sizes with the same number of files (64 MiB and 1 GiB): btrfs
//! snapshot (loop-mounted btrfs), reflink copy (loop-mounted xfs) and
//! overlayfs (the temp dir's file system), with a plain full copy as the
//! reference. Run as root: `cargo bench -p nfsroot`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nfsroot::image::{BuildOptions, BuildSource, Mechanism, Store};

const FILES: usize = 64;
const RUNS: usize = 5;

struct LoopFs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    fn new(fstype: &str, size_mib: u64) -> Option<LoopFs> {
        let dir = tempfile::tempdir().ok()?;
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .ok()?
            .set_len(size_mib << 20)
            .ok()?;
        let ok = Command::new(format!("mkfs.{fstype}"))
            .arg("-q")
            .arg(&img)
            .output()
            .ok()?
            .status
            .success();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).ok()?;
        let mounted = ok
            && Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(&img)
                .arg(&mnt)
                .status()
                .ok()?
                .success();
        if !mounted {
            println!("{fstype}: cannot make a loop file system here (mkfs.{fstype} missing or not root); skipped");
            return None;
        }
        Some(LoopFs { mnt, _dir: dir })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-R").arg(&self.mnt).status();
    }
}

/// A tree of FILES files totalling `total` bytes, filled with non-zero data.
fn make_tree(dir: &Path, total: u64) -> std::io::Result<()> {
    let per = (total / FILES as u64) as usize;
    let chunk: Vec<u8> = (0..per).map(|i| (i % 251) as u8 + 1).collect();
    for i in 0..FILES {
        let d = dir.join(format!("d{}", i % 8));
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("f{i}")), &chunk)?;
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median clone time of image `name` in `store` by `mech`.
fn time_clones(
    store: &Store,
    name: &str,
    mech: Mechanism,
    runs: usize,
) -> Result<Duration, String> {
    let mut times = Vec::new();
    for r in 0..runs {
        let dst = format!("{name}-clone{r}");
        // Flush dirty data first so one run does not pay for the previous one's writeback.
        Command::new("sync").status().map_err(|e| e.to_string())?;
        let t = Instant::now();
        store
            .clone_image(name, &dst, Some(mech))
            .map_err(|e| e.to_string())?;
        times.push(t.elapsed());
        store.remove(&dst).map_err(|e| e.to_string())?;
    }
    Ok(median(times))
}

fn bench_fs(label: &str, base: &Path, mechs: &[Mechanism]) {
    let root = base.join("images");
    let store = match Store::open(&root) {
        Ok(s) => s,
        Err(e) => return println!("{label}: {e}"),
    };
    for (size_name, size) in [("64 MiB", 64u64 << 20), ("1 GiB", 1u64 << 30)] {
        let tree = base.join(format!("tree-{}", size >> 20));
        if let Err(e) = make_tree(&tree, size) {
            return println!("{label}: writing the test tree: {e}");
        }
        let name = format!("img{}", size >> 20);
        let opts = BuildOptions {
            source: BuildSource::Tree(tree.clone()),
            krg_bin_dir: None,
            config_tree: None,
        };
        if let Err(e) = store.build(&name, &opts, &mut |_| {}) {
            return println!("{label}: building the image: {e}");
        }
        let _ = std::fs::remove_dir_all(&tree);
        for &m in mechs {
            // The full copy is slow by nature: one run is enough to compare.
            let runs = if m == Mechanism::Copy { 1 } else { RUNS };
            match time_clones(&store, &name, m, runs) {
                Ok(t) => println!("{label:<6} {:<26} {size_name:>7} {FILES:>3} files   clone {:>9.1} ms  (median of {runs})", m.to_string(), t.as_secs_f64() * 1e3),
                Err(e) => println!("{label:<6} {:<26} {size_name:>7}   failed: {e}", m.to_string()),
            }
        }
        let _ = store.remove(&name);
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` also runs this: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("clone bench: run with `cargo bench -p nfsroot`");
        return;
    }
    println!(
        "nfsroot image clone time, {FILES} files per image (constant file count, growing size)"
    );
    if let Some(fs) = LoopFs::new("btrfs", 3 << 10) {
        bench_fs(
            "btrfs",
            &fs.mnt,
            &[Mechanism::Btrfs, Mechanism::Reflink, Mechanism::Overlay],
        );
    }
    if let Some(fs) = LoopFs::new("xfs", 3 << 10) {
        bench_fs(
            "xfs",
            &fs.mnt,
            &[Mechanism::Reflink, Mechanism::Overlay, Mechanism::Copy],
        );
    }
    match tempfile::tempdir_in("/var/tmp") {
        Ok(d) => {
            let fstype = Command::new("stat")
                .args(["-f", "-c", "%T"])
                .arg(d.path())
                .output()
                .ok();
            // stat reports ext4 as "ext2/ext3" (they share a magic number).
            let label = fstype
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .replace("ext2/ext3", "ext4")
                })
                .unwrap_or_else(|| "tmpdir".into());
            let mut mechs = nfsroot::image::available_mechanisms(d.path(), d.path());
            mechs.retain(|m| *m != Mechanism::Btrfs);
            mechs.push(Mechanism::Copy);
            bench_fs(&label, d.path(), &mechs)
        }
        Err(e) => println!("temp dir: {e}"),
    }
}
