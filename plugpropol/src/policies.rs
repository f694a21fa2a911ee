//! Scheduling policies. A policy lives in a scheduler directory and reads
//! its inputs through ports (links to probe sources or filters).

use std::collections::{BTreeMap, BTreeSet};

use crate::balance::{self, BalanceConfig};
use crate::error::{Error, Result};
use crate::plugin::PortSpec;
use crate::value::{NodeId, Reading, Readings, Scope, Unit, ValueType};

pub const BUILTIN_POLICIES: &[&str] = &["echo_policy", "placement_policy", "balance_policy"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    MostFreeMem,
    LeastLoad,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::MostFreeMem => "most_free_mem",
            Mode::LeastLoad => "least_load",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Accepts any number of ports named `port_*` of any type; logs and
    /// exposes (file `received`) what they carry.
    Echo,
    /// Picks the node for a new process from `port_mem_free` (bytes per
    /// node) and/or `port_load` (load or percent per node).
    Placement { mode: Mode },
    /// A plug-in (see [`crate::plugin::PluginPolicy`]) with the ports it
    /// declared; its decision is in the file `decision`. One that declared
    /// `moves` has the moving rules of a balance policy (`max_moves`,
    /// `interval`, `min_residency`; its threshold is unused) and its moves
    /// are in the file `decisions`.
    External {
        ports: Vec<PortSpec>,
        moves: Option<BalanceConfig>,
    },
    /// Moves this node's processes to the least loaded node (see
    /// [`crate::balance`]); its decisions are in the file `decisions`.
    Balance(BalanceConfig),
}

/// The attributes of a policy plug-in that moves processes.
pub const PLUGIN_MOVE_ATTRIBUTES: &[&str] = &["max_moves", "interval", "min_residency"];

pub const PORT_MEM: &str = "port_mem_free";
pub const PORT_LOAD: &str = "port_load";

impl Policy {
    pub fn new(kind_name: &str) -> Option<Policy> {
        match kind_name {
            "echo_policy" => Some(Policy::Echo),
            "placement_policy" => Some(Policy::Placement {
                mode: Mode::MostFreeMem,
            }),
            "balance_policy" => Some(Policy::Balance(BalanceConfig::default())),
            _ => None,
        }
    }

    pub fn attributes(&self) -> &'static [&'static str] {
        match self {
            Policy::Echo | Policy::External { moves: None, .. } => &[],
            Policy::External { moves: Some(_), .. } => PLUGIN_MOVE_ATTRIBUTES,
            Policy::Placement { .. } => &["mode"],
            Policy::Balance(_) => balance::ATTRIBUTES,
        }
    }

    /// Read-only files the policy computes.
    pub fn outputs(&self) -> &'static [&'static str] {
        match self {
            Policy::Echo => &["received"],
            Policy::Placement { .. } => &["placement"],
            Policy::External { moves: None, .. } => &["decision"],
            Policy::External { moves: Some(_), .. } => &["decision", "decisions"],
            Policy::Balance(_) => &["decisions"],
        }
    }

    pub fn get(&self, attr: &str) -> Option<String> {
        match (self, attr) {
            (Policy::Placement { mode }, "mode") => Some(mode.name().to_string()),
            (Policy::Balance(b), _) => b.get(attr),
            (Policy::External { moves: Some(b), .. }, a) if PLUGIN_MOVE_ATTRIBUTES.contains(&a) => {
                b.get(attr)
            }
            _ => None,
        }
    }

    pub fn set(&mut self, attr: &str, text: &str) -> Result<()> {
        match (self, attr) {
            (Policy::Placement { mode }, "mode") => {
                *mode = match text {
                    "most_free_mem" => Mode::MostFreeMem,
                    "least_load" => Mode::LeastLoad,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "mode must be most_free_mem or least_load, not {text:?}"
                        )))
                    }
                };
                Ok(())
            }
            (Policy::Balance(b), _) => b.set(attr, text),
            (Policy::External { moves: Some(b), .. }, a) if PLUGIN_MOVE_ATTRIBUTES.contains(&a) => {
                b.set(attr, text)
            }
            _ => Err(Error::NotPermitted(format!("{attr} is not writable"))),
        }
    }

    /// Whether `port` is a port of this policy that accepts `t`.
    pub fn check_port(&self, port: &str, t: ValueType) -> Result<()> {
        match self {
            Policy::External { ports, .. } => {
                let spec = ports.iter().find(|p| p.name == port).ok_or_else(|| {
                    let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
                    Error::Invalid(format!(
                        "this policy has ports {}, not {port}",
                        names.join(", ")
                    ))
                })?;
                match spec.unit {
                    Some(u) if u != t.unit => Err(Error::Invalid(format!(
                        "{port} needs {} values, the target gives {t}",
                        u.name()
                    ))),
                    _ => Ok(()),
                }
            }
            Policy::Echo if port.starts_with("port_") && port.len() > 5 => Ok(()),
            Policy::Echo => Err(Error::Invalid(format!(
                "echo_policy ports are named port_<something>, not {port}"
            ))),
            Policy::Balance(_) => {
                let ok = matches!(t.unit, Unit::Load | Unit::Percent | Unit::Count);
                if port != balance::PORT {
                    return Err(Error::Invalid(format!(
                        "balance_policy has the port {}, not {port}",
                        balance::PORT
                    )));
                }
                if !ok || t.scope != Scope::PerNode {
                    return Err(Error::Invalid(format!(
                        "{port} needs per-node load/percent/count values, the target gives {t}"
                    )));
                }
                Ok(())
            }
            Policy::Placement { .. } => {
                let ok = match port {
                    PORT_MEM => t.unit == Unit::Bytes,
                    PORT_LOAD => matches!(t.unit, Unit::Load | Unit::Percent | Unit::Count),
                    _ => {
                        return Err(Error::Invalid(format!(
                            "placement_policy has ports {PORT_MEM} and {PORT_LOAD}, not {port}"
                        )))
                    }
                };
                if !ok || t.scope != Scope::PerNode {
                    return Err(Error::Invalid(format!(
                        "{port} needs per-node {} values, the target gives {t}",
                        if port == PORT_MEM {
                            "bytes"
                        } else {
                            "load/percent/count"
                        }
                    )));
                }
                Ok(())
            }
        }
    }
}

