//! Reading a network boot from the outside: the server's log lines (dnsmasq
//! DHCP and TFTP, forwarded by `nfsroot serve`), the VM's serial console and
//! the host krgd's view of the node become one timeline per node — DHCP,
//! TFTP, kernel, NFS root, krgd — and, when a boot stops, the step it
//! stopped at with the line that shows why.

use std::fmt;
use std::time::Duration;

/// The steps of a diskless boot, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// The DHCP server acknowledged an address for the MAC.
    Dhcp,
    /// The boot script, the node's menu, the kernel and the initrd were sent.
    Tftp,
    /// The kernel runs (its banner is on the console).
    Kernel,
    /// The initramfs mounted the NFS root and started systemd from it.
    NfsRoot,
    /// krgd runs and the node is online in the host's cluster.
    Krgd,
}

pub const STEPS: [Step; 5] = [
    Step::Dhcp,
    Step::Tftp,
    Step::Kernel,
    Step::NfsRoot,
    Step::Krgd,
];

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Dhcp => "DHCP",
            Step::Tftp => "TFTP",
            Step::Kernel => "kernel",
            Step::NfsRoot => "NFS root",
            Step::Krgd => "krgd",
        })
    }
}

/// Something a log line says about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// DHCPDISCOVER seen from this MAC.
    Discover { mac: String },
    /// The server has no address for this MAC (not in the description).
    NoAddress { mac: String },
    /// An address was acknowledged.
    DhcpAck { mac: String, ip: String },
    /// A file went out by TFTP.
    TftpSent { path: String, ip: String },
    /// The TFTP server refused or could not find a file; dnsmasq names the
    /// client for a missing file, not for an unreadable one.
    TftpError { ip: Option<String>, line: String },
}

/// Strip ANSI colour sequences and carriage returns (systemd and krgd
/// colour the console).
pub fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters, then one final byte in @..~.
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// The words of a dnsmasq line after its `dnsmasq-xxx[pid]: ` tag.
fn dnsmasq_words<'a>(line: &'a str, tag: &str) -> Option<Vec<&'a str>> {
    let at = line.find(tag)?;
    let rest = &line[at + tag.len()..];
    let rest = rest.split_once("]: ").map(|(_, r)| r).unwrap_or(rest);
    Some(rest.split_whitespace().collect())
}

/// Read one line of `nfsroot serve`'s log.
pub fn server_event(line: &str) -> Option<Event> {
    if let Some(w) = dnsmasq_words(line, "dnsmasq-dhcp[") {
        let kind = w.first()?;
        if kind.starts_with("DHCPDISCOVER(") {
            let mac = w.get(1)?.to_ascii_lowercase();
            let rest = w.get(2..).unwrap_or_default().join(" ");
            return Some(if rest.contains("no address available") {
                Event::NoAddress { mac }
            } else {
                Event::Discover { mac }
            });
        }
        if kind.starts_with("DHCPACK(") {
            // DHCPACK(iface) IP MAC [name]
            return Some(Event::DhcpAck {
                ip: w.get(1)?.to_string(),
                mac: w.get(2)?.to_ascii_lowercase(),
            });
        }
        return None;
    }
    if let Some(w) = dnsmasq_words(line, "dnsmasq-tftp[") {
        if w.first() == Some(&"sent") && w.get(2) == Some(&"to") {
            return Some(Event::TftpSent {
                path: w.get(1)?.to_string(),
                ip: w.get(3)?.to_string(),
            });
        }
        // "file /x not found for 10.0.0.11", "cannot access /x: Permission denied",
        // "failed sending /x to 10.0.0.11"
        let ip = w
            .last()
            .filter(|x| x.parse::<std::net::Ipv4Addr>().is_ok())
            .map(|x| x.to_string());
        if w.iter()
            .any(|x| ["not", "cannot", "error", "failed"].contains(x))
        {
            return Some(Event::TftpError {
                ip,
                line: w.join(" "),
            });
        }
    }
    None
}

/// What the console says (one plain line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    Kernel,
    /// systemd runs from the root file system.
    RootMounted,
    KrgdStarted,
    /// krgd was refused because its node id belongs to another krgd.
    IdTaken(String),
    /// A line that explains a stop: NFS mount errors, a panic, a failed krgd.
    Trouble(String),
    /// The guest's network card stopped sending (its kernel's transmit
    /// watchdog fired): the emulator's fault, not the node's.
    NicStalled(String),
}

pub fn console_event(line: &str) -> Option<Console> {
    let l = line.trim();
    if l.contains("Linux version ") {
        return Some(Console::Kernel);
    }
    if l.starts_with("Welcome to ") || l.contains("systemd[1]: systemd ") {
        return Some(Console::RootMounted);
    }
    if l.contains("Started krgd.service") {
        return Some(Console::KrgdStarted);
    }
    if l.contains("is already taken by the krgd at") {
        return Some(Console::IdTaken(l.to_string()));
    }
    if l.contains("NETDEV WATCHDOG") || l.contains("TX timeout on queue") {
        return Some(Console::NicStalled(l.to_string()));
    }
    let trouble = [
        "Kernel panic",
        "nfsmount:",
        "Retrying nfs mount",
        "Unable to mount root",
        "Failed to start krgd",
        "krgd: ",
        "(initramfs)",
        "IP-Config: no response",
    ];
    if trouble.iter().any(|t| l.contains(t)) && !l.contains("krgd starting") {
        return Some(Console::Trouble(l.to_string()));
    }
    None
}

