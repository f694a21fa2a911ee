//! krgd's HTTP listener with real daemons: `/metrics` scraped and parsed
//! with the Prometheus project's own parser (python3-prometheus-client,
//! OpenMetrics), figures that follow a `kill -9`; the status page in
//! headless Chromium (Debian `chromium`) turning a killed node to "failed"
//! without a reload, with a screenshot kept as an artefact; a taken port
//! (logged, not fatal); the token required off loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use krg_tests::{bin, free_port, serial, wait_for, TestCluster};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(10);

/// One HTTP/1.1 GET on 127.0.0.1:port: (status code, body).
fn get(port: u16, path: &str, headers: &[&str]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// Parse an exposition with prometheus_client's OpenMetrics parser (strict:
/// it rejects malformed text) into [{name, labels, value}] samples.
fn parse_metrics(text: &str) -> Vec<Value> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    // Debian's python3, where python3-prometheus-client installs.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s["name"] == name
                && labels
                    .iter()
                    .all(|(k, v)| s["labels"][*k].as_str() == Some(*v))
        })
        .and_then(|s| s["value"].as_f64())
}

/// Start nodes `ids` with an HTTP port each; form the cluster on node 1.
fn http_cluster(c: &mut TestCluster, ids: &[u32]) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    for id in ids {
        let port = free_port();
        let listen = format!("--http-listen=127.0.0.1:{port}");
        c.start_with(*id, &c.key.clone(), &[&listen])?;
        ports.push(port);
    }
    c.wait_present(1, ids, SETTLE)?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    c.wait_agreement(ids, SETTLE)?;
    Ok(ports)
}

#[test]
fn metrics_are_real_figures_in_a_format_prometheus_parses() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(3)?;
    c.extra_args = vec!["--failure-timeout-ms=800".into()];
    let ports = http_cluster(&mut c, &[1, 2, 3])?;
    let leader = c.leader(1).expect("a leader");
    let lport = ports[leader as usize - 1];
    let (code, text) = get(lport, "/metrics", &[]);
    assert_eq!(code, 200, "{text}");
    let mut m = parse_metrics(&text);
    // The leader's detector sees its election on its next heartbeat.
    if sample(&m, "krg_raft_elections_won_total", &[]) != Some(1.0) {
        m = wait_for(SETTLE, "the election counted", || {
            let m = parse_metrics(&get(lport, "/metrics", &[]).1);
            (sample(&m, "krg_raft_elections_won_total", &[]) == Some(1.0)).then_some(m)
        })?;
    }
    assert_eq!(sample(&m, "krg_cluster_members", &[]), Some(3.0));
    assert_eq!(sample(&m, "krg_cluster_online_members", &[]), Some(3.0));
    assert_eq!(sample(&m, "krg_cluster_epoch", &[]), Some(1.0));
    assert_eq!(
        sample(&m, "krg_cluster_leader", &[]),
        Some(f64::from(leader))
    );
    assert!(sample(&m, "krg_raft_term", &[]).unwrap() >= 1.0);
    for id in ["1", "2", "3"] {
        let online = sample(&m, "krg_node_state", &[("node", id), ("state", "online")]);
        assert_eq!(online, Some(1.0), "node {id}");
        let failed = sample(&m, "krg_node_state", &[("node", id), ("state", "failed")]);
        assert_eq!(failed, Some(0.0), "node {id}");
    }
    // The leader probes the others: peer round trips were measured.
    let rpcs = sample(&m, "krg_peer_rpc_seconds_count", &[("service", "cluster")]).unwrap();
    assert!(rpcs > 0.0, "no peer RPC measured");
    // The harness asked every node for its status over the admin socket.
    let asked = sample(
        &m,
        "krg_admin_requests_total",
        &[("service", "cluster"), ("outcome", "ok")],
    );
    assert!(asked.unwrap_or(0.0) >= 1.0, "admin requests: {asked:?}");
    // The followers answered the leader's probes.
    let (_, text) = get(ports[if leader == 1 { 1 } else { 0 }], "/metrics", &[]);
    let served = sample(
        &parse_metrics(&text),
        "krg_peer_requests_total",
        &[("service", "cluster"), ("outcome", "ok")],
    );
    assert!(served.unwrap_or(0.0) >= 1.0, "peer requests: {served:?}");

    // kill -9 a follower: the leader detects it and says how long it took.
    let victim = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    c.node(victim)?.kill9();
    let m = wait_for(Duration::from_secs(10), "the failure in /metrics", || {
        let (_, text) = get(lport, "/metrics", &[]);
        let m = parse_metrics(&text);
        let failed = sample(
            &m,
            "krg_node_state",
            &[("node", &victim.to_string()), ("state", "failed")],
        );
        (failed == Some(1.0)).then_some(m)
    })?;
    assert_eq!(sample(&m, "krg_failure_detections_total", &[]), Some(1.0));
    assert_eq!(
        sample(&m, "krg_failure_detection_seconds_count", &[]),
        Some(1.0)
    );
    let silent = sample(&m, "krg_failure_detection_seconds_sum", &[]).unwrap();
    assert!((0.8..5.0).contains(&silent), "detected after {silent} s");
    assert_eq!(sample(&m, "krg_cluster_online_members", &[]), Some(2.0));
    assert_eq!(sample(&m, "krg_cluster_members", &[]), Some(3.0));
    assert!(sample(&m, "krg_cluster_epoch", &[]).unwrap() >= 2.0);
    Ok(())
}

