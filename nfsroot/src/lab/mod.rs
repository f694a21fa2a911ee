//! `nfsroot boot-test`: boot diskless nodes of a rendered description in
//! QEMU VMs on a private bridge and watch every step — DHCP, TFTP, kernel,
//! NFS root, krgd — until each node is online in the cluster of a krgd on
//! the host side of the bridge (or until it stops, with the step and the
//! line that says why).
//!
//! The lab is a network namespace holding the bridge (with the boot
//! server's address), one tap per VM, `nfsroot serve` (dnsmasq, NFS-Ganesha,
//! rpcbind, in a mount namespace of its own) and the host krgd. Everything
//! it starts is stopped, and the namespace deleted, when the lab is dropped
//! — on success, on error and on panic alike.

pub mod host;
pub mod net;
mod run;
pub mod steps;
pub mod vm;

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::desc::{normalise_mac, Description};
use crate::error::{NfsrootError, Result};
use crate::{serve, sys};

pub use host::{HostKrgd, NodeRow};
pub use run::BootReport;
pub use steps::{Outcome, Step};
pub use vm::Accel;

/// How to run a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The description file (passed to `nfsroot serve`).
    pub description: PathBuf,
    /// Its rendering, with `--dhcp dnsmasq`.
    pub out: PathBuf,
    /// The nfsroot binary that runs `serve`.
    pub nfsroot_exe: PathBuf,
    /// Directory holding krgd and krgadm.
    pub krg_bin_dir: PathBuf,
    /// Where consoles and logs are written (kept afterwards).
    pub dir: PathBuf,
    pub accel: Accel,
    pub memory_mib: u32,
    /// node_id of the host-side krgd.
    pub host_node_id: u32,
    /// Longest time a VM may take from power-on to online.
    pub timeout: Duration,
}

/// One VM to boot: a label for its files and the MAC it boots with.
#[derive(Debug, Clone)]
pub struct BootRequest {
    pub label: String,
    pub mac: String,
}

/// How long KVM gets to bring a guest to its first DHCP request before the
/// lab falls back to TCG (nested KVM can stall inside iPXE).
const KVM_PROBE: Duration = Duration::from_secs(20);

pub struct BootLab {
    // Fields drop in this order: VMs, then the host krgd, the server, the
    // network namespace last.
    vms: Vec<vm::Vm>,
    host: HostKrgd,
    serve: Option<Child>,
    net: net::LabNet,
    d: Description,
    opts: LabOptions,
    serve_log: PathBuf,
    accel: Option<Accel>,
}

impl BootLab {
    /// Check the rendering, make the network, start `serve` and the host
    /// krgd, and form the host's cluster.
    pub fn start(opts: LabOptions, progress: &mut dyn FnMut(&str)) -> Result<BootLab> {
        let d = Description::load(&opts.description)?;
        serve::check_rendered(&d, &opts.out)?;
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| NfsrootError::io(format!("creating {}", opts.dir.display()), e))?;
        let bridge = d
            .server
            .interface
            .clone()
            .unwrap_or_else(|| "krgbr0".to_string());
        let lab_net = net::LabNet::new(&bridge, d.server_address(), d.subnet())?;
        progress(&format!(
            "network namespace {} with bridge {bridge} ({}/{})",
            lab_net.ns,
            d.server_address(),
            d.subnet().prefix
        ));
        let serve_log = opts.dir.join("serve.log");
        let serve = start_serve(&opts, &lab_net, &serve_log)?;
        let mut serve = Some(serve);
        if let Err(e) = wait_serve_ready(&mut serve, &serve_log) {
            stop_child(&mut serve, Duration::from_secs(8));
            return Err(e);
        }
        progress(&format!(
            "nfsroot serve ready (log {})",
            serve_log.display()
        ));
        let host = match start_host(&d, &opts, &lab_net) {
            Ok(h) => h,
            Err(e) => {
                stop_child(&mut serve, Duration::from_secs(8));
                return Err(e);
            }
        };
        let lab = BootLab {
            vms: Vec::new(),
            host,
            serve,
            net: lab_net,
            d,
            opts,
            serve_log,
            accel: None,
        };
        lab.host.krgadm(&["cluster", "start"])?;
        progress(&format!(
            "host krgd node {} at {}:{} formed the cluster (log {})",
            lab.host.node_id,
            lab.d.server_address(),
            lab.d.krgd.port,
            lab.host.log.display()
        ));
        Ok(lab)
    }

    pub fn host(&self) -> &HostKrgd {
        &self.host
    }

    pub fn description(&self) -> &Description {
        &self.d
    }

    /// The lab's network namespace (gone once the lab is dropped).
    pub fn netns(&self) -> &str {
        &self.net.ns
    }

    pub fn serve_log(&self) -> &Path {
        &self.serve_log
    }

    /// Boot `reqs` in parallel and follow them until each has an outcome.
    /// VMs that joined keep running (until [`BootLab::power_off`] or drop);
    /// the others are powered off when their outcome is known.
    pub fn boot(
        &mut self,
        reqs: &[BootRequest],
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<BootReport>> {
        for r in reqs {
            if normalise_mac(&r.mac).is_none() {
                return Err(NfsrootError::Image(format!(
                    "{:?} is not a MAC address like 52:54:00:12:34:56",
                    r.mac
                )));
            }
        }
        run::follow(self, reqs, progress)
    }

    /// Power every VM off.
    pub fn power_off(&mut self) {
        for v in &mut self.vms {
            v.stop();
        }
    }

    fn start_vm(&mut self, label: &str, mac: &str, accel: Accel) -> Result<usize> {
        let tap = self.net.add_tap()?;
        let spec = vm::VmSpec {
            memory_mib: self.opts.memory_mib,
            dir: self.opts.dir.clone(),
        };
        let v = vm::Vm::start(&self.net, &spec, label, mac, &tap, accel)?;
        self.vms.push(v);
        Ok(self.vms.len() - 1)
    }
}