/// How a boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Online in the host's cluster.
    Joined,
    /// The server gave the MAC no address.
    NoAddress(String),
    /// Its krgd was refused: another krgd holds its node id.
    IdTaken(String),
    /// Stopped (or out of time) at a step.
    Failed { step: Step, why: String },
}

/// The timeline of one node's boot, from power-on.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// When each step was seen done, from power-on.
    pub done: Vec<(Step, Duration)>,
    /// The last line that explains trouble, if any.
    pub trouble: Option<String>,
    /// krgd running (service started or the node present to the host).
    pub krgd_started: Option<Duration>,
}

impl Timeline {
    pub fn mark(&mut self, step: Step, at: Duration) {
        if !self.has(step) {
            self.done.push((step, at));
            self.done.sort();
        }
    }

    pub fn has(&self, step: Step) -> bool {
        self.done.iter().any(|(s, _)| *s == step)
    }

    pub fn at(&self, step: Step) -> Option<Duration> {
        self.done.iter().find(|(s, _)| *s == step).map(|(_, t)| *t)
    }

    /// The first step not done.
    pub fn next_step(&self) -> Option<Step> {
        STEPS.into_iter().find(|s| !self.has(*s))
    }

    /// "DHCP 12.1 s → TFTP 30.2 s → ..." for the steps done.
    pub fn summary(&self) -> String {
        STEPS
            .iter()
            .filter_map(|s| {
                self.at(*s).map(|t| {
                    let name = if *s == Step::Krgd {
                        "krgd online".to_string()
                    } else if *s == Step::NfsRoot {
                        "root mounted".to_string()
                    } else {
                        s.to_string()
                    };
                    format!("{name} {:.1} s", t.as_secs_f64())
                })
            })
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsmasq_lines_become_events() {
        let e = server_event(
            "[dnsmasq] dnsmasq-dhcp[5718]: DHCPACK(krgbr0) 10.78.0.11 52:54:00:78:00:11 node1",
        );
        assert_eq!(
            e,
            Some(Event::DhcpAck {
                mac: "52:54:00:78:00:11".into(),
                ip: "10.78.0.11".into()
            })
        );
        let e = server_event(
            "[dnsmasq] dnsmasq-dhcp[5718]: DHCPDISCOVER(krgbr0) 52:54:00:78:00:99 no address available",
        );
        assert_eq!(
            e,
            Some(Event::NoAddress {
                mac: "52:54:00:78:00:99".into()
            })
        );
        let e =
            server_event("[dnsmasq] dnsmasq-dhcp[5718]: DHCPDISCOVER(krgbr0) 52:54:00:78:00:11 ");
        assert!(matches!(e, Some(Event::Discover { .. })), "{e:?}");
        let e = server_event(
            "[dnsmasq] dnsmasq-tftp[5718]: sent /tmp/out/tftp/krg/initrd.img to 10.78.0.11",
        );
        assert_eq!(
            e,
            Some(Event::TftpSent {
                path: "/tmp/out/tftp/krg/initrd.img".into(),
                ip: "10.78.0.11".into()
            })
        );
        let e = server_event(
            "[dnsmasq] dnsmasq-tftp[5718]: file /tmp/out/tftp/krg/vmlinuz not found for 10.78.0.11",
        );
        assert!(
            matches!(&e, Some(Event::TftpError { ip: Some(ip), .. }) if ip == "10.78.0.11"),
            "{e:?}"
        );
        let e = server_event(
            "[dnsmasq] dnsmasq-tftp[5718]: cannot access /tmp/out/tftp/krg/vmlinuz: Permission denied",
        );
        assert!(
            matches!(&e, Some(Event::TftpError { ip: None, line }) if line.contains("Permission denied")),
            "{e:?}"
        );
        assert_eq!(server_event("[ganesha] NFS SERVER INITIALIZED"), None);
    }

    #[test]
    fn console_lines_become_events() {
        let colour = "[  \u{1b}[0;32mOK  \u{1b}[0m] Started \u{1b}[0;1;39mkrgd.service\u{1b}[0m - krg node daemon.\r";
        assert_eq!(console_event(&plain(colour)), Some(Console::KrgdStarted));
        assert_eq!(
            console_event("[    0.000000] Linux version 6.1.0-50-amd64 (debian-kernel@...)"),
            Some(Console::Kernel)
        );
        assert_eq!(
            console_event("Welcome to Debian GNU/Linux 12 (bookworm)!"),
            Some(Console::RootMounted)
        );
        let taken = "krgd: configuration: node id 3 is already taken by the krgd at 10.78.0.1:7600";
        assert_eq!(console_event(taken), Some(Console::IdTaken(taken.into())));
        assert!(matches!(
            console_event("nfsmount: can't parse IP address"),
            Some(Console::Trouble(_))
        ));
        assert_eq!(
            console_event("[  106.4] krgd[237]: INFO krgd starting node=1"),
            None
        );
        let stalled = "[  388.368297] virtio_net virtio0 ens2: NETDEV WATCHDOG: CPU: 0: transmit queue 0 timed out 232396 ms";
        assert_eq!(
            console_event(stalled),
            Some(Console::NicStalled(stalled.into()))
        );
    }

    #[test]
    fn timeline_orders_and_summarises() {
        let mut t = Timeline::default();
        t.mark(Step::Kernel, Duration::from_millis(30_000));
        t.mark(Step::Dhcp, Duration::from_millis(12_340));
        t.mark(Step::Dhcp, Duration::from_millis(99_000));
        assert_eq!(t.next_step(), Some(Step::Tftp));
        assert_eq!(t.summary(), "DHCP 12.3 s → kernel 30.0 s");
    }
}
