//! Diskless boot for real: a bookworm image built by `nfsroot image build`
//! (cached under the target directory), cloned per node, rendered for a
//! private subnet with `--dhcp dnsmasq`; `nfsroot serve` (dnsmasq, NFS-Ganesha)
//! and a host-side krgd in a network namespace on a bridge; QEMU VMs with no
//! disk and network boot only (KVM tried first, TCG when it stalls). Each
//! node gets its address by DHCP, its menu, kernel and initrd by TFTP,
//! mounts its root over NFS and starts krgd from the image's unit with
//! node_id= and session_id= from the kernel command line; the host adds it to
//! its cluster. The tests assert on the host's `krgadm nodes status`.
//!
//! The serial consoles are kept in the lab directory; a failed boot names
//! the step (DHCP, TFTP, kernel, NFS root, krgd) and the line that says why.
//! Every process, namespace, bridge and tap is removed on drop, also when an
//! assertion fails.
//!
//! `NFSROOT_NETBOOT_CACHE=DIR` moves the image cache; `NFSROOT_NETBOOT_ACCEL=tcg`
//! skips the KVM attempt.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;
#[path = "../../tests/src/nested_cargo.rs"]
mod nested_cargo;

use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::ok;
use nfsroot::lab::{Accel, BootLab, BootReport, BootRequest, LabOptions, NodeRow, Outcome, Step};

/// One lab at a time: each VM under TCG takes a core.
static SERIAL: Mutex<()> = Mutex::new(());

/// The packages of the test image: the default list without nfs-common.
/// A node booting its own clone mounts its root from the initramfs (klibc
/// nfsmount) and needs no NFS tools; leaving them (and the python3 they
/// pull in) out saves a minute of build and ~20 s of boot under TCG
/// (rpcbind, rpc-statd, rpc_pipefs). Shared mode needs nfs-common.
const INCLUDE: &str = "systemd-sysv,fuse3,iproute2,linux-image-amd64,initramfs-tools,zstd";

/// What the cached image is built with; a change rebuilds it.
const IMAGE_RECIPE: &str =
    "v2 bookworm minbase systemd-sysv,fuse3,iproute2,linux-image-amd64,initramfs-tools,zstd";

const SUBNET: &str = "10.78.0";
const UNKNOWN_MAC: &str = "52:54:00:78:00:99";

fn mac(i: u32) -> String {
    format!("52:54:00:78:00:{:02x}", 0x10 + i)
}

/// target/debug (or release): where cargo puts krgd and krgadm.
fn bin_dir() -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    BUILD.call_once(|| {
        let st = nested_cargo::cargo_build(&["krgd", "krgadm"]).status();
        assert!(st.unwrap().success(), "building krgd and krgadm");
    });
    dir
}

fn cache_dir() -> PathBuf {
    std::env::var_os("NFSROOT_NETBOOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("netboot-cache"))
}

fn mirror_reachable() -> Result<(), String> {
    let mirror = nfsroot::image::apt_mirror("bookworm")
        .ok_or("no apt source of this system carries bookworm")?;
    let hostport = mirror
        .split_once("://")
        .and_then(|(scheme, rest)| {
            let h = rest.split('/').next()?;
            Some(if h.contains(':') {
                h.to_string()
            } else {
                format!("{h}:{}", if scheme == "https" { 443 } else { 80 })
            })
        })
        .ok_or(format!("cannot read mirror {mirror}"))?;
    let reachable = hostport.to_socket_addrs().is_ok_and(|mut a| {
        a.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).is_ok())
    });
    reachable
        .then_some(())
        .ok_or(format!("mirror {mirror} is not reachable"))
}

