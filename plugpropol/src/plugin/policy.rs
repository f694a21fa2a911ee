//! Policy plug-ins: a scheduling decision made by an external program from
//! what the policy's ports carry.
//!
//! ```text
//! plug-in → krgd at start:   port <name> <unit>|any    (one or more; names start with port_)
//!                            moves                     (optional: it may answer `move`)
//!                            ready
//! krgd → plug-in, every second:
//!                            input <port> <node> <value>   (per linked port and node with a value;
//!                                                           node is `cluster` for a cluster-wide value)
//!                            process <pid> <load> movable|held <why...>
//!                                                      (only to a plug-in that declared `moves`:
//!                                                       this node's processes, see crate::balance)
//!                            decide
//! plug-in → krgd:            place <node> <reason...>   or   none <reason...>
//!                            or, if it declared `moves`:  move <pid> <node> <reason...>
//! ```
//!
//! A plug-in that does not declare `moves` is asked and answers exactly as
//! before the line existed (the protocol is extended, not changed).

use std::fmt::Write as _;
use std::time::Instant;

use super::probe::{ANSWER_TIMEOUT, START_TIMEOUT};
use super::process::PluginProcess;
use super::PluginEntry;
use crate::balance::Candidate;
use crate::error::Result;
use crate::value::{NodeId, Readings, Unit};

/// A port a policy plug-in declares; `unit` None accepts any type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub unit: Option<Unit>,
}

/// What a policy answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run new processes on `node`.
    Place { node: NodeId, reason: String },
    /// No node: the plug-in said `none`, or it could not be asked.
    Nowhere { why: String },
    /// Move process `pid` of this node to `node` (only from a plug-in that
    /// declared `moves`; the embedder checks and carries it out).
    Move {
        pid: i32,
        node: NodeId,
        reason: String,
    },
}

/// What one linked port carries, as a policy plug-in is told it.
#[derive(Debug, Clone, PartialEq)]
pub struct PortInput {
    pub port: String,
    /// The unit of the linked source (how its values print).
    pub unit: Unit,
    pub readings: Readings,
}

/// One decision request: `input <port> <node> <value>` for the last value
/// of every port and holder, `process <pid> <load> movable|held <why>` for
/// each of this node's processes (empty for a plug-in that does not move
/// processes), then `decide`.
fn decide_request(inputs: &[PortInput], procs: &[Candidate]) -> String {
    let mut req = String::new();
    for i in inputs {
        for (who, v) in i.readings.latest() {
            let _ = writeln!(req, "input {} {who} {}", i.port, v.render_line(i.unit));
        }
    }
    for p in procs {
        let state = match &p.held {
            None => "movable".to_string(),
            Some(why) => format!("held {}", why.replace('\n', " ")),
        };
        let _ = writeln!(req, "process {} {:.2} {state}", p.pid, p.demand);
    }
    req.push_str("decide\n");
    req
}

pub struct PluginPolicy {
    proc: PluginProcess,
    ports: Vec<PortSpec>,
    /// It declared `moves`: it is told this node's processes and may
    /// answer `move`.
    moves: bool,
}

impl PluginPolicy {
    pub fn start(entry: &PluginEntry, node: u32) -> Result<PluginPolicy> {
        let proc = PluginProcess::start(entry, node)?;
        let mut p = PluginPolicy {
            proc,
            ports: Vec::new(),
            moves: false,
        };
        p.read_declaration()?;
        Ok(p)
    }

