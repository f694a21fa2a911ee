//! Following a batch of VM boots: power them on (KVM first when asked, TCG
//! when KVM stalls), read the server's log, the consoles and the host
//! krgd's node table every quarter second, add each node to the cluster
//! once its krgd is present, and end each boot with an outcome.

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::steps::{self, Console, Event, Outcome, Step, Timeline};
use super::vm::{Accel, Tail};
use super::{BootLab, BootRequest, NodeRow, KVM_PROBE};
use crate::desc::{normalise_mac, Node};
use crate::error::Result;

/// How one VM's boot went.
#[derive(Debug, Clone)]
pub struct BootReport {
    pub label: String,
    pub mac: String,
    /// The described node with this MAC, if any: (name, node_id, ip).
    pub node: Option<(String, u32, String)>,
    pub accel: Accel,
    pub outcome: Outcome,
    pub timeline: Timeline,
    pub console: PathBuf,
    /// The node as the host's `krgadm nodes status` last showed it.
    pub host_row: Option<NodeRow>,
}

impl fmt::Display for BootReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self
            .node
            .as_ref()
            .map(|(_, id, _)| format!(", node_id {id}"))
            .unwrap_or_default();
        write!(
            f,
            "{} ({}{id}, {}): ",
            self.label,
            self.mac,
            self.accel.name()
        )?;
        match &self.outcome {
            Outcome::Joined => write!(f, "online — {}", self.timeline.summary()),
            Outcome::NoAddress(line) => write!(f, "no address — {line}"),
            Outcome::IdTaken(line) => write!(f, "refused — {line}"),
            Outcome::Failed { step, why } => {
                write!(f, "failed at {step} — {why}")?;
                let done = self.timeline.summary();
                if !done.is_empty() {
                    write!(f, " (done: {done})")?;
                }
                write!(f, "; console {}", self.console.display())
            }
        }
    }
}

/// One boot being followed.
struct Run {
    req: BootRequest,
    mac: String,
    node: Option<Node>,
    vm: Option<usize>,
    accel: Accel,
    started: Instant,
    tl: Timeline,
    console: Tail,
    recent: VecDeque<String>,
    outcome: Option<Outcome>,
    saw_dhcp: bool,
    no_address: Option<(Instant, String)>,
    last_tftp: Option<String>,
    added: bool,
    host_row: Option<NodeRow>,
    /// The console line that showed the guest's network card stalled.
    nic_stalled: Option<String>,
    /// Times the VM was powered on again after such a stall (at most once).
    restarts: u32,
}

impl Run {
    fn at(&self) -> Duration {
        self.started.elapsed()
    }

    fn ip(&self) -> Option<String> {
        self.node.as_ref().map(|n| n.ip.to_string())
    }

    fn mark(&mut self, step: Step, progress: &mut dyn FnMut(&str)) {
        if !self.tl.has(step) {
            let at = self.at();
            self.tl.mark(step, at);
            progress(&format!(
                "{}: {step} done after {:.1} s",
                self.req.label,
                at.as_secs_f64()
            ));
        }
    }
}

