//! `nfsroot serve`: run the boot services of a rendered description in the
//! foreground — dnsmasq (DHCP + TFTP, from `dhcp/dnsmasq.conf`) and
//! NFS-Ganesha (NFS, from `nfs/ganesha.conf`, with rpcbind when none runs) —
//! forwarding their logs line by line, prefixed with the daemon's name,
//! until SIGINT/SIGTERM or until one of them stops. A lab or a test needs
//! this; a site runs its own daemons with the same rendered files.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::desc::Description;
use crate::error::{NfsrootError, Result};
use crate::render::{self, DhcpServer, RenderOptions};
use crate::tools::find_tool;
use crate::{output, sys};

/// The line `serve` prints once every daemon answers; `boot-test` waits for it.
pub const READY: &str = "nfsroot serve: ready";

/// Where rpcbind listens for registrations.
const RPCBIND_SOCKET: &str = "/run/rpcbind.sock";

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The rendered tree (`render --dhcp dnsmasq --out DIR`).
    pub out: PathBuf,
    /// Run inside this network namespace (`ip netns add NAME`).
    pub netns: Option<String>,
    /// A mount namespace of its own with an empty /run (its own rpcbind).
    pub private_run: bool,
}

/// The rendered files serve runs from, checked to be current.
#[derive(Debug, Clone)]
pub struct Served {
    pub dnsmasq_conf: PathBuf,
    pub ganesha_conf: PathBuf,
    /// Run-time files (pid files, leases), under `<out>/serve`.
    pub state: PathBuf,
}

/// Check that `out` holds the current dnsmasq rendering of `d` and that
/// the TFTP server will serve the rendered tree.
pub fn check_rendered(d: &Description, out: &Path) -> Result<Served> {
    let plan = render::plan(
        d,
        &RenderOptions {
            out: out.to_path_buf(),
            dhcp: DhcpServer::Dnsmasq,
        },
    );
    let (_, o) = output::diff(&plan, out, &d.image.root)?;
    if !o.is_noop() {
        return Err(NfsrootError::Image(format!(
            "{} is not the current rendering of the description ({} files missing, {} differ): run `nfsroot render --dhcp dnsmasq` first",
            out.display(),
            o.created.len(),
            o.changed.len()
        )));
    }
    // dnsmasq serves server.tftp_root: it must be the rendered tree.
    let probe = "ipxe/boot.ipxe";
    let rendered = std::fs::read(out.join("tftp").join(probe)).ok();
    let served = std::fs::read(d.server.tftp_root.join(probe)).ok();
    if rendered.is_none() || rendered != served {
        return Err(NfsrootError::Image(format!(
            "server.tftp_root {} does not hold the rendered TFTP tree {}: set tftp_root to it, or bind-mount it there",
            d.server.tftp_root.display(),
            out.join("tftp").display()
        )));
    }
    Ok(Served {
        dnsmasq_conf: out.join("dhcp/dnsmasq.conf"),
        ganesha_conf: out.join(render::GANESHA_CONF),
        state: out.join("serve"),
    })
}

/// One daemon run by serve.
struct Daemon {
    name: &'static str,
    child: Child,
}

/// Start `cmd` with its output forwarded to `tx` as (name, line).
fn spawn(
    name: &'static str,
    cmd: &mut Command,
    tx: &mpsc::Sender<(&'static str, String)>,
) -> Result<Daemon> {
    let mut child = sys::daemon_child(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NfsrootError::Tool {
            tool: name.into(),
            message: e.to_string(),
        })?;
    let outs: [Option<Box<dyn std::io::Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ];
    for r in outs.into_iter().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if tx.send((name, line)).is_err() {
                    break;
                }
            }
        });
    }
    Ok(Daemon { name, child })
}

fn rpcbind_running() -> bool {
    UnixStream::connect(RPCBIND_SOCKET).is_ok()
}

/// Run the services until a termination signal or until one stops.
/// Log lines go to `log` (the terminal, or a file a test reads).
pub fn run(d: &Description, opts: &ServeOptions, log: &mut dyn Write) -> Result<()> {
    // Namespaces first, while this process has one thread.
    if let Some(ns) = &opts.netns {
        sys::enter_netns(ns)?;
    }
    if opts.private_run {
        sys::private_run()?;
    }
    sys::block_term_signals();
    let served = check_rendered(d, &opts.out)?;
    let tools = (
        find_tool("dnsmasq")?,
        find_tool("ganesha.nfsd")?,
        find_tool("rpcbind")?,
    );
    for dir in [&served.state, &opts.out.join(render::GANESHA_RECOVERY)] {
        std::fs::create_dir_all(dir)
            .map_err(|e| NfsrootError::io(format!("creating {}", dir.display()), e))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            sys::wait_term_signal();
            stop.store(true, Ordering::SeqCst);
        });
    }
    let (tx, rx) = mpsc::channel();
    let mut daemons = Vec::new();
    let result = start_all(&served, &tools, &tx, &mut daemons, log)
        .and_then(|()| supervise(&mut daemons, &rx, &stop, log));
    stop_all(&mut daemons, &rx, log);
    result
}

