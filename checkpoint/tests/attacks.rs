//! A user against root's `checkpoint` and `restart`: each attack found in
//! review (issue 14, items 1, 2 and 4), reproduced as the user would do it,
//! and shown refused. Jobs run as `nobody`; the attacker's moves are made
//! from the test (root can do whatever the user could in their own
//! directory). None of this relies on fs.protected_symlinks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use checkpoint::image::SysvShmImage;
use checkpoint::image::{self, FileKind, NodeImage, TaskImage};
use common::*;

const NOBODY: u32 = 65534;

fn nogroup() -> u32 {
    checkpoint::restore::ImageOwner::of_uid(NOBODY).unwrap().gid
}

/// A work directory the job's user can traverse (tempdirs are 0700).
fn workdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// Start `exe args` as nobody, output to `out`.
fn spawn_as_nobody(exe: &Path, args: &[&str], out: &Path) -> i32 {
    let stdout = File::create(out).unwrap();
    chown(out, NOBODY);
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .uid(NOBODY)
        .gid(nogroup())
        .current_dir("/")
        .stdout(stdout)
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    spawn(cmd).id() as i32
}

/// A root-only file whose owner, mode and content must never change.
struct Victim(PathBuf);

impl Victim {
    fn new(dir: &Path) -> Self {
        let vdir = dir.join("root-only");
        std::fs::create_dir(&vdir).unwrap();
        std::fs::set_permissions(&vdir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let p = vdir.join("victim");
        std::fs::write(&p, b"root's secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        Victim(p)
    }
    fn assert_untouched(&self) {
        let m = std::fs::symlink_metadata(&self.0).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "victim changed owner");
        assert_eq!(m.mode() & 0o7777, 0o600, "victim changed mode");
        assert_eq!(std::fs::read(&self.0).unwrap(), b"root's secret\n");
    }
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(nogroup())).unwrap();
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Rewrite a metadata-only image file as its owner could: decode, change,
/// encode with a fresh CRC, write back in place (owner kept).
fn forge<T: image::ImageMeta>(path: &Path, kind: FileKind, f: impl FnOnce(&mut T)) {
    let mut meta: T = image::read_file(path, kind).unwrap().meta;
    f(&mut meta);
    let bytes = image::encode(kind, &meta).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A nobody job checkpointed by root into `store`, then killed.
fn user_image(tmp: &Path, store: &Path, guard: &Guard) -> i32 {
    let exe = build_c(tmp, "bigmem");
    let pid = guard.add(spawn_as_nobody(&exe, &["4"], &tmp.join("job.out")));
    wait_until("job holds its memory", || rss_mib(pid) >= 4);
    ok(&checkpoint_out(store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    pid
}

fn rss_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb >> 10)
}

fn assert_refused_and_absent(o: &std::process::Output, want: &str, pid: i32) {
    assert!(!o.status.success(), "restart should have been refused");
    let e = stderr(o);
    assert!(e.contains(want), "expected {want:?} in: {e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    assert!(!alive(pid), "nothing may run after a refused restart");
}

/// (1a) The user swaps `.tmp-v1` for a directory of symlinks while root
/// copies pages: nothing is written or chowned through them.
#[test]
fn staging_directory_swapped_during_the_page_copy_redirects_nothing() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let victim = Victim::new(tmp.path());
    let exe = build_c(tmp.path(), "bigmem");
    let pid = guard.add(spawn_as_nobody(&exe, &["384"], &tmp.path().join("o")));
    wait_until("job holds its memory", || rss_mib(pid) >= 380);
    let store = tmp.path().join("store");
    let app = store.join(pid.to_string());
    let (stop, swapped) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let racer = {
        let (app, stop, swapped, victim) =
            (app.clone(), stop.clone(), swapped.clone(), victim.0.clone());
        std::thread::spawn(move || {
            let tmpdir = app.join(".tmp-v1");
            while !stop.load(Ordering::Relaxed) {
                if std::fs::symlink_metadata(&tmpdir).is_ok_and(|m| m.is_dir()) {
                    let _ = std::fs::rename(&tmpdir, app.join("stolen"));
                    let _ = std::fs::create_dir(&tmpdir);
                    for name in [
                        format!("task_mm_{pid}_v1.bin"),
                        format!("task_{pid}_v1.bin"),
                        "node_0_v1.bin".into(),
                        "global_v1.bin".into(),
                        "description_v1.txt".into(),
                    ] {
                        let _ = std::os::unix::fs::symlink(&victim, tmpdir.join(name));
                    }
                    swapped.store(true, Ordering::Relaxed);
                    return;
                }
            }
        })
    };
    let o = checkpoint_out(&store, pid, &[]);
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert!(
        swapped.load(Ordering::Relaxed),
        "the race was not run: the job was checkpointed too fast"
    );
    victim.assert_untouched();
    if !o.status.success() {
        // swapped between root's mkdir and its open: refused, the job runs on
        assert!(
            stderr(&o).contains("was replaced while checkpointing"),
            "{}",
            stderr(&o)
        );
        assert!(alive(pid));
        kill_reap(pid);
        return;
    }
    // root's files went where root put them, and were given to the user there
    let m = std::fs::symlink_metadata(app.join(format!("task_mm_{pid}_v1.bin"))).unwrap();
    assert!(
        m.is_file() && m.uid() == NOBODY && m.len() > 300 << 20,
        "memory image: file {} uid {} {} bytes",
        m.is_file(),
        m.uid(),
        m.len()
    );
    assert!(alive(pid));
    kill_reap(pid);
}

/// (1b) `.lock -> /any/path` does not make root create that file.
#[test]
fn lock_file_symlink_is_not_followed() {
    let guard = Guard::new();
    let tmp = workdir();
    let exe = build_c(tmp.path(), "bigmem");
    let pid = guard.add(spawn_as_nobody(&exe, &["1"], &tmp.path().join("o")));
    let store = tmp.path().join("store");
    let app = store.join(pid.to_string());
    std::fs::create_dir_all(&app).unwrap();
    chown(&app, NOBODY);
    let target = tmp.path().join("root-only-target");
    std::os::unix::fs::symlink(&target, app.join(".lock")).unwrap();
    chown(&app.join(".lock"), NOBODY);
    wait_until("job started", || alive(pid));
    let o = checkpoint_out(&store, pid, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(".lock"), "{}", stderr(&o));
    assert!(!target.exists(), "root created the symlink's target");
    assert!(alive(pid), "a refused checkpoint leaves the job running");
    kill_reap(pid);
}

/// 1c. In a store the user can write (1777), a pre-created
/// `PID -> /root-file` symlink does not hand the file to the user.
#[test]
fn application_directory_symlink_is_refused() {
    let guard = Guard::new();
    let tmp = workdir();
    let victim = Victim::new(tmp.path());
    let exe = build_c(tmp.path(), "bigmem");
    let pid = guard.add(spawn_as_nobody(&exe, &["1"], &tmp.path().join("o")));
    let store = tmp.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let app = store.join(pid.to_string());
    std::os::unix::fs::symlink(&victim.0, &app).unwrap();
    chown(&app, NOBODY);
    wait_until("job started", || alive(pid));
    let o = checkpoint_out(&store, pid, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("symlink"), "{}", stderr(&o));
    victim.assert_untouched();
    // a directory of another user is refused too
    std::fs::remove_file(&app).unwrap();
    std::fs::create_dir(&app).unwrap();
    std::os::unix::fs::chown(&app, Some(4242), None).unwrap();
    let o = checkpoint_out(&store, pid, &[]);
    assert!(stderr(&o).contains("uid 4242"), "{}", stderr(&o));
    kill_reap(pid);
}

/// (2) A user-edited image claiming gid 0 and group 0 (CRC recomputed).
#[test]
fn forged_root_group_is_refused() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let store = tmp.path().join("store");
    let pid = user_image(tmp.path(), &store, &guard);
    let task = store
        .join(pid.to_string())
        .join(format!("task_{pid}_v1.bin"));
    forge(&task, FileKind::Task, |t: &mut TaskImage| {
        t.gids = [0; 4];
        t.groups = vec![0, 42];
    });
    assert_eq!(std::fs::metadata(&task).unwrap().uid(), NOBODY);
    assert_refused_and_absent(&restart_out(&store, pid, 1), "group 0", pid);
}

/// (2) Hard limits above restart's own are refused for a user's image.
#[test]
fn forged_hard_limit_is_refused() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let store = tmp.path().join("store");
    let pid = user_image(tmp.path(), &store, &guard);
    let task = store
        .join(pid.to_string())
        .join(format!("task_{pid}_v1.bin"));
    forge(&task, FileKind::Task, |t: &mut TaskImage| {
        for r in &mut t.rlimits {
            if r.resource == libc::RLIMIT_NOFILE {
                r.max = u64::MAX;
            }
        }
    });
    assert_refused_and_absent(&restart_out(&store, pid, 1), "hard limit", pid);
}

