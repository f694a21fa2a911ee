//! What a test reads of a running cluster: logs, `kdfsctl`, metrics.

use std::process::Command;
use std::time::Duration;

use super::{wait_until, Cluster};

impl Cluster {
    /// Whether node index `i`'s krgd logged, since it started, that its
    /// mirror holds its store (`--replicas 2`).
    pub fn mirrored(&self, i: usize) -> bool {
        let log = std::fs::read_to_string(self.nodes[i].data.join("krgd.log")).unwrap_or_default();
        log.contains("kdfs mirror: full copy done")
    }

    /// Wait (30 s at most) until node index `i`'s mirror holds its store.
    pub fn wait_mirrored(&self, i: usize) {
        wait_until("the node's mirror copied", Duration::from_secs(30), || {
            self.mirrored(i)
        });
    }

    /// Wait (30 s at most) until node index `i`'s krgd made `copies`
    /// full copies of its store (one per mirror, `--replicas 3`: two).
    pub fn wait_full_copies(&self, i: usize, copies: usize) {
        wait_until("the node's mirrors copied", Duration::from_secs(30), || {
            self.plain_log(i)
                .matches("kdfs mirror: full copy done")
                .count()
                >= copies
        });
    }

    /// Wait (30 s at most) until node index `i`'s krgd, back, took its
    /// store back from a mirror and copied it to its mirror again.
    pub fn wait_took_store_back(&self, i: usize) {
        wait_until(
            "the node serving its store again",
            Duration::from_secs(30),
            || {
                let log = self.plain_log(i);
                log.contains("took the store back") && log.contains("kdfs mirror: full copy done")
            },
        );
    }

    /// Node index `store`'s krgd is dead: which of its two `mirrors`
    /// (node indices) serves its store, once it copied it on to the other
    /// (30 s at most). `(serving, other)`.
    pub fn takeover_copied_on(&self, store: usize, mirrors: [usize; 2]) -> (usize, usize) {
        let serves = |i: usize| {
            self.plain_log(i)
                .contains("node failed; this node serves its store")
        };
        let [a, b] = mirrors;
        let (server, other) = if serves(a) { (a, b) } else { (b, a) };
        assert!(
            serves(server),
            "neither node {} nor node {} serves node {}'s store",
            a + 1,
            b + 1,
            store + 1
        );
        let onward = format!("full copy done to={} store={}", other + 1, store + 1);
        wait_until(
            "the other mirror copied from the server",
            Duration::from_secs(30),
            || self.plain_log(server).contains(&onward),
        );
        (server, other)
    }

    /// What node `i`'s mount.kdfs logged (info level).
    pub fn client_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].data.join("kdfs.log")).unwrap_or_default()
    }

    /// Node index `i`'s krgd log, its colours taken out.
    pub fn plain_log(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.nodes[i].data.join("krgd.log")).unwrap_or_default();
        let mut out = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(ch) = chars.next() {
            if ch == '\u{1b}' {
                // an escape sequence: up to its final letter
                for e in chars.by_ref() {
                    if e.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(ch);
            }
        }
        out
    }

    /// `kdfsctl ARGS` through node index `i`'s krgd: its output, errors
    /// and exit code.
    pub fn kdfsctl(&self, i: usize, args: &[&str]) -> (String, String, Option<i32>) {
        let o = Command::new(env!("CARGO_BIN_EXE_kdfsctl"))
            .arg("--socket")
            .arg(&self.nodes[i].sock)
            .arg("--keyfile")
            .arg(&self.key)
            .args(args)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            o.status.code(),
        )
    }

    /// How many requests of the kinds `ops` (the `op` label of
    /// `krg_kdfs_operations_total`) node index `i`'s krgd has served.
    pub fn served(&self, i: usize, ops: &[&str]) -> f64 {
        let text = scrape(self.nodes[i].http_port);
        ops.iter()
            .filter_map(|op| metric(&text, &format!("krg_kdfs_operations_total{{op=\"{op}\"}}")))
            .sum()
    }

    /// What `kdfsctl status` prints through node index `i`, and its exit
    /// code.
    pub fn kdfs_status(&self, i: usize) -> (String, Option<i32>) {
        let (out, _, code) = self.kdfsctl(i, &["status"]);
        (out, code)
    }
}

/// krgd's metrics exposition on 127.0.0.1:`port`.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// The value of the series `series` (`name{labels}` as written in the
/// text, e.g. `krg_kdfs_bytes_total{direction="read"}`) in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
