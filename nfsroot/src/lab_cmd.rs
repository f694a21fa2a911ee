//! The `serve` and `boot-test` subcommands of the nfsroot command line:
//! their arguments, and the thin glue to `nfsroot::serve` and `nfsroot::lab`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use nfsroot::paths::absolute;
use nfsroot::Description;

pub const BOOT_TEST_ABOUT: &str = "\
Boot diskless nodes of a rendered description (render --dhcp dnsmasq) in QEMU
VMs with no disk, network boot only, on a bridge inside a private network
namespace, and report each step: DHCP, TFTP, kernel, NFS root, krgd. The
namespace holds `nfsroot serve` (dnsmasq, NFS-Ganesha) and a krgd on the host
side of the bridge, at the server's address, which forms a cluster; each node
is added to it (krgadm nodes add) once its krgd is present. Nodes boot in
parallel; KVM is tried first and TCG used when KVM stalls in the firmware.
Consoles and logs stay in --dir. The exit status is 0 when every node joined
(and every --mac VM got no address).

  nfsroot boot-test cluster.toml node1 --out /srv/krg
  nfsroot boot-test cluster.toml node1 node2 --out /srv/krg --accel tcg
  nfsroot boot-test cluster.toml --mac 52:54:00:00:00:99 --out /srv/krg  # unknown MAC
  nfsroot boot-test cluster.toml node3 --host-node-id 3 --out /srv/krg   # id taken";

#[derive(Args, Clone)]
pub struct BootTestArgs {
    /// The cluster description.
    file: PathBuf,
    /// Nodes to boot (names from the description).
    nodes: Vec<String>,
    /// Directory it was rendered into (with --dhcp dnsmasq).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Also boot a VM with this MAC, which should get no address (repeatable).
    #[arg(long, value_name = "MAC")]
    mac: Vec<String>,
    /// How QEMU runs the guests.
    #[arg(long, value_enum, default_value_t = AccelFlag::Auto)]
    accel: AccelFlag,
    /// Memory of each VM.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    memory: u32,
    /// Seconds a node may take from power-on to online.
    #[arg(long, value_name = "S", default_value_t = 480)]
    timeout: u64,
    /// Directory with krgd and krgadm [default: next to nfsroot, else /usr/local/sbin].
    #[arg(long, value_name = "DIR")]
    krg_bin_dir: Option<PathBuf>,
    /// node_id of the host-side krgd [default: one more than the largest described].
    #[arg(long, value_name = "N")]
    host_node_id: Option<u32>,
    /// Where consoles and logs go [default: a new directory under /tmp].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AccelFlag {
    /// KVM when it gets the guest to DHCP, else TCG.
    Auto,
    Kvm,
    Tcg,
}

pub const SERVE_ABOUT: &str = "\
Run the boot services of a description rendered with `--dhcp dnsmasq`, in the
foreground, until Ctrl-C: dnsmasq (DHCP and TFTP, dhcp/dnsmasq.conf) and
NFS-Ganesha with its VFS back end (NFS, nfs/ganesha.conf; for servers whose
kernel has no NFS server), plus rpcbind when none runs. Their logs go to the
terminal, one line each, prefixed with the daemon's name. A site can instead
run its own dhcpd/dnsmasq and nfs-kernel-server with the rendered files.

  nfsroot render cluster.toml --out /srv/krg --dhcp dnsmasq
  nfsroot serve cluster.toml --out /srv/krg
  nfsroot serve cluster.toml --out /srv/krg --netns lab --private-run";

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// The cluster description.
    file: PathBuf,
    /// Directory it was rendered into (with --dhcp dnsmasq).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Serve inside this network namespace (made with `ip netns add`).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Use a mount namespace of its own with an empty /run (its own rpcbind).
    #[arg(long)]
    private_run: bool,
}

/// `nfsroot serve`: the daemons of a rendering, in the foreground.
pub fn serve(a: ServeArgs) -> Result<()> {
    let d = Description::load(&a.file)?;
    let opts = nfsroot::serve::ServeOptions {
        out: absolute(&a.out)?,
        netns: a.netns,
        private_run: a.private_run,
    };
    nfsroot::serve::run(&d, &opts, &mut std::io::stdout())?;
    Ok(())
}