#[test]
fn a_taken_port_is_a_warning_and_other_paths_are_refused() -> Result<()> {
    let _g = serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let mut c = TestCluster::loopback(2)?;
    let flag = format!("--http-listen=127.0.0.1:{port}");
    c.start_with(1, &c.key.clone(), &[&flag])?;
    // The node runs and answers on its admin socket.
    let status = c.status(1)?;
    assert_eq!(status["this_node"], 1);
    assert!(c.node(1)?.is_running());
    assert!(
        c.node(1)?.log_text().contains("cannot serve HTTP"),
        "{}",
        c.node(1)?.log_text()
    );
    drop(taken);

    let free = free_port();
    let flag = format!("--http-listen=127.0.0.1:{free}");
    c.start_with(2, &c.key.clone(), &[&flag])?;
    wait_for(SETTLE, "HTTP on node 2", || {
        TcpStream::connect(("127.0.0.1", free)).ok()
    })?;
    assert_eq!(get(free, "/nonsense", &[]).0, 404);
    let (code, body) = get(free, "/status.json", &[]);
    assert_eq!(code, 200);
    let s: Value = serde_json::from_str(&body)?;
    assert_eq!(s["this_node"], 2);
    // Read-only: a POST is refused.
    let mut s = TcpStream::connect(("127.0.0.1", free))?;
    s.write_all(
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    Ok(())
}

#[test]
fn off_loopback_a_token_is_required() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(2)?;
    // Without a token file krgd refuses to start, in one line.
    let port = free_port();
    let flag = format!("--http-listen=0.0.0.0:{port}");
    let err = c.start_with(1, &c.key.clone(), &[&flag]).unwrap_err();
    let log = c.dir.path().join("krgd1.log");
    let text = std::fs::read_to_string(log)?;
    assert!(
        text.contains("not a loopback address: give --http-token-file"),
        "{err:#}: {text}"
    );

    let token = c.dir.path().join("http.token");
    std::fs::write(&token, "s3cret-token-0123456789\n")?;
    let tflag = format!("--http-token-file={}", token.display());
    c.start_with(2, &c.key.clone(), &[&flag, &tflag])?;
    wait_for(SETTLE, "HTTP on node 2", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    })?;
    assert_eq!(get(port, "/metrics", &[]).0, 401);
    assert_eq!(get(port, "/", &[]).0, 401);
    assert_eq!(
        get(port, "/metrics?token=wrong-token-0123456789", &[]).0,
        401
    );
    let bearer = "Authorization: Bearer s3cret-token-0123456789";
    assert_eq!(get(port, "/metrics", &[bearer]).0, 200);
    let (code, page) = get(port, "/?token=s3cret-token-0123456789", &[]);
    assert_eq!(code, 200);
    // The page's own requests carry the token.
    assert!(page.contains("/status.js?token=s3cret-token-0123456789"));
    Ok(())
}

/// Where the Chromium screenshot is kept: $KRG_TEST_ARTIFACTS or
/// target/test-artifacts.
fn artefact_dir() -> PathBuf {
    let dir = std::env::var_os("KRG_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("test-artifacts")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Rows [[id, state]] of a JSON line of chromium_cdp.py.
fn rows_of(v: &Value) -> Vec<(String, String)> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn status_page_in_chromium_turns_a_killed_node_failed_without_reload() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(3)?;
    c.extra_args = vec!["--failure-timeout-ms=800".into()];
    let ports = http_cluster(&mut c, &[1, 2, 3])?;
    let leader = c.leader(1).expect("a leader");
    let victim = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let url = format!("http://127.0.0.1:{}/", ports[leader as usize - 1]);
    // The leader checked out: its row's last column names the owner.
    c.krgadm_ok(
        leader,
        &[
            "nodes",
            "checkout",
            "-n",
            &leader.to_string(),
            "--until",
            "+1h",
        ],
    )?;
    let before = artefact_dir().join("status-page.png");
    let after = artefact_dir().join("status-page-failed.png");
    for shot in [&before, &after] {
        let _ = std::fs::remove_file(shot);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("chromium_cdp.py");
    let mut driver = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&url)
        .arg(victim.to_string())
        .arg(&before)
        .arg(&after)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(driver.stdout.take().unwrap()));
    let first: Value = serde_json::from_str(&lines.next().expect("first report")?)?;
    let rows = rows_of(&first);
    let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"], "the node table shows every node");
    assert!(rows.iter().all(|(_, s)| s == "online"), "{rows:?}");
    assert!(
        std::fs::metadata(&before)?.len() > 5_000,
        "screenshot too small"
    );

    c.node(victim)?.kill9();
    driver.stdin.take().unwrap().write_all(b"killed\n")?;
    let last: Value = serde_json::from_str(&lines.next().expect("final report")?)?;
    assert!(driver.wait()?.success());
    let rows = rows_of(&last);
    for (id, state) in &rows {
        let want = if *id == victim.to_string() {
            "failed"
        } else {
            "online"
        };
        assert_eq!(state, want, "node {id} on the page: {rows:?}");
    }
    // Redrawn by the script from /status.json: the owner column too.
    for row in last["rows"].as_array().unwrap() {
        let cells = row.as_array().unwrap();
        let owner = cells.last().unwrap().as_str().unwrap();
        if cells[0] == leader.to_string().as_str() {
            assert!(owner.starts_with("root until 20"), "{row}");
        } else {
            assert_eq!(owner, "-", "{row}");
        }
    }
    assert_eq!(last["reloaded"], false, "the page was reloaded");
    assert!(last["updated"].as_str().unwrap().starts_with("updated "));
    assert!(after.exists(), "no screenshot of the failure");
    Ok(())
}

