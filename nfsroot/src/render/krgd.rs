//! krgd.toml: one per node, plus a node-agnostic one for shared images
//! (krgd then takes node_id= from the kernel command line). Only keys that
//! krgd's `Settings` accepts are written; a test parses the output with it.

use std::fmt::Write;
use std::net::SocketAddrV4;

use super::Ctx;
use crate::desc::Node;

fn common(c: &Ctx, s: &mut String, me: Option<&Node>) {
    let k = &c.d.krgd;
    let _ = writeln!(s, "session_id = {}", c.d.cluster.session_id);
    let _ = writeln!(s, "listen = \"0.0.0.0:{}\"", k.port);
    if let Some(n) = me {
        let _ = writeln!(s, "advertise = \"{}\"", SocketAddrV4::new(n.ip, k.port));
    }
    let peers: Vec<String> =
        c.d.nodes
            .iter()
            .filter(|p| me.is_none_or(|n| n.name != p.name))
            .map(|p| format!("\"{}\"", SocketAddrV4::new(p.ip, k.port)))
            .collect();
    let _ = writeln!(s, "peers = [{}]", peers.join(", "));
    let _ = writeln!(s, "broadcast = \"{}\"", c.subnet.broadcast());
    let _ = writeln!(
        s,
        "cluster_key_file = {}",
        toml_string(&k.cluster_key_file.to_string_lossy())
    );
    if let Some(dir) = &k.data_dir {
        let _ = writeln!(s, "data_dir = {}", toml_string(&dir.to_string_lossy()));
    }
    for (key, v) in [
        ("heartbeat_ms", k.heartbeat_ms),
        ("failure_timeout_ms", k.failure_timeout_ms),
    ] {
        if let Some(v) = v {
            let _ = writeln!(s, "{key} = {v}");
        }
    }
    if let Some(v) = k.max_voters {
        let _ = writeln!(s, "max_voters = {v}");
    }
    let _ = writeln!(
        s,
        "scheduler_mount = \"{}\"",
        krg_proto::DEFAULT_SCHEDULER_MOUNT
    );
}

/// The krgd.toml of one node.
pub fn node(c: &Ctx, n: &Node) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# krgd.toml of node {} — rendered by nfsroot; edit the description and re-render.",
        n.name
    );
    let _ = writeln!(
        s,
        "# The node also boots with node_id={} session_id={}; both agree.",
        n.node_id, c.d.cluster.session_id
    );
    let _ = writeln!(s, "node_id = {}", n.node_id);
    common(c, &mut s, Some(n));
    s
}

/// The krgd.toml of a shared image: no node_id, krgd reads it from /proc/cmdline.
pub fn shared(c: &Ctx) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# krgd.toml shared by every node of session {} — rendered by nfsroot.",
        c.d.cluster.session_id
    );
    let _ = writeln!(
        s,
        "# No node_id: krgd reads node_id= from the kernel command line the boot menu passes."
    );
    let _ = writeln!(
        s,
        "# peers lists every node, this one included (the file is the same on all of them)."
    );
    common(c, &mut s, None);
    s
}

/// A TOML basic string.
fn toml_string(v: &str) -> String {
    let mut s = String::from("\"");
    for ch in v.chars() {
        match ch {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(s, "\\u{:04X}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}