fn krg_bin_dir(given: Option<PathBuf>) -> PathBuf {
    if let Some(d) = given {
        return d;
    }
    // Next to this nfsroot (target/release, /usr/local/sbin), else the install place.
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .filter(|d| d.join("krgd").is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/local/sbin"))
}

/// `nfsroot boot-test`: boot nodes in VMs and report each step.
pub fn boot_test(a: BootTestArgs) -> Result<()> {
    use nfsroot::lab::{self, Accel, BootLab, BootRequest, LabOptions, Outcome};
    let d = Description::load(&a.file)?;
    if a.nodes.is_empty() && a.mac.is_empty() {
        bail!("name at least one node to boot (or --mac MAC)");
    }
    let mut reqs = Vec::new();
    for name in &a.nodes {
        let Some(n) = d.nodes.iter().find(|n| &n.name == name) else {
            bail!("no node named {name} in {}", a.file.display());
        };
        reqs.push(BootRequest {
            label: n.name.clone(),
            mac: n.mac.clone(),
        });
    }
    for (i, mac) in a.mac.iter().enumerate() {
        let Some(m) = nfsroot::desc::normalise_mac(mac) else {
            bail!("--mac {mac:?} is not a MAC address like 52:54:00:12:34:56");
        };
        if let Some(n) = d
            .nodes
            .iter()
            .find(|n| nfsroot::desc::normalise_mac(&n.mac).as_deref() == Some(&m))
        {
            bail!(
                "--mac {m} is node {}'s MAC; --mac is for MACs not in the description",
                n.name
            );
        }
        reqs.push(BootRequest {
            label: format!("mac{}", i + 1),
            mac: m,
        });
    }
    let host_node_id = a
        .host_node_id
        .unwrap_or_else(|| lab::default_host_node_id(&d));
    if !(1..=65535).contains(&host_node_id) {
        bail!("--host-node-id {host_node_id}: node ids are 1..=65535");
    }
    let dir = match a.dir {
        Some(d) => absolute(&d)?,
        None => std::env::temp_dir().join(format!("nfsroot-boot-test.{}", std::process::id())),
    };
    let exe = std::env::current_exe().context("finding the nfsroot binary")?;
    let opts = LabOptions {
        description: absolute(&a.file)?,
        out: absolute(&a.out)?,
        nfsroot_exe: exe,
        krg_bin_dir: absolute(&krg_bin_dir(a.krg_bin_dir))?,
        dir: dir.clone(),
        accel: match a.accel {
            AccelFlag::Auto => Accel::Auto,
            AccelFlag::Kvm => Accel::Kvm,
            AccelFlag::Tcg => Accel::Tcg,
        },
        memory_mib: a.memory,
        host_node_id,
        timeout: std::time::Duration::from_secs(a.timeout),
    };
    let mut say = |m: &str| println!("boot-test: {m}");
    let mut lab = BootLab::start(opts, &mut say)?;
    let reports = lab.boot(&reqs, &mut say)?;
    println!();
    for r in &reports {
        println!("{r}");
    }
    println!("\nkrgadm nodes status (host krgd, node {host_node_id}):");
    print!(
        "{}",
        lab.host()
            .krgadm(&["nodes", "status"])
            .unwrap_or_else(|e| format!("{e}\n"))
    );
    println!("consoles and logs: {}", dir.display());
    drop(lab);
    let bad: Vec<&str> = reports
        .iter()
        .filter(|r| {
            let expected_refusal = r
                .node
                .as_ref()
                .is_some_and(|(_, id, _)| *id == host_node_id);
            match (&r.outcome, &r.node) {
                (Outcome::Joined, Some(_)) => expected_refusal,
                (Outcome::IdTaken(_), Some(_)) => !expected_refusal,
                (Outcome::NoAddress(_), None) => false,
                _ => true,
            }
        })
        .map(|r| r.label.as_str())
        .collect();
    if !bad.is_empty() {
        bail!("not as expected: {}", bad.join(", "));
    }
    Ok(())
}
