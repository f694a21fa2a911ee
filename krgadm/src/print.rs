//! Text and JSON output of krgadm.

use krg_proto::cluster::{ClusterStatus, NodeInfo};
use serde_json::json;

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
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    println!(
        "{:>5}  {:<17}  {:<21}  {:<8}  VOTER",
        "NODE", "MAC", "ADDRESS", "STATE"
    );
    for r in rows {
        let mac = r.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
        let voter = if r.voter { "yes" } else { "" };
        println!(
            "{:>5}  {:<17}  {:<21}  {:<8}  {voter}",
            r.id,
            mac,
            r.addr.to_string(),
            r.state.to_string()
        );
    }
}
