//! File rendering: what `cat` shows, generated at each read from the live
//! values (attributes, `value`, `nodes`, `type`, `status`, and the outputs
//! of policies), plus the echo policies' report for the daemon log.

use std::collections::BTreeMap;

use super::data::{Comp, Parts, PolicyComp};
use super::namespace::{CompId, DirRole, FileRole, Ino, Kind, Namespace, SourceRef};
use crate::error::{Error, Result};
use crate::policies::{self, Policy};
use crate::value::{Readings, Series};

/// The content of file `ino`.
pub(super) fn read(ns: &Namespace, parts: &Parts, ino: Ino) -> Result<String> {
    let role = match &ns.entry(ino)?.kind {
        Kind::File(role) => *role,
        _ => return Err(Error::Invalid(format!("{} is not a file", ns.path(ino)))),
    };
    Ok(match role {
        FileRole::Attr(c, name) => format!("{}\n", attr_value(parts, c, name)?),
        FileRole::Value(src) => value_text(parts, src),
        FileRole::Nodes(src) => nodes_text(parts, src),
        FileRole::Type(src) => match parts.source_type(src) {
            Some(t) => format!("{t}\n"),
            None => "unknown (input not linked)\n".to_string(),
        },
        FileRole::Status(c) => match parts.get(c) {
            Some(Comp::Probe(p)) => format!("{}\n", p.status),
            _ => String::new(),
        },
        FileRole::Output(c, name) => output_text(parts, c, name),
    })
}

fn attr_value(parts: &Parts, c: CompId, name: &str) -> Result<String> {
    let v = match (parts.get(c), name) {
        (Some(Comp::Probe(p)), "probe_period") => Some(p.period.as_millis().to_string()),
        (Some(Comp::Filter(f)), _) => f.filter.get(name),
        (Some(Comp::Policy(p)), _) => p.policy.get(name),
        _ => None,
    };
    v.ok_or_else(|| Error::NotFound(format!("no attribute {name}")))
}

/// This node's last value (a cluster-wide source: the cluster's); empty
/// while there is none.
fn value_text(parts: &Parts, src: SourceRef) -> String {
    let (Some(t), Some(r)) = (parts.source_type(src), parts.readings(src)) else {
        return String::new();
    };
    let last = match &r {
        Readings::PerNode(m) => m.get(&parts.node()).and_then(Series::last),
        Readings::Cluster(s) => s.last(),
    };
    last.map(|v| format!("{}\n", v.render(t.unit)))
        .unwrap_or_default()
}

/// `<node> <value>` per node (or `cluster <value>`), one line each.
fn nodes_text(parts: &Parts, src: SourceRef) -> String {
    let (Some(t), Some(r)) = (parts.source_type(src), parts.readings(src)) else {
        return String::new();
    };
    r.latest()
        .into_iter()
        .map(|(who, v)| format!("{who} {}\n", v.render_line(t.unit)))
        .collect()
}

/// A policy's computed file: `received`, `placement`, `decision` or
/// `decisions`.
fn output_text(parts: &Parts, c: CompId, name: &str) -> String {
    let Some(Comp::Policy(p)) = parts.get(c) else {
        return String::new();
    };
    match (&p.policy, name) {
        (Policy::Echo, "received") => received(parts, p),
        (Policy::Balance(_) | Policy::External { moves: Some(_), .. }, "decisions") => {
            p.decisions.iter().map(|l| format!("{l}\n")).collect()
        }
        (Policy::Placement { .. }, "placement") | (Policy::External { .. }, "decision") => {
            match parts.place_with(c) {
                Ok((node, reason)) => format!("{node} {reason}\n"),
                Err(e) => format!("none: {e}\n"),
            }
        }
        _ => String::new(),
    }
}

/// What an echo policy's ports carry.
fn received(parts: &Parts, p: &PolicyComp) -> String {
    let ports: BTreeMap<_, _> = p
        .ports
        .iter()
        .filter_map(|(port, l)| {
            let typed = (parts.source_type(l.source)?, parts.readings(l.source)?);
            Some((port.clone(), typed))
        })
        .collect();
    policies::echo_lines(&ports)
}

/// What every echo policy receives, as `(policy path, lines)`.
pub(super) fn echo_report(ns: &Namespace, parts: &Parts) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (ino, e) in ns.entries() {
        let Kind::Dir {
            role: DirRole::Policy(c),
            ..
        } = e.kind
        else {
            continue;
        };
        if let Some(Comp::Policy(
            p @ PolicyComp {
                policy: Policy::Echo,
                ..
            },
        )) = parts.get(c)
        {
            out.push((ns.path(ino), received(parts, p)));
        }
    }
    out.sort();
    out
}