/// The image store with `base` holding the current krg binaries, no clone
/// left from an earlier run. None (skip) only when the image must be
/// built and the mirror cannot be reached.
fn image_store(bins: &Path) -> Option<PathBuf> {
    let cache = cache_dir();
    let store = cache.join("images");
    let s = store.to_str().unwrap();
    let stamp = cache.join("recipe");
    std::fs::create_dir_all(&store).unwrap();
    for e in std::fs::read_dir(store.join(".nfsroot"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".toml")
            .to_string();
        if name != "base" {
            ok(&["image", "rm", &name, "--root", s]);
        }
    }
    let current = std::fs::read_to_string(&stamp).ok().as_deref() == Some(IMAGE_RECIPE);
    if store.join("base").is_dir() && !current {
        ok(&["image", "rm", "base", "--root", s]);
    }
    if !store.join("base").is_dir() {
        if let Err(why) = mirror_reachable() {
            eprintln!("SKIPPED: the boot image must be built and {why}");
            return None;
        }
        let t = Instant::now();
        let out = ok(&[
            "image",
            "build",
            "base",
            "--root",
            s,
            "--include",
            INCLUDE,
            "--krg-bin-dir",
            bins.to_str().unwrap(),
        ]);
        eprintln!(
            "built the boot image in {:.0} s: {}",
            t.elapsed().as_secs_f64(),
            out.trim()
        );
        std::fs::write(&stamp, IMAGE_RECIPE).unwrap();
    }
    ok(&[
        "image",
        "update",
        "base",
        "--root",
        s,
        "--krg-bin-dir",
        bins.to_str().unwrap(),
    ]);
    Some(store)
}

/// Clones made for one test; removed on drop.
struct Clones {
    store: PathBuf,
    names: Vec<String>,
}

impl Drop for Clones {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = common::nfsroot(&["image", "rm", n, "--root", self.store.to_str().unwrap()]);
        }
    }
}

/// A description of `nodes` (1..=n) on the private subnet, rendered with
/// dnsmasq into a directory the dnsmasq user can read.
fn describe(work: &Path, store: &Path, nodes: u32) -> (PathBuf, PathBuf) {
    let out = work.join("out");
    let mut text = format!(
        r#"[cluster]
session_id = 7
domain = "krg.lan"
[server]
address = "{SUBNET}.1"
interface = "krgbr0"
tftp_root = "{tftp}"
[network]
subnet = "{SUBNET}.0/24"
[boot]
loader = "ipxe"
append = "console=ttyS0,115200"
timeout = 1
[image]
root = "{store}"
boot = "base"
mode = "clone"
[krgd]
# Guests under TCG on a loaded host answer late: a 1 s failure timeout
# would mark them failed (and drop them) while they boot.
heartbeat_ms = 500
failure_timeout_ms = 15000
"#,
        tftp = out.join("tftp").display(),
        store = store.display()
    );
    for i in 1..=nodes {
        text.push_str(&format!(
            "[[node]]\nname = \"node{i}\"\nmac = \"{}\"\nip = \"{SUBNET}.{}\"\nnode_id = {i}\n",
            mac(i),
            10 + i
        ));
    }
    let desc = work.join("cluster.toml");
    std::fs::write(&desc, text).unwrap();
    (desc, out)
}

struct Setup {
    work: Option<tempfile::TempDir>,
    desc: PathBuf,
    out: PathBuf,
    _clones: Clones,
}

impl Setup {
    fn work(&self) -> &Path {
        self.work
            .as_ref()
            .map(|w| w.path())
            .unwrap_or(Path::new("/"))
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // A failed test keeps its consoles and logs.
        if std::thread::panicking() {
            if let Some(w) = self.work.take() {
                eprintln!("consoles and logs kept in {}", w.keep().display());
            }
        }
    }
}

