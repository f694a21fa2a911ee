//! Text and JSON output of krgadm.

use krg_proto::cluster::{ClusterStatus, NodeInfo, NodeOwner};
use serde_json::json;

use crate::until;

fn owner_json(o: &Option<NodeOwner>) -> serde_json::Value {
    match o {
        None => serde_json::Value::Null,
        Some(o) => json!({
            "user": o.user,
            "uid": o.uid,
            "until": until::show(o.until_ms),
            "until_ms": o.until_ms,
            "since": until::show(o.since_ms),
            "reason": o.reason,
        }),
    }
}

fn owner_cells(o: &Option<NodeOwner>) -> (String, String) {
    match o {
        None => ("-".into(), "-".into()),
        Some(o) => (o.user.clone(), until::show(o.until_ms)),
    }
}

/// The rows an ownership change named, after it.
pub fn owned(rows: &[NodeInfo], as_json: bool) {
    if as_json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| json!({ "id": r.id, "owner": owner_json(&r.owner) }))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    println!("{:>5}  {:<12}  {:<20}  REASON", "NODE", "OWNER", "UNTIL");
    for r in rows {
        let (owner, until) = owner_cells(&r.owner);
        let reason = r.owner.as_ref().map(|o| o.reason.as_str()).unwrap_or("");
        println!("{:>5}  {owner:<12}  {until:<20}  {reason}", r.id);
    }
}

pub fn status(s: &ClusterStatus, as_json: bool) {
    if as_json {
        let v = json!({
            "session": s.session,
            "this_node": s.this_node,
            "epoch": s.epoch,
            "term": s.term,
            "leader": s.leader,
            "members": s.members,
            "online": s.online,
            "health": s.health.to_string(),
        });
        println!("{v}");
        return;
    }
    let members: Vec<String> = s.members.iter().map(|m| m.to_string()).collect();
    println!("session:  {}", s.session);
    println!("node:     {} (answering)", s.this_node);
    println!("epoch:    {}", s.epoch);
    println!(
        "leader:   {} (term {})",
        s.leader
            .map(|l| l.to_string())
            .unwrap_or_else(|| "none".into()),
        s.term
    );
    println!(
        "members:  {} ({} online): {}",
        s.members.len(),
        s.online,
        members.join(" ")
    );
    println!("health:   {}", s.health);
}

pub fn nodes(rows: &[NodeInfo], as_json: bool) {
    if as_json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "mac": r.mac.map(|m| m.to_string()),
                    "address": r.addr.to_string(),
                    "state": r.state.to_string(),
                    "voter": r.voter,
                    "owner": owner_json(&r.owner),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    println!(
        "{:>5}  {:<17}  {:<21}  {:<8}  {:<5}  {:<12}  UNTIL",
        "NODE", "MAC", "ADDRESS", "STATE", "VOTER", "OWNER"
    );
    for r in rows {
        let mac = r.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
        let voter = if r.voter { "yes" } else { "" };
        let (owner, until) = owner_cells(&r.owner);
        println!(
            "{:>5}  {:<17}  {:<21}  {:<8}  {voter:<5}  {owner:<12}  {until}",
            r.id,
            mac,
            r.addr.to_string(),
            r.state.to_string()
        );
    }
}