/// (2) A user directory of symlinks to root's own image is not root's image.
#[test]
fn symlinks_to_a_root_image_are_refused() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let exe = build_c(tmp.path(), "bigmem");
    let mut cmd = Command::new(&exe);
    cmd.arg("1").stdout(Stdio::null()).stderr(Stdio::null());
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("job started", || alive(pid));
    std::thread::sleep(std::time::Duration::from_millis(50));
    let roots = tmp.path().join("roots");
    ok(&checkpoint_out(&roots, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let users = tmp.path().join("users");
    let app = users.join(pid.to_string());
    std::fs::create_dir_all(&app).unwrap();
    chown(&app, NOBODY);
    for e in std::fs::read_dir(roots.join(pid.to_string())).unwrap() {
        let e = e.unwrap();
        let link = app.join(e.file_name());
        std::os::unix::fs::symlink(e.path(), &link).unwrap();
        chown(&link, NOBODY);
    }
    assert_refused_and_absent(&restart_out(&users, pid, 1), "symlink", pid);
}

/// (2) Every file of an image has one owner: a root-owned memory image
/// beside the user's task file is refused.
#[test]
fn image_files_of_two_owners_are_refused() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let store = tmp.path().join("store");
    let pid = user_image(tmp.path(), &store, &guard);
    let mm = store
        .join(pid.to_string())
        .join(format!("task_mm_{pid}_v1.bin"));
    std::os::unix::fs::chown(&mm, Some(0), Some(0)).unwrap();
    assert_refused_and_absent(&restart_out(&store, pid, 1), "mixed image", pid);
}