    fn read_declaration(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let line = self.proc.next_line(deadline)?;
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["ready"] if !self.ports.is_empty() => return Ok(()),
                ["moves"] => self.moves = true,
                ["port", name, unit] => {
                    let unit = match *unit {
                        "any" => None,
                        u => Some(
                            Unit::parse(u)
                                .ok_or_else(|| self.proc.bad(&format!("unknown unit {u}")))?,
                        ),
                    };
                    let valid = name.len() > 5
                        && name.starts_with("port_")
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid || self.ports.iter().any(|p| p.name == *name) {
                        return Err(self.proc.bad(&format!(
                            "bad or repeated port name {name} (use port_<name>)"
                        )));
                    }
                    self.ports.push(PortSpec {
                        name: name.to_string(),
                        unit,
                    });
                }
                _ => {
                    return Err(self
                        .proc
                        .bad(&format!("unexpected line {line:?} in its declaration")))
                }
            }
        }
    }

    pub fn ports(&self) -> Vec<PortSpec> {
        self.ports.clone()
    }

    /// Whether it declared `moves`.
    pub fn moves(&self) -> bool {
        self.moves
    }

    /// Send what the linked ports carry (and, to a plug-in that moves
    /// processes, this node's processes) and read the decision.
    pub fn decide(&mut self, inputs: &[PortInput], procs: &[Candidate]) -> Result<Decision> {
        let procs = if self.moves { procs } else { &[] };
        self.proc.send(&decide_request(inputs, procs))?;
        let line = self.proc.next_line(Instant::now() + ANSWER_TIMEOUT)?;
        let (verb, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match verb {
            "place" => {
                let (node, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                let node: NodeId = node
                    .parse()
                    .map_err(|_| self.proc.bad(&format!("answered a bad node {node:?}")))?;
                Ok(Decision::Place {
                    node,
                    reason: reason.to_string(),
                })
            }
            "none" => Ok(Decision::Nowhere {
                why: rest.to_string(),
            }),
            "move" if self.moves => self.parse_move(rest),
            _ => Err(self.proc.bad(&format!(
                "answered {line:?} instead of place/none{}",
                if self.moves { "/move" } else { "" }
            ))),
        }
    }

    /// `move <pid> <node> <reason...>`: numbers only; whether the process
    /// may move is the embedder's to check.
    fn parse_move(&self, rest: &str) -> Result<Decision> {
        let mut w = rest.splitn(3, ' ');
        let (pid, node) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
        let pid = pid.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(|| {
            self.proc
                .bad(&format!("answered move of a bad pid {pid:?}"))
        })?;
        let node: NodeId = node.parse().map_err(|_| {
            self.proc
                .bad(&format!("answered move to a bad node {node:?}"))
        })?;
        Ok(Decision::Move {
            pid,
            node,
            reason: w.next().unwrap_or("").to_string(),
        })
    }

    pub fn failure(&self) -> Option<String> {
        self.proc.dead.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::test_script;
    use crate::value::{Reading, Series};

    #[test]
    fn picks_from_its_inputs() {
        // Smallest value on any port wins.
        let (_d, e) = test_script(
            "echo 'port port_v bytes'\necho 'port port_any any'\necho ready\nbest=''; bv=''\n\
             while read -r kind port node value; do case $kind in\n\
             input) if [ -z \"$best\" ] || [ \"$value\" -lt \"$bv\" ]; then best=$node; bv=$value; fi ;;\n\
             decide) if [ -n \"$best\" ]; then echo \"place $best smallest $bv\"; else echo 'none no input'; fi; best=''; bv='' ;;\n\
             esac; done\n",
        );
        let mut p = PluginPolicy::start(&e, 1).unwrap();
        assert_eq!(
            p.ports(),
            vec![
                PortSpec {
                    name: "port_v".into(),
                    unit: Some(Unit::Bytes)
                },
                PortSpec {
                    name: "port_any".into(),
                    unit: None
                },
            ]
        );
        let inputs = vec![PortInput {
            port: "port_v".into(),
            unit: Unit::Bytes,
            readings: per_node(&[(1, 500.0), (2, 300.0)]),
        }];
        assert_eq!(
            p.decide(&inputs, &[]).unwrap(),
            Decision::Place {
                node: 2,
                reason: "smallest 300".into()
            }
        );
        assert_eq!(
            p.decide(&[], &[]).unwrap(),
            Decision::Nowhere {
                why: "no input".into()
            }
        );
    }

    fn per_node(v: &[(NodeId, f64)]) -> Readings {
        Readings::PerNode(
            v.iter()
                .map(|(n, x)| (*n, Series::one(Reading::Num(*x))))
                .collect(),
        )
    }

    #[test]
    fn inputs_are_encoded_one_line_per_holder() {
        let text = Readings::Cluster(Series::one(Reading::Text("a\nb".into())));
        let inputs = [
            PortInput {
                port: "port_load".into(),
                unit: Unit::Load,
                readings: per_node(&[(1, 0.5), (3, 2.0)]),
            },
            PortInput {
                port: "port_t".into(),
                unit: Unit::Text,
                readings: text,
            },
        ];
        assert_eq!(
            decide_request(&inputs, &[]),
            "input port_load 1 0.50\ninput port_load 3 2.00\ninput port_t cluster a | b\ndecide\n"
        );
    }

    #[test]
    fn bad_answers_and_declarations() {
        let (_d, e) = test_script("echo 'port port_v bytes'\necho ready\nwhile read l; do [ \"$l\" = decide ] && echo 'place x'; done\n");
        let mut p = PluginPolicy::start(&e, 1).unwrap();
        assert!(p.decide(&[], &[]).is_err());
        let (_d, e) = test_script("echo 'port v bytes'\necho ready\n");
        assert!(PluginPolicy::start(&e, 1).is_err());
    }

    #[test]
    fn a_moving_plugin_sees_the_processes_and_answers_move() {
        // Moves the first movable process it is told about to node 2.
        let (_d, e) = test_script(
            "echo 'port port_load load'\necho moves\necho ready\npid=''\n\
             while read -r kind a b c rest; do case $kind in\n\
             process) [ -z \"$pid\" ] && [ \"$c\" = movable ] && pid=$a ;;\n\
             decide) if [ -n \"$pid\" ]; then echo \"move $pid 2 first movable\"; else echo 'none nothing'; fi; pid='' ;;\n\
             esac; done\n",
        );
        let mut p = PluginPolicy::start(&e, 1).unwrap();
        assert!(p.moves());
        let procs = [
            Candidate {
                pid: 40,
                demand: 1.0,
                held: Some("arrived 5 ms ago".into()),
            },
            Candidate {
                pid: 41,
                demand: 0.98,
                held: None,
            },
        ];
        assert_eq!(
            decide_request(&[], &procs),
            "process 40 1.00 held arrived 5 ms ago\nprocess 41 0.98 movable\ndecide\n"
        );
        assert_eq!(
            p.decide(&[], &procs).unwrap(),
            Decision::Move {
                pid: 41,
                node: 2,
                reason: "first movable".into()
            }
        );
        assert_eq!(
            p.decide(&[], &[]).unwrap(),
            Decision::Nowhere {
                why: "nothing".into()
            }
        );
    }

    #[test]
    fn move_is_refused_from_a_plugin_that_did_not_declare_it_and_garbage_too() {
        let answer = |decl: &str, reply: &str| {
            let (_d, e) = test_script(&format!(
                "echo 'port port_v any'\n{decl}echo ready\nwhile read l; do [ \"$l\" = decide ] && echo '{reply}'; done\n"
            ));
            let mut p = PluginPolicy::start(&e, 1).unwrap();
            p.decide(&[], &[])
        };
        let e = answer("", "move 12 2 why").unwrap_err().to_string();
        assert!(e.contains("instead of place/none"), "{e}");
        for bad in ["move", "move x 2", "move 12", "move 12 two", "move -4 2"] {
            let e = answer("echo moves\n", bad).unwrap_err().to_string();
            assert!(e.contains("answered move"), "{bad}: {e}");
        }
    }
}
