//! kDFS between two network namespaces joined by a veth pair: real
//! addresses and MACs, no loopback shortcut. krgd and mount.kdfs of each node
//! run in its namespace (network only, so the mounts are visible here).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs;
use std::process::Command;

use common::{run, Cluster};

/// Two namespaces with a veth pair between them; deleted on drop.
struct Netns {
    names: [String; 2],
}

impl Netns {
    fn create() -> Netns {
        let tag = std::process::id() % 100_000;
        let names = [format!("kdfs-a{tag}"), format!("kdfs-b{tag}")];
        let ip = |args: &[&str]| {
            let out = run(Command::new("ip").args(args));
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let n = Netns {
            names: names.clone(),
        };
        for ns in &names {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (va, vb) = (format!("kva{tag}"), format!("kvb{tag}"));
        ip(&[
            "link", "add", &va, "netns", &names[0], "type", "veth", "peer", "name", &vb, "netns",
            &names[1],
        ]);
        ip(&["-n", &names[0], "addr", "add", "10.213.0.1/24", "dev", &va]);
        ip(&["-n", &names[1], "addr", "add", "10.213.0.2/24", "dev", &vb]);
        ip(&["-n", &names[0], "link", "set", &va, "up"]);
        ip(&["-n", &names[1], "link", "set", &vb, "up"]);
        n
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}

#[test]
fn kdfs_across_network_namespaces() {
    let netns = Netns::create();
    {
        let c = Cluster::start_in(vec![
            (Some(netns.names[0].clone()), "10.213.0.1".into()),
            (Some(netns.names[1].clone()), "10.213.0.2".into()),
        ]);
        for i in 0..2 {
            let out = c.mkfs(i, 1, false);
            assert!(
                out.status.success(),
                "mkfs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for i in 0..2 {
            let out = c.mount(i, "");
            assert!(
                out.status.success(),
                "mount: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::create_dir(c.mnt(1).join("from-b")).unwrap();
        fs::write(c.mnt(1).join("from-b/file"), vec![7u8; 3 << 20]).unwrap();
        assert_eq!(
            fs::read(c.mnt(0).join("from-b/file")).unwrap(),
            vec![7u8; 3 << 20]
        );
        fs::rename(c.mnt(0).join("from-b/file"), c.mnt(0).join("moved")).unwrap();
        assert!(c.mnt(1).join("moved").exists() && !c.mnt(1).join("from-b/file").exists());
        // Cluster drops here (unmount, kill krgds) before the namespaces go.
    }
    drop(netns);
}