/// (2) A node file naming a root-owned, world-writable SysV segment: refused
/// before anything is created.
#[test]
fn forged_sysv_segment_is_refused_and_not_created() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let store = tmp.path().join("store");
    let pid = user_image(tmp.path(), &store, &guard);
    let node = store.join(pid.to_string()).join("node_0_v1.bin");
    let key = 0x4b52_4731;
    forge(&node, FileKind::Node, |n: &mut NodeImage| {
        n.sysv_shm.push(SysvShmImage {
            shmid: 123_456,
            key,
            size: 4096,
            mode: 0o666,
            uid: 0,
            gid: 0,
            destroyed: false,
        });
    });
    assert_refused_and_absent(&restart_out(&store, pid, 1), "SysV shm", pid);
    // SAFETY: shmget without IPC_CREAT only looks the key up.
    let found = unsafe { libc::shmget(key, 0, 0) };
    assert!(found < 0, "the segment was created");
}

/// The creator (cuid) of the SysV segment a user's job gets back is that
/// user, not root: restart creates it under the user's identity.
#[test]
fn users_sysv_segment_is_recreated_by_the_user() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let exe = build_c(tmp.path(), "shmtree");
    let out = tmp.path().join("out.txt");
    let root = guard.add(spawn_as_nobody(&exe, &["sysv"], &out));
    wait_until("shared counter runs", || last_count(&out) >= 3);
    let child = guard.add(children(root)[0]);
    let store = tmp.path().join("store");
    ok(&checkpoint_out(&store, root, &["--kill"]), "checkpoint");
    kill_reap(root);
    wait_until("child gone", || !alive(child));
    kill_reap(child);
    let at_kill = last_count(&out);
    ok(&restart_out(&store, root, 1), "restart");
    wait_until("restored pair runs", || last_count(&out) >= at_kill + 3);
    let maps = std::fs::read_to_string(format!("/proc/{root}/maps")).unwrap();
    let shmid: i32 = maps
        .lines()
        .find(|l| l.contains("/SYSV"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|s| s.parse().ok())
        .expect("the restored job maps its segment");
    // SAFETY: shmid_ds is plain data filled by IPC_STAT.
    let ds = unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        assert_eq!(libc::shmctl(shmid, libc::IPC_STAT, &mut ds), 0);
        ds
    };
    assert_eq!((ds.shm_perm.cuid, ds.shm_perm.uid), (NOBODY, NOBODY));
    for p in children(root).into_iter().chain([root]) {
        kill_reap(p);
    }
}