pub(super) fn follow(
    lab: &mut BootLab,
    reqs: &[BootRequest],
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BootReport>> {
    let mut server = Tail::default();
    server.read(&lab.serve_log); // what came before this batch
    let mut runs: Vec<Run> = reqs
        .iter()
        .map(|r| {
            let mac = normalise_mac(&r.mac).unwrap_or_else(|| r.mac.clone());
            let node = lab
                .d
                .nodes
                .iter()
                .find(|n| normalise_mac(&n.mac).as_deref() == Some(mac.as_str()))
                .cloned();
            Run {
                req: r.clone(),
                mac,
                node,
                vm: None,
                accel: Accel::Tcg,
                started: Instant::now(),
                tl: Timeline::default(),
                console: Tail::default(),
                recent: VecDeque::new(),
                outcome: None,
                saw_dhcp: false,
                no_address: None,
                last_tftp: None,
                added: false,
                host_row: None,
                nic_stalled: None,
                restarts: 0,
            }
        })
        .collect();
    let mut probing = match (lab.accel, lab.opts.accel) {
        (Some(_), _) | (None, Accel::Kvm | Accel::Tcg) => false,
        (None, Accel::Auto) => !runs.is_empty(),
    };
    if lab.accel.is_none() && !probing {
        lab.accel = Some(lab.opts.accel);
    }
    if probing {
        progress("trying KVM first (falls back to TCG if the guest stalls in its firmware)");
        power_on(lab, &mut runs[0], Accel::Kvm)?;
    } else {
        let accel = lab.accel.unwrap_or(Accel::Tcg);
        for r in runs.iter_mut() {
            power_on(lab, r, accel)?;
        }
    }
    let mut last_status = Instant::now();
    while runs.iter().any(|r| r.outcome.is_none()) {
        std::thread::sleep(Duration::from_millis(250));
        for line in server.read(&lab.serve_log) {
            if let Some(ev) = steps::server_event(&line) {
                on_server_event(&mut runs, ev, &lab.d.boot.initrd, progress);
            }
        }
        for r in runs.iter_mut() {
            read_console(lab, r, progress);
        }
        if probing {
            let first = &runs[0];
            if first.saw_dhcp || first.tl.has(Step::Dhcp) {
                probing = false;
                lab.accel = Some(Accel::Kvm);
                progress("KVM got past the firmware: using KVM");
                for r in runs.iter_mut().skip(1) {
                    power_on(lab, r, Accel::Kvm)?;
                }
            } else if first.at() > KVM_PROBE {
                probing = false;
                lab.accel = Some(Accel::Tcg);
                progress(&format!(
                    "KVM: no DHCP request within {} s (nested KVM stalls in the firmware here): using TCG",
                    KVM_PROBE.as_secs()
                ));
                if let Some(i) = runs[0].vm {
                    lab.vms[i].stop();
                }
                for r in runs.iter_mut() {
                    power_on(lab, r, Accel::Tcg)?;
                }
            }
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            poll_host(lab, &mut runs, progress);
        }
        for r in runs.iter_mut() {
            settle(lab, r, progress);
        }
    }
    Ok(runs
        .into_iter()
        .map(|r| BootReport {
            console: lab.opts.dir.join(format!("{}.console", r.req.label)),
            label: r.req.label,
            mac: r.mac,
            node: r.node.map(|n| (n.name, n.node_id, n.ip.to_string())),
            accel: r.accel,
            outcome: r.outcome.unwrap_or(Outcome::Failed {
                step: Step::Dhcp,
                why: "not followed".into(),
            }),
            timeline: r.tl,
            host_row: r.host_row,
        })
        .collect())
}

/// (Re)start the VM of `r` from power-on.
fn power_on(lab: &mut BootLab, r: &mut Run, accel: Accel) -> Result<()> {
    r.vm = Some(lab.start_vm(&r.req.label, &r.mac, accel)?);
    r.accel = accel;
    r.started = Instant::now();
    r.tl = Timeline::default();
    r.console = Tail::default();
    r.recent.clear();
    r.saw_dhcp = false;
    r.no_address = None;
    r.last_tftp = None;
    r.nic_stalled = None;
    Ok(())
}

fn on_server_event(runs: &mut [Run], ev: Event, initrd: &str, progress: &mut dyn FnMut(&str)) {
    let by_mac = |runs: &mut [Run], mac: &str| -> Option<usize> {
        runs.iter().position(|r| r.vm.is_some() && r.mac == mac)
    };
    match ev {
        Event::Discover { mac } => {
            if let Some(i) = by_mac(runs, &mac) {
                runs[i].saw_dhcp = true;
            }
        }
        Event::NoAddress { mac } => {
            if let Some(i) = by_mac(runs, &mac) {
                let r = &mut runs[i];
                r.saw_dhcp = true;
                if r.no_address.is_none() {
                    let line = format!("dnsmasq: DHCPDISCOVER from {mac}: no address available");
                    progress(&format!("{}: {line}", r.req.label));
                    r.no_address = Some((Instant::now(), line));
                }
            }
        }
        Event::DhcpAck { mac, .. } => {
            if let Some(i) = by_mac(runs, &mac) {
                runs[i].saw_dhcp = true;
                runs[i].mark(Step::Dhcp, progress);
            }
        }
        Event::TftpSent { path, ip } => {
            if let Some(r) = runs
                .iter_mut()
                .find(|r| r.vm.is_some() && r.ip().as_deref() == Some(ip.as_str()))
            {
                r.last_tftp = Some(path.clone());
                if path.ends_with(&format!("/{}", initrd.trim_start_matches('/'))) {
                    r.mark(Step::Tftp, progress);
                }
            }
        }
        Event::TftpError { ip, line } => {
            // Without a client address, it concerns whoever is loading files now.
            let concerned = |r: &Run| match &ip {
                Some(ip) => r.ip().as_deref() == Some(ip.as_str()),
                None => r.tl.has(Step::Dhcp) && !r.tl.has(Step::Tftp),
            };
            for r in runs.iter_mut().filter(|r| r.vm.is_some() && concerned(r)) {
                let why = format!("dnsmasq: {line}");
                // A file the boot needs is not there: the boot cannot go on.
                let fatal = ["not found", "cannot", "Permission denied"]
                    .iter()
                    .any(|w| line.contains(w));
                if fatal && r.outcome.is_none() {
                    progress(&format!("{}: {why}", r.req.label));
                    r.outcome = Some(Outcome::Failed {
                        step: Step::Tftp,
                        why: why.clone(),
                    });
                }
                r.tl.trouble = Some(why);
            }
        }
    }
}

fn read_console(lab: &BootLab, r: &mut Run, progress: &mut dyn FnMut(&str)) {
    let Some(i) = r.vm else { return };
    for raw in r.console.read(&lab.vms[i].console) {
        let line = steps::plain(&raw);
        if line.trim().is_empty() {
            continue;
        }
        match steps::console_event(&line) {
            Some(Console::Kernel) => r.mark(Step::Kernel, progress),
            Some(Console::RootMounted) => r.mark(Step::NfsRoot, progress),
            Some(Console::KrgdStarted) if r.tl.krgd_started.is_none() => {
                r.tl.krgd_started = Some(r.at());
            }
            Some(Console::IdTaken(l)) if r.outcome.is_none() => {
                progress(&format!("{}: krgd refused: {l}", r.req.label));
                r.outcome = Some(Outcome::IdTaken(l));
            }
            Some(Console::Trouble(l)) => r.tl.trouble = Some(l),
            Some(Console::NicStalled(l)) if r.nic_stalled.is_none() => r.nic_stalled = Some(l),
            _ => {}
        }
        r.recent.push_back(line);
        if r.recent.len() > 3 {
            r.recent.pop_front();
        }
    }
}

/// Ask the host krgd which nodes it sees; add present ones, note online ones.
fn poll_host(lab: &BootLab, runs: &mut [Run], progress: &mut dyn FnMut(&str)) {
    let waiting = runs
        .iter()
        .any(|r| r.outcome.is_none() && r.node.is_some() && r.vm.is_some());
    if !waiting {
        return;
    }
    let Ok(rows) = lab.host.nodes() else { return };
    let port = lab.d.krgd.port;
    for r in runs
        .iter_mut()
        .filter(|r| r.outcome.is_none() && r.vm.is_some())
    {
        let Some(node) = r.node.clone() else { continue };
        if node.node_id == lab.host.node_id {
            continue; // the host holds this id: the node can only be refused
        }
        let addr = format!("{}:{port}", node.ip);
        let Some(row) = rows
            .iter()
            .find(|x| x.id == node.node_id && x.address == addr)
        else {
            continue;
        };
        r.host_row = Some(row.clone());
        match row.state.as_str() {
            "present" if !r.added => {
                if r.tl.krgd_started.is_none() {
                    r.tl.krgd_started = Some(r.at());
                }
                let id = node.node_id.to_string();
                match lab.host.krgadm(&["nodes", "add", "-n", &id]) {
                    Ok(_) => {
                        r.added = true;
                        progress(&format!(
                            "{}: present; krgadm nodes add -n {id}",
                            r.req.label
                        ));
                    }
                    Err(e) => r.tl.trouble = Some(e.to_string()),
                }
            }
            "online" => {
                r.mark(Step::Krgd, progress);
                r.outcome = Some(Outcome::Joined);
            }
            _ => {}
        }
    }
}

/// Decide outcomes that come from waiting: no address, a stopped VM, time out.
fn settle(lab: &mut BootLab, r: &mut Run, progress: &mut dyn FnMut(&str)) {
    let Some(i) = r.vm else { return };
    if r.outcome.is_none() && r.restarts == 0 {
        if let Some(line) = r.nic_stalled.take() {
            // An emulated network card that stops sending (seen under TCG
            // on a loaded host) is the emulator's fault: boot once more.
            progress(&format!(
                "{}: the VM's network card stalled ({line}): powering it on again",
                r.req.label
            ));
            lab.vms[i].stop();
            r.restarts += 1;
            let accel = r.accel;
            if let Err(e) = power_on(lab, r, accel) {
                r.outcome = Some(failure(r, Some(format!("cannot power it on again: {e}"))));
            }
            return;
        }
    }
    if r.outcome.is_none() {
        if let Some((t, line)) = &r.no_address {
            // iPXE asks again for a while; no answer in 10 s settles it.
            if t.elapsed() > Duration::from_secs(10) && !r.tl.has(Step::Dhcp) {
                r.outcome = Some(Outcome::NoAddress(line.clone()));
            }
        }
    }
    if r.outcome.is_none() && !lab.vms[i].running() {
        let qemu = lab.vms[i].qemu_messages();
        r.outcome = Some(failure(r, Some(format!("the VM stopped: {}", qemu.trim()))));
    }
    if r.outcome.is_none() && r.at() > lab.opts.timeout {
        r.outcome = Some(failure(r, None));
    }
    match &r.outcome {
        None | Some(Outcome::Joined) => {}
        Some(o) => {
            if lab.vms[i].running() {
                if let Outcome::Failed { step, .. } = o {
                    progress(&format!("{}: failed at {step}", r.req.label));
                }
                lab.vms[i].stop();
            }
        }
    }
}

fn failure(r: &Run, stopped: Option<String>) -> Outcome {
    let step = r.tl.next_step().unwrap_or(Step::Krgd);
    let recent: Vec<&str> = r.recent.iter().map(String::as_str).collect();
    let mut why = match step {
        Step::Dhcp if r.saw_dhcp => {
            "DHCP requests reached the server, no address was acknowledged".to_string()
        }
        Step::Dhcp => {
            "no DHCP request reached the server (the firmware log shows how far it got)".to_string()
        }
        Step::Tftp => format!(
            "the initrd was not sent (last file sent: {})",
            r.last_tftp.as_deref().unwrap_or("none")
        ),
        Step::Kernel => {
            "no kernel banner on the console (is console=ttyS0 in [boot] append?)".to_string()
        }
        Step::NfsRoot | Step::Krgd => match &r.host_row {
            Some(row) => format!("the host sees node {} {}", row.id, row.state),
            None if r.tl.krgd_started.is_some() => {
                "krgd started but the host does not see it".to_string()
            }
            None => "the host does not see its krgd".to_string(),
        },
    };
    if let Some(t) = &r.tl.trouble {
        why = format!("{why}; {t}");
    }
    if let Some(s) = stopped {
        why = format!("{s}; {why}");
    } else {
        why = format!("{why} (after {:.0} s)", r.at().as_secs_f64());
    }
    if !recent.is_empty() && matches!(step, Step::NfsRoot | Step::Krgd) {
        why = format!("{why}; console: {}", recent.join(" / "));
    }
    Outcome::Failed { step, why }
}
