//! One client of the fault campaign: on its node, `krgadm nodes add/del`
//! of random nodes and `krgadm cluster status`, each recorded with its
//! invocation and completion times and what came of it.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::check::{Event, Observation, Op, Outcome};
use super::{Rng, Shared};

/// A `krgadm` that has not answered by then is killed: its outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) fn spawn(
    node: u32,
    socket: PathBuf,
    ids: Vec<u32>,
    mut rng: Rng,
    shared: Arc<Shared>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !shared.stop.load(Ordering::SeqCst) {
            if rng.range(0, 9) < 4 {
                read(node, &socket, &shared);
            } else {
                let x = ids[rng.range(0, ids.len() as u64 - 1) as usize];
                let add = rng.range(0, 1) == 0;
                change(node, &socket, x, add, &shared);
            }
            std::thread::sleep(rng.millis(20, 200));
        }
    })
}

/// Run krgadm against `socket`: (exited successfully, stdout, stderr), or
/// None when it had to be killed.
fn krgadm(socket: &PathBuf, args: &[&str]) -> Option<(bool, String, String)> {
    let mut child = Command::new(crate::bin("krgadm"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + OP_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    Some((status.success(), out, err))
}

/// What a refusal says about the member set. Anything not known to leave
/// the set untouched is unknown.
pub fn classify(add: bool, stderr: &str) -> Outcome {
    let set_dependent = if add {
        stderr.contains("is already a member")
    } else {
        stderr.contains("is not a member of the cluster")
    };
    if set_dependent {
        return Outcome::Refused;
    }
    // The node asked forwarded the change and lost the answer: the leader
    // may have made it ("Connection refused" is then only the last retry's
    // error, not proof that nothing was sent).
    if stderr.contains("did not complete the change") {
        return Outcome::Unknown;
    }
    // Refused before anything was proposed (checks made first on the node
    // asked or on the leader), or never delivered to a krgd.
    let untouched = [
        "no krgd listens at",
        "no quorum: this node cannot reach a majority",
        "leadership moved to another node; run the command again",
        "leadership is moving; run the command again",
        "cannot join:",
        "(no address)",
        "Connection refused",
        "is not present",
        "is in another cluster",
        "cannot remove every member",
        "would leave no online member",
        "this node is not a member of a cluster",
        "sees members of several",
    ];
    if untouched.iter().any(|m| stderr.contains(m)) {
        Outcome::NoEffect
    } else {
        Outcome::Unknown
    }
}

fn change(node: u32, socket: &PathBuf, x: u32, add: bool, shared: &Shared) {
    let invoked = shared.now();
    let n = x.to_string();
    let verb = if add { "add" } else { "del" };
    let result = krgadm(socket, &["nodes", verb, "-n", &n]);
    let completed = shared.now();
    let outcome = match &result {
        Some((true, _, _)) => Outcome::Ok,
        Some((false, _, err)) => classify(add, err),
        None => Outcome::Unknown,
    };
    if outcome == Outcome::Unknown {
        // Why, without node numbers, so that the causes can be counted.
        let why = match &result {
            Some((_, _, err)) => err
                .trim()
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .take(90)
                .collect(),
            None => format!("no answer within {OP_TIMEOUT:?}"),
        };
        *shared
            .unknown_causes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(why)
            .or_default() += 1;
    }
    shared
        .events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Event {
            client: node,
            op: if add { Op::Add(x) } else { Op::Del(x) },
            outcome,
            invoked,
            completed,
            said: match result {
                Some((false, _, err)) => err,
                _ => String::new(),
            },
        });
}

fn read(node: u32, socket: &PathBuf, shared: &Shared) {
    let before = shared.incarnation(node);
    let Some((true, out, _)) = krgadm(socket, &["--json", "cluster", "status"]) else {
        return;
    };
    let at = shared.now();
    // An answer that straddles a restart belongs to no one run of krgd.
    if shared.incarnation(node) != before {
        return;
    }
    let Ok(s) = serde_json::from_str::<serde_json::Value>(&out) else {
        return;
    };
    let members: BTreeSet<u32> = s["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_u64().map(|m| m as u32))
        .collect();
    shared
        .observations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Observation {
            node,
            incarnation: before,
            at,
            epoch: s["epoch"].as_u64().unwrap_or(0),
            term: s["term"].as_u64().unwrap_or(0),
            leader: s["leader"].as_u64().map(|l| l as u32),
            members,
        });
}