/// A user-edited incremental image cannot make restart read pages from
/// anywhere but the same process's earlier SNs: a parent that is not
/// earlier, or an earlier SN of another process (PID reused), is refused
/// before anything runs; and a page of the parent SN changed after the
/// fact fails the CRC of the SN that keeps it there.
#[test]
fn forged_chains_are_refused() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let store = tmp.path().join("store");
    let exe = build_c(tmp.path(), "bigmem");
    let pid = guard.add(spawn_as_nobody(&exe, &["4"], &tmp.path().join("job.out")));
    wait_until("job holds its memory", || rss_mib(pid) >= 4);
    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    let o = checkpoint_out(&store, pid, &["--kill"]);
    ok(&o, "checkpoint 2");
    assert!(String::from_utf8_lossy(&o.stdout).contains("incremental on SN 1"));
    kill_reap(pid);
    let app = store.join(pid.to_string());
    let mm2 = app.join(format!("task_mm_{pid}_v2.bin"));
    let mm1 = app.join(format!("task_mm_{pid}_v1.bin"));
    let (good2, good1) = (std::fs::read(&mm2).unwrap(), std::fs::read(&mm1).unwrap());
    let forge_mm = |f: &dyn Fn(&mut image::MmImage)| {
        // metadata sits after the data: rewrite it in place, as the owner could
        let d = image::read_file::<image::MmImage>(&mm2, FileKind::Mm).unwrap();
        let mut meta = d.meta;
        f(&mut meta);
        let file = std::fs::OpenOptions::new().write(true).open(&mm2).unwrap();
        image::finish_with_data(
            &file,
            &mm2,
            FileKind::Mm,
            &meta,
            d.data_off.max(4096),
            d.data_len,
        )
        .unwrap();
    };
    forge_mm(&|m| m.parent = Some(2));
    assert_refused_and_absent(&restart_out(&store, pid, 2), "no earlier parent", pid);
    std::fs::write(&mm2, &good2).unwrap();
    forge_mm(&|m| m.start_time += 1);
    assert_refused_and_absent(&restart_out(&store, pid, 2), "another process", pid);
    std::fs::write(&mm2, &good2).unwrap();
    let mut b = good1.clone();
    b[4096 + 4096 * 100 + 7] ^= 0x10;
    std::fs::write(&mm1, b).unwrap();
    assert_refused_and_absent(&restart_out(&store, pid, 2), "CRC", pid);
    std::fs::write(&mm1, &good1).unwrap();
    ok(
        &restart_out(&store, pid, 2),
        "restart of the untouched chain",
    );
    kill_reap(pid);
}

/// (4) A process whose ids are not all one user's (a setuid program) is
/// saved as root's: its image files are root's, not its real user's.
#[test]
fn setuid_process_image_belongs_to_root() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let exe = build_c(tmp.path(), "bigmem");
    let mut cmd = Command::new(&exe);
    cmd.arg("1").stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: setresuid in the child before exec: real nobody, effective
    // and saved root, as after exec of a setuid-root program.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setresuid(NOBODY, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let pid = guard.add(spawn(cmd).id() as i32);
    wait_until("job started", || alive(pid));
    let store = tmp.path().join("store");
    ok(&checkpoint_out(&store, pid, &[]), "checkpoint");
    let app = store.join(pid.to_string());
    for e in std::fs::read_dir(&app).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".bin") {
            assert_eq!(e.metadata().unwrap().uid(), 0, "{:?}", e.file_name());
        }
    }
    let g: checkpoint::image::GlobalImage =
        image::read_file(&app.join("global_v1.bin"), FileKind::Global)
            .unwrap()
            .meta;
    assert_eq!(g.uid, 0);
    kill_reap(pid);
}

/// If restart dies half way (killed, crashed — a user could try to make
/// it), the tasks it has made, which still have root's credentials, die
/// with it: none ever runs on its own.
#[test]
fn half_restored_tasks_die_with_restart() {
    let guard = Guard::new();
    become_subreaper();
    let tmp = workdir();
    let store = tmp.path().join("store");
    let exe = build_c(tmp.path(), "bigmem");
    let pid = guard.add(spawn_as_nobody(&exe, &["384"], &tmp.path().join("job.out")));
    wait_until("job holds its memory", || rss_mib(pid) >= 380);
    ok(&checkpoint_out(&store, pid, &["--kill"]), "checkpoint");
    kill_reap(pid);
    let mut r = Command::new(bin("restart"));
    r.arg("--dir")
        .arg(&store)
        .arg(pid.to_string())
        .arg("1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut restart = spawn(r);
    wait_until("restart made the task", || {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    restart.kill().unwrap();
    restart.wait().unwrap();
    wait_until("the half-restored task is gone", || !alive(pid));
    kill_reap(pid);
}