impl Drop for BootLab {
    fn drop(&mut self) {
        self.power_off();
        self.host.stop();
        stop_child(&mut self.serve, Duration::from_secs(8));
        // `net` drops last: whatever is left inside is killed by PID, then
        // the namespace (bridge, taps) is deleted.
    }
}

fn start_serve(opts: &LabOptions, n: &net::LabNet, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)
        .map_err(|e| NfsrootError::io(format!("creating {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| NfsrootError::io("duplicating a log descriptor", e))?;
    let mut cmd = Command::new(&opts.nfsroot_exe);
    cmd.arg("serve")
        .arg(&opts.description)
        .arg("--out")
        .arg(&opts.out)
        .arg("--netns")
        .arg(&n.ns)
        .arg("--private-run");
    sys::daemon_child(&mut cmd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| NfsrootError::Tool {
            tool: "nfsroot serve".into(),
            message: e.to_string(),
        })
}

fn wait_serve_ready(serve: &mut Option<Child>, log: &Path) -> Result<()> {
    let t = Instant::now();
    let tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(4)..].join(" | ")
    };
    loop {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(serve::READY)
        {
            return Ok(());
        }
        if let Some(c) = serve.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(NfsrootError::Tool {
                    tool: "nfsroot serve".into(),
                    message: format!("exited ({status}): {}", tail()),
                });
            }
        }
        if t.elapsed() > Duration::from_secs(90) {
            return Err(NfsrootError::Tool {
                tool: "nfsroot serve".into(),
                message: format!("not ready after 90 s: {}", tail()),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_host(d: &Description, opts: &LabOptions, n: &net::LabNet) -> Result<HostKrgd> {
    // Every node of the image shares its cluster key; the host uses it too.
    let key_rel = d
        .krgd
        .cluster_key_file
        .strip_prefix("/")
        .unwrap_or(&d.krgd.cluster_key_file);
    let key = d.image.root.join(&d.image.boot).join(key_rel);
    if !key.is_file() {
        return Err(NfsrootError::Image(format!(
            "the boot image has no cluster key at {} (build it with `nfsroot image build`)",
            key.display()
        )));
    }
    let port = d.krgd.port;
    let k = &d.krgd;
    HostKrgd::start(
        n,
        &host::HostSpec {
            krg_bin_dir: &opts.krg_bin_dir,
            dir: &opts.dir,
            node_id: opts.host_node_id,
            session_id: d.cluster.session_id,
            listen: SocketAddrV4::new(d.server_address(), port),
            peers: d
                .nodes
                .iter()
                .map(|x| SocketAddrV4::new(x.ip, port))
                .collect(),
            key: &key,
            // The same timing as the nodes (their rendered krgd.toml).
            heartbeat_ms: k.heartbeat_ms,
            failure_timeout_ms: k.failure_timeout_ms,
            max_voters: k.max_voters,
        },
    )
}

/// SIGTERM, then SIGKILL after `grace`.
fn stop_child(child: &mut Option<Child>, grace: Duration) {
    let Some(mut c) = child.take() else {
        return;
    };
    if let Ok(None) = c.try_wait() {
        sys::kill(c.id(), libc::SIGTERM);
        let t = Instant::now();
        while let Ok(None) = c.try_wait() {
            if t.elapsed() > grace {
                sys::kill(c.id(), libc::SIGKILL);
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The default node_id of the host krgd: one more than the largest described.
pub fn default_host_node_id(d: &Description) -> u32 {
    d.nodes
        .iter()
        .map(|n| n.node_id)
        .max()
        .unwrap_or(0)
        .saturating_add(1)
        .min(65535)
}
