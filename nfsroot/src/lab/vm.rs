//! One diskless VM: QEMU with no disk, one virtio NIC on a tap of the lab's
//! bridge (its ROM is iPXE, from Debian's ipxe-qemu), network boot only,
//! the serial console written to a file and the firmware's debug port
//! (SeaBIOS) to another.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::net::LabNet;
use crate::error::{NfsrootError, Result};
use crate::sys;

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM if it gets the guest past its firmware (to a DHCP request),
    /// else TCG. Nested KVM stops inside iPXE on some hosts.
    Auto,
    Kvm,
    /// QEMU's own translator: slow, works everywhere.
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

pub struct Vm {
    pub label: String,
    pub mac: String,
    pub console: PathBuf,
    pub firmware_log: PathBuf,
    pub qemu_log: PathBuf,
    pub accel: Accel,
    child: Option<Child>,
    pub started: Instant,
}

/// Settings shared by the lab's VMs.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub memory_mib: u32,
    pub dir: PathBuf,
}

impl Vm {
    /// Power on a VM named `label` with `mac` on tap `tap`, using `accel`
    /// (Kvm or Tcg).
    pub fn start(
        net: &LabNet,
        spec: &VmSpec,
        label: &str,
        mac: &str,
        tap: &str,
        accel: Accel,
    ) -> Result<Vm> {
        let qemu = crate::tools::find_tool("qemu-system-x86_64")?;
        let console = spec.dir.join(format!("{label}.console"));
        let firmware_log = spec.dir.join(format!("{label}.firmware"));
        let qemu_log = spec.dir.join(format!("{label}.qemu"));
        for f in [&console, &firmware_log] {
            // A restart (KVM fell back to TCG) starts a fresh console.
            let _ = std::fs::remove_file(f);
        }
        let machine = match accel {
            Accel::Kvm => "pc,accel=kvm",
            _ => "pc,accel=tcg",
        };
        let log = std::fs::File::create(&qemu_log)
            .map_err(|e| NfsrootError::io(format!("creating {}", qemu_log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| NfsrootError::io("duplicating a log descriptor", e))?;
        let mut cmd = net.command(&qemu)?;
        cmd.args(["-machine", machine, "-smp", "1", "-m"])
            .arg(spec.memory_mib.to_string())
            .args(["-nodefaults", "-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-chardev")
            .arg(format!("file,id=fw,path={}", firmware_log.display()))
            .args(["-device", "isa-debugcon,iobase=0x402,chardev=fw"])
            .arg("-netdev")
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"))
            .args(["-boot", "order=n", "-no-reboot"]);
        let child = sys::daemon_child(&mut cmd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| NfsrootError::Tool {
                tool: "qemu-system-x86_64".into(),
                message: e.to_string(),
            })?;
        Ok(Vm {
            label: label.to_string(),
            mac: mac.to_string(),
            console,
            firmware_log,
            qemu_log,
            accel,
            child: Some(child),
            started: Instant::now(),
        })
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Power off: SIGTERM (QEMU quits at once), SIGKILL after 3 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            sys::kill(child.id(), libc::SIGTERM);
            let t = Instant::now();
            while let Ok(None) = child.try_wait() {
                if t.elapsed() > Duration::from_secs(3) {
                    sys::kill(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// QEMU's own messages (errors, KVM trouble).
    pub fn qemu_messages(&self) -> String {
        std::fs::read_to_string(&self.qemu_log).unwrap_or_default()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// New complete lines of a file that grows (a console, a log), read from
/// where the last call stopped.
#[derive(Debug, Default)]
pub struct Tail {
    pos: u64,
    partial: String,
}

impl Tail {
    pub fn read(&mut self, path: &Path) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.pos += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_string).collect();
        self.partial = lines.pop().unwrap_or_default();
        lines
    }
}
