//! `krg ps` and `krg kill`: the global process table, and signals to
//! processes named NODE:PID.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use krg_proto::admin::{AdminRequest, AdminResponse};
use krg_proto::client::AdminClient;
use krg_proto::proc::{parse_signal, ProcReply, ProcRequest, ProcRow};
use krg_proto::NodeId;
use serde_json::json;

use crate::nodesel::NodeSel;

async fn call(socket: &Path, req: ProcRequest) -> Result<ProcReply> {
    let mut client = AdminClient::connect(socket).await?;
    match client
        .call(&AdminRequest::Proc(req))
        .await
        .context("krgd did not answer")?
    {
        AdminResponse::Proc(r) => Ok(r),
        AdminResponse::Error(e) => Err(anyhow!(e.message)),
        other => Err(anyhow!("unexpected answer from krgd: {other:?}")),
    }
}

/// A user name or uid as a uid.
fn uid_of(user: &str) -> Result<u32> {
    if let Ok(n) = user.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => bail!("no user named '{user}'"),
        Err(e) => bail!("cannot look up user '{user}': {e}"),
    }
}

fn cpu_time(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn print_rows(rows: &[ProcRow]) {
    println!(
        "{:>5} {:>8} {:<8} {:>5} {:>8} {:<4} {:>8} COMMAND",
        "NODE", "PID", "USER", "%CPU", "RSS", "STAT", "TIME"
    );
    for r in rows {
        println!(
            "{:>5} {:>8} {:<8} {:>5.1} {:>8} {:<4} {:>8} {}",
            r.node,
            r.pid,
            r.user,
            r.cpu_permille as f64 / 10.0,
            r.rss_kib,
            r.state,
            cpu_time(r.cpu_ms),
            r.command
        );
    }
}

fn json_rows(rows: &[ProcRow], missing: &[(NodeId, String)]) -> serde_json::Value {
    let procs: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "node": r.node, "pid": r.pid, "ppid": r.ppid, "uid": r.uid, "user": r.user,
                "cpu": r.cpu_permille as f64 / 10.0, "rss_kib": r.rss_kib, "stat": r.state,
                "cpu_ms": r.cpu_ms, "elapsed_s": r.elapsed_s, "command": r.command,
            })
        })
        .collect();
    let missing: Vec<_> = missing
        .iter()
        .map(|(n, why)| json!({"node": n, "error": why}))
        .collect();
    json!({ "processes": procs, "unreachable": missing })
}

/// `krg ps`.
pub async fn ps(socket: &Path, nodes: &NodeSel, user: Option<&str>, as_json: bool) -> Result<u8> {
    let uid = user.map(uid_of).transpose()?;
    let reply = call(
        socket,
        ProcRequest::Ps {
            nodes: nodes.list()?,
            uid,
        },
    )
    .await?;
    let ProcReply::Ps { rows, missing } = reply else {
        bail!("unexpected answer from krgd: {reply:?}");
    };
    if as_json {
        println!("{}", json_rows(&rows, &missing));
    } else {
        print_rows(&rows);
    }
    for (node, why) in &missing {
        eprintln!("{}", crate::output::node_line(*node, why));
    }
    Ok(if missing.is_empty() { 0 } else { 1 })
}

/// `NODE:PID`.
fn parse_target(t: &str) -> Result<(NodeId, i32)> {
    let (node, pid) = t
        .split_once(':')
        .ok_or_else(|| anyhow!("'{t}' is not NODE:PID (e.g. 3:4096)"))?;
    let node = krg_proto::nodeset::parse_id(node).map_err(|e| anyhow!("'{t}': {e}"))?;
    let pid = pid
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("'{t}': '{pid}' is not a PID"))?;
    Ok((node, pid))
}

/// `krg kill`.
pub async fn kill(socket: &Path, signal: &str, targets: &[String]) -> Result<u8> {
    let signal = parse_signal(signal).map_err(|e| anyhow!(e))?;
    let targets: Vec<(NodeId, i32)> = targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<Result<_>>()?;
    let mut failed = false;
    for (node, pid) in targets {
        if let Err(e) = call(socket, ProcRequest::Kill { node, pid, signal }).await {
            eprintln!("krg: kill {node}:{pid}: {e:#}");
            failed = true;
        }
    }
    Ok(u8::from(failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_times() {
        assert_eq!(parse_target("3:4096").unwrap(), (3, 4096));
        for bad in ["3", "x:1", "3:x", "0:1", "3:-1", "3:0"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert_eq!(cpu_time(61_000), "1:01");
        assert_eq!(cpu_time(3_723_000), "1:02:03");
    }
}