fn current(r: Option<&Readings>, node: NodeId) -> Option<f64> {
    match r? {
        Readings::PerNode(m) => m.get(&node)?.last().and_then(Reading::num),
        Readings::Cluster(_) => None,
    }
}

/// The node for a new process: among `eligible` nodes that have a value on
/// the deciding port, the one with the most free memory (ties: least load,
/// then lowest id) or the least load (ties: most memory, then lowest id).
pub fn place(
    mode: Mode,
    mem: Option<&Readings>,
    load: Option<&Readings>,
    eligible: &BTreeSet<NodeId>,
) -> Result<(NodeId, String)> {
    let (deciding, port) = match mode {
        Mode::MostFreeMem => (mem, PORT_MEM),
        Mode::LeastLoad => (load, PORT_LOAD),
    };
    if deciding.is_none() {
        return Err(Error::Invalid(format!(
            "mode {} needs {port} linked",
            mode.name()
        )));
    }
    let mut best: Option<(NodeId, f64, f64)> = None; // (node, mem, load)
    for &n in eligible {
        let (m, l) = (current(mem, n), current(load, n));
        let have = match mode {
            Mode::MostFreeMem => m.is_some(),
            Mode::LeastLoad => l.is_some(),
        };
        if !have {
            continue;
        }
        let (m, l) = (m.unwrap_or(0.0), l.unwrap_or(0.0));
        let better = match best {
            None => true,
            Some((_, bm, bl)) => match mode {
                Mode::MostFreeMem => m > bm || (m == bm && l < bl),
                Mode::LeastLoad => l < bl || (l == bl && m > bm),
            },
        };
        if better {
            best = Some((n, m, l));
        }
    }
    let (node, m, l) =
        best.ok_or_else(|| Error::NotFound(format!("no online node has a value on {port} yet")))?;
    let reason = match mode {
        Mode::MostFreeMem => format!(
            "most free memory ({} bytes) among {} node(s)",
            m as u64,
            eligible.len()
        ),
        Mode::LeastLoad => format!("least load ({l:.2}) among {} node(s)", eligible.len()),
    };
    Ok((node, reason))
}

/// Render what an echo policy receives: `port node value` lines.
pub fn echo_lines(ports: &BTreeMap<String, (ValueType, Readings)>) -> String {
    let mut out = String::new();
    for (port, (t, r)) in ports {
        match r {
            Readings::PerNode(m) => {
                for (n, s) in m {
                    if let Some(v) = s.last() {
                        out.push_str(&format!(
                            "{port} node{n} {}\n",
                            v.render(t.unit).replace('\n', " | ")
                        ));
                    }
                }
            }
            Readings::Cluster(s) => {
                if let Some(v) = s.last() {
                    out.push_str(&format!("{port} cluster {}\n", v.render(t.unit)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Series;

    fn per(v: &[(NodeId, f64)]) -> Readings {
        Readings::PerNode(
            v.iter()
                .map(|(n, x)| (*n, Series::one(Reading::Num(*x))))
                .collect(),
        )
    }

    #[test]
    fn placement_picks_most_memory_then_least_load() {
        let all = BTreeSet::from([1, 2, 3]);
        let mem = per(&[(1, 100.0), (2, 300.0), (3, 300.0)]);
        let load = per(&[(1, 0.1), (2, 2.0), (3, 1.0)]);
        assert_eq!(
            place(Mode::MostFreeMem, Some(&mem), Some(&load), &all)
                .unwrap()
                .0,
            3
        );
        assert_eq!(
            place(Mode::LeastLoad, Some(&mem), Some(&load), &all)
                .unwrap()
                .0,
            1
        );
        // Node 3 is not eligible (offline): node 2 wins.
        assert_eq!(
            place(Mode::MostFreeMem, Some(&mem), None, &BTreeSet::from([1, 2]))
                .unwrap()
                .0,
            2
        );
        assert!(place(Mode::LeastLoad, Some(&mem), None, &all).is_err());
        assert!(place(Mode::MostFreeMem, Some(&per(&[])), None, &all).is_err());
    }

    #[test]
    fn ports_are_type_checked() {
        let p = Policy::new("placement_policy").unwrap();
        let bytes = ValueType {
            unit: Unit::Bytes,
            scope: Scope::PerNode,
        };
        let load = ValueType {
            unit: Unit::Load,
            scope: Scope::PerNode,
        };
        assert!(p.check_port(PORT_MEM, bytes).is_ok());
        assert!(p.check_port(PORT_MEM, load).is_err());
        assert!(p.check_port(PORT_LOAD, load).is_ok());
        assert!(p.check_port("port_x", load).is_err());
        assert!(p
            .check_port(
                PORT_MEM,
                ValueType {
                    unit: Unit::Bytes,
                    scope: Scope::Cluster
                }
            )
            .is_err());
        assert!(Policy::Echo.check_port("port_anything", bytes).is_ok());
        assert!(Policy::Echo.check_port("input", bytes).is_err());
    }
}
