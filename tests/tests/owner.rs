//! Node ownership (`krgadm nodes checkout` / `release`) on a real 3-node
//! loopback cluster: two overlapping checkouts at once (exactly one wins,
//! the other names the owner), what an unprivileged user may and may not
//! do (run through setpriv as `nobody` and `tests`), expiry, `krg run`
//! placement around other users' nodes, the metrics and status page, and
//! checkouts surviving a restart of every krgd. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use krg_tests::{free_port, serial, wait_for, TestCluster};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(20);
/// uid of `nobody` and of the `tests` user (`useradd -M tests`, as .ci/run makes it).
const NOBODY: u32 = 65534;

fn tests_uid() -> u32 {
    let out = Command::new("id").args(["-u", "tests"]).output().unwrap();
    assert!(out.status.success(), "the CI needs a `tests` user");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `prog args` through node `via`'s socket, as `uid` (root: as is).
fn as_user(c: &TestCluster, uid: u32, via: u32, prog: &str, args: &[&str]) -> Output {
    let mut cmd = if uid == 0 {
        Command::new(krg_tests::bin(prog))
    } else {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--"])
            .arg(krg_tests::bin(prog));
        cmd
    };
    cmd.args(args)
        .env("KRG_SOCKET", &c.nodes[&via].socket)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn adm(c: &TestCluster, uid: u32, via: u32, args: &[&str]) -> Output {
    as_user(c, uid, via, "krgadm", args)
}

fn krg(c: &TestCluster, uid: u32, via: u32, args: &[&str]) -> Output {
    as_user(c, uid, via, "krg", args)
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{:?}", text(&o));
    text(&o).0
}

/// stderr of a command that must fail.
fn refused(o: Output) -> String {
    assert!(!o.status.success(), "should have failed: {:?}", text(&o));
    let e = text(&o).1;
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    e
}

/// node id → owner's user name (None: not checked out), as `via` says.
fn owners(c: &TestCluster, via: u32) -> Vec<(u64, Option<String>)> {
    let rows: Value =
        serde_json::from_str(&ok(adm(c, 0, via, &["--json", "nodes", "status"]))).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["owner"]["user"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn owned_by(list: &[(u64, Option<&str>)]) -> Vec<(u64, Option<String>)> {
    list.iter()
        .map(|(n, u)| (*n, u.map(str::to_string)))
        .collect()
}

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A formed 3-node loopback cluster; node 1 serves HTTP on the port returned.
fn formed() -> Result<(TestCluster, u16)> {
    let mut c = TestCluster::loopback(3)?;
    let port = free_port();
    let listen = format!("--http-listen=127.0.0.1:{port}");
    c.start_with(1, &c.key.clone(), &[&listen])?;
    c.start(2)?;
    c.start(3)?;
    c.wait_present(1, &[1, 2, 3], SETTLE)?;
    c.krgadm_ok(1, &["cluster", "start"])?;
    c.wait_agreement(&[1, 2, 3], SETTLE)?;
    // Unprivileged users must reach the sockets in the test directory.
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok((c, port))
}

#[test]
fn overlapping_checkouts_one_wins_users_are_confined_and_checkouts_expire() -> Result<()> {
    let _g = serial();
    let (c, _) = formed()?;
    let tests = tests_uid();

    // Two overlapping sets at once, asked of two nodes (at least one
    // forwards to the leader): exactly one wins, the other names the owner.
    for round in 0..4 {
        let spawn = |via: u32, nodes: &str, user: &str| {
            Command::new(krg_tests::bin("krgadm"))
                .arg("--socket")
                .arg(&c.nodes[&via].socket)
                .args([
                    "nodes", "checkout", "-n", nodes, "--for", user, "--until", "+1h",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let a = spawn(1, "1-2", "nobody");
        let b = spawn(3, "2:3", "tests");
        let (a, b) = (a.wait_with_output(), b.wait_with_output());
        let (a, b) = (a?, b?);
        assert!(
            a.status.success() != b.status.success(),
            "round {round}: exactly one wins: {:?} / {:?}",
            text(&a),
            text(&b)
        );
        let (winner, loser_out, expect) = if a.status.success() {
            (
                "nobody",
                &b,
                [(1, Some("nobody")), (2, Some("nobody")), (3, None)],
            )
        } else {
            (
                "tests",
                &a,
                [(1, None), (2, Some("tests")), (3, Some("tests"))],
            )
        };
        let e = text(loser_out).1;
        assert!(
            e.starts_with(&format!("krgadm: node 2 is checked out by {winner} until "))
                && e.lines().count() == 1,
            "round {round}: {e}"
        );
        for via in 1..=3 {
            assert_eq!(
                owners(&c, via),
                owned_by(&expect),
                "round {round}, node {via}'s view"
            );
        }
        ok(adm(&c, 0, 2, &["nodes", "release", "-n", "1-3", "--force"]));
        assert_eq!(owners(&c, 2), owned_by(&[(1, None), (2, None), (3, None)]));
    }

    // Bad input: unknown nodes, deadlines past or zero, nonsense.
    let e = refused(adm(
        &c,
        0,
        1,
        &["nodes", "checkout", "-n", "2:9", "--until", "+1h"],
    ));
    assert!(e.contains("node 9 is not a member of the cluster"), "{e}");
    let e = refused(adm(
        &c,
        0,
        1,
        &[
            "nodes",
            "checkout",
            "-n",
            "2",
            "--until",
            "2020-01-01T00:00:00Z",
        ],
    ));
    assert!(e.contains("has passed"), "{e}");
    let e = refused(adm(
        &c,
        0,
        1,
        &["nodes", "checkout", "-n", "2", "--until", "+0s"],
    ));
    assert!(e.contains("must last some time"), "{e}");
    let e = refused(adm(
        &c,
        0,
        1,
        &["nodes", "checkout", "-n", "2", "--until", "soon"],
    ));
    assert!(e.contains("bad --until 'soon'"), "{e}");
    let e = refused(adm(
        &c,
        0,
        1,
        &[
            "nodes",
            "checkout",
            "-n",
            "2",
            "--for",
            "no-such-user-krg",
            "--until",
            "+1h",
        ],
    ));
    assert!(
        e.contains("'no-such-user-krg' is not a user on node 1"),
        "{e}"
    );
    let e = refused(adm(
        &c,
        0,
        1,
        &[
            "nodes",
            "checkout",
            "-n",
            "2",
            "--until",
            "+1h",
            "--reason",
            "a\x1b[2Jb",
        ],
    ));
    assert!(e.contains("control characters"), "{e}");
    assert_eq!(
        owners(&c, 1),
        owned_by(&[(1, None), (2, None), (3, None)]),
        "nothing changed"
    );

    // An ordinary user checks out for themselves only, and releases only
    // their own; root needs --force for another's.
    let e = refused(adm(
        &c,
        tests,
        2,
        &[
            "nodes", "checkout", "-n", "3", "--for", "nobody", "--until", "+1h",
        ],
    ));
    assert!(
        e.contains("only root may check nodes out for another user"),
        "{e}"
    );
    let e = refused(adm(
        &c,
        tests,
        2,
        &[
            "nodes", "checkout", "-n", "3", "--for", "0", "--until", "+1h",
        ],
    ));
    assert!(e.contains("only root may"), "{e}");
    let out = ok(adm(
        &c,
        tests,
        2,
        &[
            "nodes",
            "checkout",
            "-n",
            "3",
            "--until",
            "+1h",
            "--reason",
            "tests' bench",
        ],
    ));
    assert!(
        out.contains("tests") && out.contains("tests' bench"),
        "{out}"
    );
    let e = refused(adm(&c, NOBODY, 1, &["nodes", "release", "-n", "3"]));
    assert!(
        e.contains("node 3 is checked out by tests until") && e.contains("only they or root"),
        "{e}"
    );
    let e = refused(adm(
        &c,
        NOBODY,
        1,
        &["nodes", "release", "-n", "3", "--force"],
    ));
    assert!(
        e.contains("only root may release other users' nodes"),
        "{e}"
    );
    let e = refused(adm(&c, 0, 1, &["nodes", "release", "-n", "3"]));
    assert!(e.contains("root releases it with --force"), "{e}");
    assert_eq!(owners(&c, 3)[2], (3, Some("tests".into())));
    ok(adm(&c, tests, 3, &["nodes", "release", "-n", "3"]));
    let e = refused(adm(&c, tests, 3, &["nodes", "release", "-n", "3"]));
    assert!(e.contains("none of these nodes is checked out"), "{e}");

    // Expiry: a 3 s checkout holds node 3, then frees it by itself.
    let t0 = Instant::now();
    ok(adm(
        &c,
        tests,
        1,
        &["nodes", "checkout", "-n", "3", "--until", "+3s"],
    ));
    let e = refused(krg(&c, NOBODY, 1, &["run", "-n", "3", "--", "true"]));
    assert!(e.contains("node 3 is checked out by tests"), "{e}");
    let table = ok(adm(&c, 0, 2, &["nodes", "status"]));
    assert!(
        table.lines().next().unwrap().contains("OWNER") && table.contains("UNTIL"),
        "{table}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the checks above ran within the checkout"
    );
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(t0.elapsed()) + Duration::from_millis(200),
    );
    assert_eq!(owners(&c, 2)[2], (3, None), "expired");
    ok(krg(&c, NOBODY, 1, &["run", "-n", "3", "--", "true"]));
    // The owner may take it again once expired.
    ok(adm(
        &c,
        NOBODY,
        3,
        &["nodes", "checkout", "-n", "3", "--until", "+1h"],
    ));
    Ok(())
}

#[test]
fn placement_avoids_other_users_nodes_and_checkouts_survive_restarts() -> Result<()> {
    let _g = serial();
    let (mut c, port) = formed()?;
    let tests = tests_uid();

    ok(adm(
        &c,
        NOBODY,
        2,
        &[
            "nodes",
            "checkout",
            "-n",
            "2",
            "--until",
            "+1h",
            "--reason",
            "nobody's bench",
        ],
    ));
    // Named: refused for another user, with the owner; fine for the owner and root.
    let e = refused(krg(&c, tests, 1, &["run", "-n", "2", "--", "true"]));
    assert!(e.contains("node 2 is checked out by nobody until"), "{e}");
    assert_eq!(
        ok(krg(
            &c,
            NOBODY,
            1,
            &["run", "-n", "2", "--", "echo", "mine"]
        )),
        "mine\n"
    );
    assert_eq!(
        ok(krg(&c, 0, 3, &["run", "-n", "2", "--", "echo", "root"])),
        "root\n"
    );
    // Everywhere: every node but the taken one.
    let out = ok(krg(&c, tests, 1, &["run", "-a", "--", "echo", "x"]));
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["node1: x", "node3: x"]);
    // Automatic: loads tie on one host, so the least-loaded choice would be
    // node 1 (lowest id); nobody holds 1 and 2, so another user's jobs go to 3.
    ok(adm(
        &c,
        NOBODY,
        1,
        &[
            "nodes",
            "checkout",
            "-n",
            "1-2",
            "--until",
            "+1h",
            "--reason",
            "nobody's bench",
        ],
    ));
    for _ in 0..3 {
        ok(krg(&c, tests, 1, &["run", "--", "true"]));
    }
    let metrics = get(port, "/metrics");
    let placed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("krg_placements_total{"))
        .collect();
    assert_eq!(
        placed,
        [r#"krg_placements_total{by="least_load",node="3"} 3"#],
        "{metrics}"
    );
    for want in [
        r#"krg_node_owned{node="1",owner="nobody"} 1"#,
        r#"krg_node_owned{node="2",owner="nobody"} 1"#,
        r#"krg_node_owned{node="3",owner=""} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == want), "{want} in {metrics}");
    }
    let status: Value = serde_json::from_str(&get(port, "/status.json"))?;
    assert_eq!(status["nodes"][1]["owner"]["user"], "nobody", "{status}");
    assert_eq!(status["nodes"][1]["owner"]["reason"], "nobody's bench");
    assert!(status["nodes"][2]["owner"].is_null(), "{status}");
    let page = get(port, "/");
    assert!(
        page.contains("<th>owner</th>") && page.contains("<td>nobody until "),
        "{page}"
    );
    // A user's migration to a node they do not hold is refused too.
    let e = refused(as_user(&c, tests, 1, "migrate", &["1", "2"]));
    assert!(e.contains("node 2 is checked out by nobody"), "{e}");

    // Every krgd killed and restarted: the checkouts come back from disk.
    for id in 1..=3 {
        c.node(id)?.kill9();
    }
    for id in 1..=3 {
        c.start(id)?;
    }
    c.wait_agreement(&[1, 2, 3], SETTLE)?;
    // (Entries past the last commit index a node saved are applied once
    // the new leader commits again: wait for that, boundedly.)
    let expect = owned_by(&[(1, Some("nobody")), (2, Some("nobody")), (3, None)]);
    for via in 1..=3 {
        wait_for(
            SETTLE,
            &format!("node {via}'s checkouts after the restart"),
            || (owners(&c, via) == expect).then_some(()),
        )?;
    }
    let e = wait_for(
        SETTLE,
        "a leader to refuse the overlapping checkout",
        || {
            let o = adm(
                &c,
                0,
                3,
                &[
                    "nodes", "checkout", "-n", "2-3", "--for", "tests", "--until", "+1h",
                ],
            );
            let e = text(&o).1;
            e.contains("checked out by").then_some(e)
        },
    )?;
    assert!(e.contains("node 2 is checked out by nobody"), "{e}");
    Ok(())
}