fn setup(nodes: u32, cloned: &[u32]) -> Option<Setup> {
    let bins = bin_dir();
    let store = image_store(&bins)?;
    let work = tempfile::tempdir().unwrap();
    // dnsmasq serves TFTP as its own user: the tree must be readable to it.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut clones = Clones {
        store: store.clone(),
        names: Vec::new(),
    };
    for i in cloned {
        let name = format!("node{i}");
        ok(&[
            "image",
            "clone",
            "base",
            &name,
            "--root",
            store.to_str().unwrap(),
        ]);
        clones.names.push(name);
    }
    let (desc, out) = describe(work.path(), &store, nodes);
    let d = desc.to_str().unwrap();
    let o = out.to_str().unwrap();
    ok(&["render", d, "--out", o, "--dhcp", "dnsmasq"]);
    ok(&["check", d, "--out", o, "--dhcp", "dnsmasq"]);
    Some(Setup {
        work: Some(work),
        desc,
        out,
        _clones: clones,
    })
}

fn lab(s: &Setup, host_node_id: u32) -> BootLab {
    let accel = match std::env::var("NFSROOT_NETBOOT_ACCEL").as_deref() {
        Ok("tcg") => Accel::Tcg,
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Auto,
    };
    let opts = LabOptions {
        description: s.desc.clone(),
        out: s.out.clone(),
        nfsroot_exe: PathBuf::from(env!("CARGO_BIN_EXE_nfsroot")),
        krg_bin_dir: bin_dir(),
        dir: s.work().join("lab"),
        accel,
        memory_mib: 512,
        host_node_id,
        timeout: Duration::from_secs(420),
    };
    BootLab::start(opts, &mut |m| eprintln!("lab: {m}")).unwrap()
}

fn node_req(i: u32) -> BootRequest {
    BootRequest {
        label: format!("node{i}"),
        mac: mac(i),
    }
}

