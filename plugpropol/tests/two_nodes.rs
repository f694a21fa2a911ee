//! The global scheduler across two real krgd processes forming a cluster:
//! a policy on node 1 (built-in or plug-in) consumes a probe of node 2.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{script, wait_for, Daemon, Opts};
use krg_proto::admin::{AdminRequest, AdminResponse};
use krg_proto::client::AdminClient;
use krg_proto::sched::{SchedReply, SchedRequest};

const MIN_POLICY: &str = r#"echo 'port port_v bytes'
echo ready
best=''; bv=''
while read -r kind port node value; do
  case $kind in
    input) if [ -z "$best" ] || [ "$value" -lt "$bv" ]; then best=$node; bv=$value; fi ;;
    decide) if [ -n "$best" ]; then echo "place $best smallest port_v value $bv"; else echo 'none no input yet'; fi; best=''; bv='' ;;
  esac
done
"#;

const DOUBLE_FILTER: &str = r#"echo 'input bytes'
echo 'output same'
echo ready
while read -r kind node value; do
  case $kind in
    value) echo "$node $((value * 2))" ;;
    filter) echo end ;;
  esac
done
"#;

fn krgadm(sock: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(common::bin_dir().join("krgadm"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn place(sock: &Path, scheduler: &str) -> (u32, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = AdminClient::connect(sock).await.unwrap();
        match c
            .call(&AdminRequest::Sched(SchedRequest::Place {
                scheduler: Some(scheduler.into()),
            }))
            .await
            .unwrap()
        {
            AdminResponse::Sched(SchedReply::Placement { node, reason }) => (node, reason),
            other => panic!("unexpected answer {other:?}"),
        }
    })
}

#[test]
fn a_policy_on_node_1_consumes_a_probe_of_node_2() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    fs::write(&key, "two-node-scheduler-test-key-0123456789").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // A plug-in probe whose value each test node controls through a file.
    let probe = tmp.path().join("free_probe.sh");
    script(&probe, "echo 'source free bytes'\necho 'period 100'\necho ready\nwhile read c; do echo \"free $(cat $1)\"; echo end; done\n");
    // A policy plug-in: the node with the smallest value on port_v.
    let min_policy = tmp.path().join("min_policy.sh");
    script(&min_policy, MIN_POLICY);
    // A filter plug-in: doubles every node's value.
    let double = tmp.path().join("double_filter.sh");
    script(&double, DOUBLE_FILTER);
    let (pa, pb) = (common::free_port(), common::free_port());
    let mut nodes = Vec::new();
    for (node, port, peer) in [(1u32, pa, pb), (2, pb, pa)] {
        let dir = tmp.path().join(format!("n{node}"));
        fs::create_dir_all(&dir).unwrap();
        let value = dir.join("free.txt");
        fs::write(&value, format!("{}", node as u64 * 1_000_000)).unwrap();
        let registry = dir.join("plugins.conf");
        let reg = format!(
            "free_probe probe {} {}\nmin_policy policy {}\ndouble_filter filter {}\n",
            probe.display(),
            value.display(),
            min_policy.display(),
            double.display()
        );
        fs::write(&registry, reg).unwrap();
        nodes.push(Daemon::start(
            &dir,
            Opts {
                node,
                port,
                peers: vec![peer],
                registry: Some(&registry),
                key: Some(&key),
            },
        ));
    }
    let (n1, n2) = (&nodes[0], &nodes[1]);

    // Form the cluster once node 1 sees node 2.
    wait_for(
        "node 2 to be present on node 1",
        Duration::from_secs(30),
        || {
            krgadm(&n1.sock, &["--json", "nodes", "status"])
                .1
                .contains("\"id\":2")
        },
    );
    let (ok, out) = krgadm(&n1.sock, &["cluster", "start"]);
    assert!(ok, "krgadm cluster start: {out}");
    wait_for("both members online", Duration::from_secs(30), || {
        krgadm(&n1.sock, &["cluster", "status"])
            .1
            .contains("(2 online)")
    });

    for n in [n1, n2] {
        fs::create_dir(n.path("probes/free_probe")).unwrap();
        fs::create_dir(n.path("probes/mem_probe")).unwrap();
    }
    fs::create_dir(n1.path("schedulers/global")).unwrap();
    fs::create_dir(n1.path("schedulers/global/placement_policy")).unwrap();
    fs::create_dir(n1.path("schedulers/global/echo_policy")).unwrap();
    symlink(
        n1.path("probes/free_probe/free"),
        n1.path("schedulers/global/placement_policy/port_mem_free"),
    )
    .unwrap();
    symlink(
        n1.path("probes/mem_probe/ram_free"),
        n1.path("schedulers/global/echo_policy/port_ram"),
    )
    .unwrap();

    // Node 2's values appear on node 1 ...
    let nodes_file = n1.path("probes/free_probe/free/nodes");
    wait_for("node 2's value on node 1", Duration::from_secs(30), || {
        fs::read_to_string(&nodes_file).unwrap() == "1 1000000\n2 2000000\n"
    });
    // ... the local `value` stays node 1's own ...
    assert_eq!(
        fs::read_to_string(n1.path("probes/free_probe/free/value")).unwrap(),
        "1000000\n"
    );
    // ... and the policies of node 1 use them.
    let placement =
        fs::read_to_string(n1.path("schedulers/global/placement_policy/placement")).unwrap();
    assert!(
        placement.starts_with("2 most free memory (2000000 bytes) among 2 node(s)"),
        "{placement}"
    );
    assert_eq!(place(&n1.sock, "global").0, 2);
    wait_for(
        "echo_policy to receive node 2's ram_free",
        Duration::from_secs(30),
        || {
            fs::read_to_string(n1.path("schedulers/global/echo_policy/received"))
                .unwrap()
                .contains("port_ram node2 ")
        },
    );

    // New samples of node 2 keep flowing: node 1 follows a change.
    fs::write(n2.dir.join("free.txt"), "500").unwrap();
    wait_for(
        "node 2's new value on node 1",
        Duration::from_secs(30),
        || fs::read_to_string(&nodes_file).unwrap().contains("2 500\n"),
    );
    let (node, reason) = place(&n1.sock, "global");
    assert_eq!(node, 1, "{reason}");

    // A cluster-wide filter on node 1 sums both nodes.
    fs::create_dir(n1.path("filters/cluster_sum")).unwrap();
    symlink(
        n1.path("probes/free_probe/free"),
        n1.path("filters/cluster_sum/input"),
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(n1.path("filters/cluster_sum/value")).unwrap(),
        "1000500\n"
    );

    // The policy plug-in on node 1 decides from both nodes' values too.
    fs::create_dir(n1.path("schedulers/plug")).unwrap();
    fs::create_dir(n1.path("schedulers/plug/min_policy")).unwrap();
    let e = symlink(
        n1.path("probes/mem_probe/ram_free"),
        n1.path("schedulers/plug/min_policy/port_x"),
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    symlink(
        n1.path("probes/free_probe/free"),
        n1.path("schedulers/plug/min_policy/port_v"),
    )
    .unwrap();
    wait_for("the plug-in's decision", Duration::from_secs(30), || {
        fs::read_to_string(n1.path("schedulers/plug/min_policy/decision")).unwrap()
            == "2 smallest port_v value 500\n"
    });
    assert_eq!(
        place(&n1.sock, "plug"),
        (2, "smallest port_v value 500".to_string())
    );
    fs::remove_dir(n1.path("schedulers/plug/min_policy")).unwrap();

    // A filter plug-in on node 1 transforms both nodes' values.
    fs::create_dir(n1.path("filters/double_filter")).unwrap();
    symlink(
        n1.path("probes/free_probe/free"),
        n1.path("filters/double_filter/input"),
    )
    .unwrap();
    wait_for(
        "the filter plug-in's output",
        Duration::from_secs(30),
        || {
            fs::read_to_string(n1.path("filters/double_filter/nodes")).unwrap()
                == "1 2000000\n2 1000\n"
        },
    );
    assert_eq!(
        fs::read_to_string(n1.path("filters/double_filter/value")).unwrap(),
        "2000000\n"
    );
    assert_eq!(
        fs::read_to_string(n1.path("filters/double_filter/type")).unwrap(),
        "bytes (per node)\n"
    );
    fs::remove_file(n1.path("filters/double_filter/input")).unwrap();
    fs::remove_dir(n1.path("filters/double_filter")).unwrap();
}
