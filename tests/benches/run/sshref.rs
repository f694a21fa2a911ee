//! The reference tools of the run bench: pdsh, clush (ClusterShell), pdcp
//! and clush --copy over ssh, against one sshd started in a private
//! network namespace, where 127.0.0.1..N stand for N nodes (every address
//! of 127/8 is the namespace's loopback). Installed from Debian when
//! missing (a policy-rc.d keeps the package's sshd service from starting).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running sshd and what the clients need to reach it.
pub struct Refs {
    ns: String,
    dir: tempfile::TempDir,
    sshd: Child,
    key: PathBuf,
    /// pdsh is installed.
    pub pdsh: bool,
    /// clush is installed.
    pub clush: bool,
    /// pdcp is installed.
    pub pdcp: bool,
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// apt-get install the reference tools if any is missing.
fn install() -> Result<()> {
    if have("pdsh") && have("clush") && Path::new("/usr/sbin/sshd").exists() {
        return Ok(());
    }
    println!("installing pdsh, clustershell and openssh-server from Debian for the references");
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let made = !policy.exists();
    if made {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        std::process::Command::new("chmod")
            .args(["755"])
            .arg(policy)
            .status()?;
    }
    let st = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "pdsh",
            "clustershell",
            "openssh-server",
            "openssh-client",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    if made {
        let _ = std::fs::remove_file(policy);
    }
    if !st.map(|s| s.success()).unwrap_or(false) {
        bail!("apt-get install pdsh clustershell openssh-server failed");
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Refs {
    /// Install if needed, start sshd, and wait until it takes logins.
    pub fn start() -> Result<Refs> {
        install()?;
        let dir = tempfile::Builder::new().prefix("krg-sshref-").tempdir()?;
        let d = dir.path();
        let key = d.join("id");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join("host")))?;
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key))?;
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys"))?;
        let cfg = d.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port 22\nListenAddress 0.0.0.0\nHostKey {h}\nPidFile {p}\nAuthorizedKeysFile {a}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nMaxStartups 1024\nMaxSessions 1024\nLogLevel ERROR\nUseDNS no\n",
                h = d.join("host").display(),
                p = d.join("sshd.pid").display(),
                a = d.join("authorized_keys").display()
            ),
        )?;
        std::fs::create_dir_all("/run/sshd")?;
        let ns = format!("krgrun{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        let cleanup_ns = |e: anyhow::Error| {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            e
        };
        run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"])).map_err(cleanup_ns)?;
        let sshd = Command::new("ip")
            .args(["netns", "exec", &ns, "/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log"))?)
            .spawn()
            .map_err(|e| cleanup_ns(e.into()))?;
        let refs = Refs {
            ns,
            key,
            dir,
            sshd,
            pdsh: have("pdsh"),
            clush: have("clush"),
            pdcp: have("pdcp"),
        };
        let t = Instant::now();
        loop {
            let ok = refs
                .ssh_one()
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(refs);
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!(
                    "sshd does not take logins: {}",
                    std::fs::read_to_string(refs.dir.path().join("sshd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ssh_opts(&self, master: bool) -> String {
        let mut o = format!(
            "-i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
            self.key.display()
        );
        if master {
            o.push_str(&format!(
                " -o ControlMaster=auto -o ControlPersist=120 -o ControlPath={}/cm-%h",
                self.dir.path().display()
            ));
        }
        o
    }

    fn in_ns(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]);
        c
    }

    fn ssh_one(&self) -> Command {
        let mut c = self.in_ns();
        c.arg("sh")
            .arg("-c")
            .arg(format!("ssh {} root@127.0.0.1 true", self.ssh_opts(false)));
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    }

    fn hosts(n: u32) -> String {
        format!("127.0.0.[1-{n}]")
    }

    /// `pdsh -w 127.0.0.[1-n] cmd` (with ssh ControlMaster connections when `master`).
    pub fn pdsh(&self, n: u32, cmd: &str, master: bool) -> Command {
        let mut c = self.in_ns();
        c.args([
            "pdsh",
            "-R",
            "ssh",
            "-f",
            "1024",
            "-w",
            &Self::hosts(n),
            cmd,
        ])
        .env(
            "PDSH_SSH_ARGS",
            format!("{} -l%u %h", self.ssh_opts(master)),
        )
        .env("PDSH_SSH_ARGS_APPEND", "");
        c
    }

    /// `clush -w 127.0.0.[1-n] cmd`.
    pub fn clush(&self, n: u32, cmd: &str) -> Command {
        let mut c = self.in_ns();
        c.args([
            "clush",
            "-f",
            "1024",
            "-o",
            &self.ssh_opts(false),
            "-w",
            &Self::hosts(n),
            cmd,
        ]);
        c
    }

    /// `clush --copy file --dest dir`.
    pub fn clush_copy(&self, n: u32, file: &Path, dest: &Path) -> Command {
        let mut c = self.in_ns();
        c.args([
            "clush",
            "-f",
            "1024",
            "-o",
            &self.ssh_opts(false),
            "-w",
            &Self::hosts(n),
            "--copy",
        ])
        .arg(file)
        .arg("--dest")
        .arg(dest);
        c
    }

    /// `pdcp -w … file dir`.
    pub fn pdcp(&self, n: u32, file: &Path, dest: &Path) -> Command {
        let mut c = self.in_ns();
        c.args(["pdcp", "-R", "ssh", "-f", "1024", "-w", &Self::hosts(n)])
            .arg(file)
            .arg(dest)
            .env("PDSH_SSH_ARGS", format!("{} -l%u %h", self.ssh_opts(false)));
        c
    }
}

impl Drop for Refs {
    fn drop(&mut self) {
        // ssh ControlMaster processes outlive their clients: end those
        // whose command line names our control directory, by PID.
        let mark = self.dir.path().display().to_string();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if pid != self.sshd.id() as i32 && String::from_utf8_lossy(&cmdline).contains(&mark)
                {
                    // SAFETY: kill takes a PID and a signal.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}