fn say(log: &mut dyn Write, line: &str) {
    let _ = writeln!(log, "{line}");
    let _ = log.flush();
}

fn start_all(
    s: &Served,
    (dnsmasq, ganesha, rpcbind): &(PathBuf, PathBuf, PathBuf),
    tx: &mpsc::Sender<(&'static str, String)>,
    daemons: &mut Vec<Daemon>,
    log: &mut dyn Write,
) -> Result<()> {
    if rpcbind_running() {
        say(log, "nfsroot serve: using the rpcbind already running");
    } else {
        daemons.push(spawn("rpcbind", Command::new(rpcbind).arg("-f"), tx)?);
        let t = Instant::now();
        while !rpcbind_running() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(NfsrootError::Tool {
                    tool: "rpcbind".into(),
                    message: format!("{RPCBIND_SOCKET} did not appear within 10 s"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut g = Command::new(ganesha);
    g.arg("-F")
        .args(["-L", "STDERR", "-N", "NIV_EVENT", "-f"])
        .arg(&s.ganesha_conf)
        .arg("-p")
        .arg(s.state.join("ganesha.pid"));
    daemons.push(spawn("ganesha", &mut g, tx)?);
    let mut m = Command::new(dnsmasq);
    m.arg("--keep-in-foreground")
        .arg(format!("--conf-file={}", s.dnsmasq_conf.display()))
        .arg("--log-facility=-")
        .arg(format!(
            "--pid-file={}",
            s.state.join("dnsmasq.pid").display()
        ))
        .arg(format!(
            "--dhcp-leasefile={}",
            s.state.join("dnsmasq.leases").display()
        ));
    daemons.push(spawn("dnsmasq", &mut m, tx)?);
    Ok(())
}

/// Forward logs; announce readiness once ganesha and dnsmasq said they
/// serve; return when asked to stop (Ok) or when a daemon stops (Err).
fn supervise(
    daemons: &mut [Daemon],
    rx: &mpsc::Receiver<(&'static str, String)>,
    stop: &AtomicBool,
    log: &mut dyn Write,
) -> Result<()> {
    let (mut nfs_ready, mut tftp_ready, mut announced) = (false, false, false);
    let started = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            say(log, "nfsroot serve: stopping");
            return Ok(());
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((name, line)) => {
                nfs_ready |= name == "ganesha" && line.contains("NFS SERVER INITIALIZED");
                tftp_ready |= name == "dnsmasq" && line.contains("TFTP root is");
                say(log, &format!("[{name}] {line}"));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if nfs_ready && tftp_ready && !announced {
            announced = true;
            let pids: Vec<String> = daemons
                .iter()
                .map(|d| format!("{} pid {}", d.name, d.child.id()))
                .collect();
            say(log, &format!("{READY} ({})", pids.join(", ")));
        }
        if !announced && started.elapsed() > Duration::from_secs(120) {
            return Err(NfsrootError::Tool {
                tool: "nfsroot serve".into(),
                message: format!(
                    "not ready after 120 s (NFS {}, TFTP {})",
                    if nfs_ready { "up" } else { "not up" },
                    if tftp_ready { "up" } else { "not up" }
                ),
            });
        }
        for d in daemons.iter_mut() {
            if let Ok(Some(status)) = d.child.try_wait() {
                // Let the reader threads pass on its last words.
                std::thread::sleep(Duration::from_millis(300));
                while let Ok((name, line)) = rx.try_recv() {
                    say(log, &format!("[{name}] {line}"));
                }
                return Err(NfsrootError::Tool {
                    tool: d.name.into(),
                    message: format!("exited ({status}); its log is above"),
                });
            }
        }
    }
}

/// SIGTERM to every daemon still running, in reverse order of start; SIGKILL
/// after 5 s.
fn stop_all(
    daemons: &mut Vec<Daemon>,
    rx: &mpsc::Receiver<(&'static str, String)>,
    log: &mut dyn Write,
) {
    for d in daemons.iter_mut().rev() {
        if let Ok(None) = d.child.try_wait() {
            sys::kill(d.child.id(), libc::SIGTERM);
        }
    }
    let t = Instant::now();
    for d in daemons.iter_mut().rev() {
        while let Ok(None) = d.child.try_wait() {
            if t.elapsed() > Duration::from_secs(5) {
                sys::kill(d.child.id(), libc::SIGKILL);
                let _ = d.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    while let Ok((name, line)) = rx.try_recv() {
        say(log, &format!("[{name}] {line}"));
    }
    daemons.clear();
}