/// Unmounts a scheduler tree left by a krgd killed mid-test.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn probe_values_of_the_scheduler_tree_are_exported() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(1)?;
    let tree = c.dir.path().join("sched");
    std::fs::create_dir(&tree)?;
    let port = free_port();
    let mount = format!("--scheduler-mount={}", tree.display());
    let listen = format!("--http-listen=127.0.0.1:{port}");
    c.start_with(1, &c.key.clone(), &[&mount, &listen])?;
    let _unmount = Unmount(tree.clone());
    // krgd's socket answers before its scheduler tree is mounted
    wait_for(SETTLE, "the scheduler tree", || {
        tree.join("probes").is_dir().then_some(())
    })?;
    std::fs::create_dir(tree.join("probes/mem_probe"))?;
    let total: f64 = std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap()
        * 1024.0;
    let labels = [
        ("probe", "mem_probe"),
        ("source", "ram_total"),
        ("unit", "bytes"),
    ];
    let value = wait_for(SETTLE, "mem_probe in /metrics", || {
        let (_, text) = get(port, "/metrics", &[]);
        sample(&parse_metrics(&text), "krg_probe_value", &labels)
    })?;
    assert_eq!(value, total);
    // Unloaded, it is gone from the next scrape.
    std::fs::remove_dir(tree.join("probes/mem_probe"))?;
    let (_, text) = get(port, "/metrics", &[]);
    assert_eq!(
        sample(&parse_metrics(&text), "krg_probe_value", &labels),
        None
    );
    c.node(1)?.stop();
    Ok(())
}

#[test]
fn placements_and_jobs_are_counted() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(1)?;
    let ports = http_cluster(&mut c, &[1])?;
    let out = c.krg(1)?.args(["run", "--", "true"]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.krg(1)?.args(["run", "-n", "1", "--", "true"]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = parse_metrics(&get(ports[0], "/metrics", &[]).1);
    // One automatic placement (no policy loaded: the least loaded node);
    // `-n 1` is not a placement. Both jobs started.
    let placed = [("by", "least_load"), ("node", "1")];
    assert_eq!(sample(&m, "krg_placements_total", &placed), Some(1.0));
    assert_eq!(sample(&m, "krg_jobs_started_total", &[]), Some(2.0));
    assert_eq!(sample(&m, "krg_jobs_running", &[]), Some(0.0));
    Ok(())
}

/// The proc connector filter: a fork storm of processes nobody flagged does
/// not wake krgd's capability trackers (their counters stay at 0); the
/// forks and exits of a CHECKPOINTABLE shell's children do reach one.
#[test]
fn untracked_forks_do_not_reach_the_capability_trackers() -> Result<()> {
    let _g = serial();
    let mut c = TestCluster::loopback(1)?;
    let ports = http_cluster(&mut c, &[1])?;
    let events = |tracker: &str| {
        let m = parse_metrics(&get(ports[0], "/metrics", &[]).1);
        sample(
            &m,
            "krg_proc_connector_events_total",
            &[("tracker", tracker)],
        )
    };
    assert_eq!(events("checkpointable"), Some(0.0));
    assert_eq!(events("can_migrate"), Some(0.0));
    // 300 processes forked and exited on this machine, none flagged.
    for _ in 0..300 {
        assert!(Command::new("/bin/true").status()?.success());
    }
    assert_eq!(
        events("checkpointable"),
        Some(0.0),
        "untracked forks counted"
    );
    assert_eq!(events("can_migrate"), Some(0.0), "untracked forks counted");
    // A shell flags itself, then starts 10 children: 10 forks, 10 exits,
    // and the shell's own exit reach the CHECKPOINTABLE tracker only.
    let script = format!(
        "{} -d +CHECKPOINTABLE || exit 1; for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done",
        bin("krgcapset").display()
    );
    let o = Command::new("sh")
        .args(["-c", &script])
        .env("KRG_SOCKET", c.dir.path().join("krgd1.sock"))
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = wait_for(SETTLE, "21 events of the flagged shell", || {
        events("checkpointable").filter(|&n| n >= 21.0)
    })?;
    assert_eq!(got, 21.0, "events of other processes were counted");
    assert_eq!(events("can_migrate"), Some(0.0));
    c.node(1)?.stop();
    Ok(())
}