/// The host's `krgadm nodes status --json`, run here with the real krgadm.
fn host_status(lab: &BootLab) -> Vec<NodeRow> {
    let out = Command::new(bin_dir().join("krgadm"))
        .arg("--socket")
        .arg(&lab.host().socket)
        .args(["--json", "nodes", "status"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn print_reports(reports: &[BootReport]) {
    for r in reports {
        eprintln!("boot: {r}");
    }
}

fn assert_online(rows: &[NodeRow], i: u32, reports: &[BootReport]) {
    let row = rows.iter().find(|r| r.id == i);
    let want = format!("{SUBNET}.{}:7600", 10 + i);
    assert!(
        row.is_some_and(|r| r.state == "online"
            && r.address == want
            && r.mac.as_deref() == Some(mac(i).as_str())),
        "node {i} should be online at {want} with MAC {}: {rows:?}\n{}",
        mac(i),
        reports
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The namespace and everything in it is gone once the lab is dropped.
fn assert_torn_down(ns: &str) {
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.split_whitespace().any(|w| w == ns),
        "namespace {ns} left behind: {list}"
    );
}

/// CI: a node boots and joins; a MAC not in the description gets no
/// address; a node whose node_id the host krgd already holds is refused,
/// the clash named in its krgd's log (three VMs at once); then a node whose
/// initrd is missing stops at TFTP, and the failure says so. (Two nodes
/// joining together: `boot_test_command_boots_two_nodes_that_join`, ignored.)
#[test]
fn a_diskless_node_joins_bad_macs_and_taken_ids_are_refused() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(s) = setup(4, &[1, 3]) else { return };
    let t = Instant::now();
    let mut lab = lab(&s, 3);
    let ns = lab.netns().to_string();
    let reqs = [
        node_req(1),
        BootRequest {
            label: "stranger".into(),
            mac: UNKNOWN_MAC.into(),
        },
        node_req(3),
    ];
    let reports = lab.boot(&reqs, &mut |m| eprintln!("lab: {m}")).unwrap();
    print_reports(&reports);
    let rows = host_status(&lab);
    eprintln!("host nodes status: {rows:?}");

    assert_eq!(reports[0].outcome, Outcome::Joined, "{}", reports[0]);
    assert_online(&rows, 1, &reports);

    match &reports[2].outcome {
        Outcome::IdTaken(line) => assert!(
            line.contains("node id 3 is already taken by the krgd at"),
            "{line}"
        ),
        other => panic!(
            "node3 should be refused for its taken node id: {other:?}: {}",
            reports[2]
        ),
    }
    // Node 3 is the host, never the VM.
    let three: Vec<&NodeRow> = rows.iter().filter(|r| r.id == 3).collect();
    assert!(
        three.len() == 1 && three[0].address == format!("{SUBNET}.1:7600"),
        "{rows:?}"
    );
    assert!(
        !rows
            .iter()
            .any(|r| r.address.starts_with(&format!("{SUBNET}.13:"))),
        "{rows:?}"
    );

    match &reports[1].outcome {
        Outcome::NoAddress(line) => assert!(line.contains(UNKNOWN_MAC), "{line}"),
        other => panic!("the unknown MAC should get no address: {other:?}"),
    }
    let served = std::fs::read_to_string(lab.serve_log()).unwrap();
    assert!(
        served.contains(&format!("{UNKNOWN_MAC} no address available")),
        "dnsmasq should say it has no address for {UNKNOWN_MAC}"
    );
    assert!(
        !served
            .lines()
            .any(|l| (l.contains("DHCPOFFER") || l.contains("DHCPACK")) && l.contains(UNKNOWN_MAC)),
        "dnsmasq offered an address to {UNKNOWN_MAC}"
    );

    // A boot that cannot go on names its step: node4's initrd is gone.
    std::fs::remove_file(s.out.join("tftp/krg/initrd.img")).unwrap();
    let broken = lab
        .boot(&[node_req(4)], &mut |m| eprintln!("lab: {m}"))
        .unwrap();
    print_reports(&broken);
    match &broken[0].outcome {
        Outcome::Failed { step, why } => {
            assert_eq!(*step, Step::Tftp, "{}", broken[0]);
            assert!(why.contains("initrd.img not found"), "{why}");
        }
        other => panic!("node4 should stop at TFTP: {other:?}"),
    }
    assert!(broken[0].timeline.has(Step::Dhcp), "{}", broken[0]);

    drop(lab);
    assert_torn_down(&ns);
    eprintln!("whole boot test: {:.0} s", t.elapsed().as_secs_f64());
}

/// The command a user runs, `nfsroot boot-test`, on two nodes at once and
/// a MAC not in the description: both nodes join, and its report names each
/// step with its time and ends with the host's `krgadm nodes status`, both
/// nodes online with their MACs (run with --ignored: two full boots).
#[test]
#[ignore]
fn boot_test_command_boots_two_nodes_that_join() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(s) = setup(2, &[1, 2]) else { return };
    let t = Instant::now();
    let dir = s.work().join("cli-lab");
    let o = common::nfsroot(&[
        "boot-test",
        s.desc.to_str().unwrap(),
        "node1",
        "node2",
        "--mac",
        UNKNOWN_MAC,
        "--out",
        s.out.to_str().unwrap(),
        "--krg-bin-dir",
        bin_dir().to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "boot-test failed");
    for i in [1, 2] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("node{i} ({}, node_id {i},", mac(i))))
            .expect("a report line per node");
        for step in [
            "online — DHCP ",
            "→ TFTP ",
            "→ kernel ",
            "→ root mounted ",
            "→ krgd online ",
        ] {
            assert!(line.contains(step), "{line}");
        }
        // The host's table, as krgadm printed it: online, with its MAC.
        assert!(
            text.lines().any(|l| l.contains(&mac(i))
                && l.contains(&format!("{SUBNET}.{}:7600", 10 + i))
                && l.contains("online")),
            "{text}"
        );
        assert!(dir.join(format!("node{i}.console")).is_file());
    }
    assert!(
        text.contains(&format!("mac1 ({UNKNOWN_MAC}, ")) && text.contains("no address"),
        "{text}"
    );
    // boot-test names its namespace; it is gone once the command exits.
    let ns = text
        .split_whitespace()
        .skip_while(|w| *w != "namespace")
        .nth(1)
        .expect("boot-test names its network namespace");
    assert_torn_down(ns);
    eprintln!("whole boot test: {:.0} s", t.elapsed().as_secs_f64());
}
