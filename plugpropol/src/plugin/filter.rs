//! Filter plug-ins: a transformation of a source's values computed by an
//! external program.
//!
//! ```text
//! plug-in → krgd at start:   input <unit>|any           (what its `input` link accepts)
//!                            output <unit>|same         (what it produces)
//!                            scope per_node|cluster     (optional, default per_node)
//!                            ready
//! krgd → plug-in, every second while `input` is linked:
//!                            value <node> <value>       (one per node with a value; `cluster` for a cluster-wide input)
//!                            filter
//! plug-in → krgd:            <node> <value>             (per_node scope; one per node it has a result for)
//!                            cluster <value>            (cluster scope)
//!                            end
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use super::probe::{ANSWER_TIMEOUT, START_TIMEOUT};
use super::process::PluginProcess;
use super::PluginEntry;
use crate::error::Result;
use crate::filters::ExternalFilter;
use crate::value::{NodeId, Reading, Readings, Scope, Series, Unit};

/// What a filter plug-in is asked to transform.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterInput {
    /// The values on its `input` link.
    pub readings: Readings,
    /// Their unit (how they print).
    pub unit: Unit,
    /// The unit of its output (how its answers parse).
    pub output: Unit,
}

/// One request: `value <node> <value>` for the last value of every holder,
/// then `filter`.
fn filter_request(input: &FilterInput) -> String {
    let mut req = String::new();
    for (who, v) in input.readings.latest() {
        let _ = writeln!(req, "value {who} {}", v.render_line(input.unit));
    }
    req.push_str("filter\n");
    req
}

pub struct PluginFilter {
    proc: PluginProcess,
    spec: ExternalFilter,
}

impl PluginFilter {
    pub fn start(entry: &PluginEntry, node: u32) -> Result<PluginFilter> {
        let proc = PluginProcess::start(entry, node)?;
        let spec = ExternalFilter {
            input: None,
            output: None,
            scope: Scope::PerNode,
            cache: None,
        };
        let mut f = PluginFilter { proc, spec };
        f.read_declaration()?;
        Ok(f)
    }

    fn read_declaration(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut seen_in, mut seen_out) = (false, false);
        loop {
            let line = self.proc.next_line(deadline)?;
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["ready"] if seen_in && seen_out => return Ok(()),
                ["input", u] => {
                    self.spec.input = self.unit_or(u, "any")?;
                    seen_in = true;
                }
                ["output", u] => {
                    self.spec.output = self.unit_or(u, "same")?;
                    seen_out = true;
                }
                ["scope", "per_node"] => self.spec.scope = Scope::PerNode,
                ["scope", "cluster"] => self.spec.scope = Scope::Cluster,
                _ => {
                    return Err(self.proc.bad(&format!(
                    "unexpected line {line:?} in its declaration (input, output, [scope], ready)"
                )))
                }
            }
        }
    }

    fn unit_or(&self, u: &str, wildcard: &str) -> Result<Option<Unit>> {
        if u == wildcard {
            return Ok(None);
        }
        Unit::parse(u)
            .map(Some)
            .ok_or_else(|| self.proc.bad(&format!("unknown unit {u}")))
    }

    /// The tree part: declared types, no output yet.
    pub fn spec(&self) -> ExternalFilter {
        self.spec.clone()
    }

    /// Send the input values and read the output.
    pub fn run(&mut self, input: &FilterInput) -> Result<Readings> {
        self.proc.send(&filter_request(input))?;
        let out_unit = input.output;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut per_node: BTreeMap<NodeId, Series> = BTreeMap::new();
        let mut cluster = Series::default();
        loop {
            let line = self.proc.next_line(deadline)?;
            if line.trim() == "end" {
                break;
            }
            let (who, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let r = Reading::parse(out_unit, value)
                .ok_or_else(|| self.proc.bad(&format!("bad output value {value:?}")))?;
            match (self.spec.scope, who) {
                (Scope::Cluster, "cluster") => cluster = Series::one(r),
                (Scope::PerNode, n) => {
                    let n: NodeId = n
                        .parse()
                        .map_err(|_| self.proc.bad(&format!("bad node {n:?} in {line:?}")))?;
                    per_node.insert(n, Series::one(r));
                }
                _ => {
                    return Err(self
                        .proc
                        .bad(&format!("answered {line:?}, expected `cluster <value>`")))
                }
            }
        }
        Ok(match self.spec.scope {
            Scope::PerNode => Readings::PerNode(per_node),
            Scope::Cluster => Readings::Cluster(cluster),
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

    #[test]
    fn doubles_per_node_values() {
        let (_d, e) = test_script(
            "echo 'input bytes'\necho 'output same'\necho ready\n\
             while read -r kind node value; do case $kind in\n\
             value) echo \"$node $((value * 2))\" ;;\n filter) echo end ;;\n esac; done\n",
        );
        let mut f = PluginFilter::start(&e, 1).unwrap();
        assert_eq!(f.spec().input, Some(Unit::Bytes));
        assert_eq!(f.spec().output, None);
        let input = FilterInput {
            readings: Readings::PerNode(
                [(1, 10.0), (2, 21.0)]
                    .into_iter()
                    .map(|(n, v)| (n, Series::one(Reading::Num(v))))
                    .collect(),
            ),
            unit: Unit::Bytes,
            output: Unit::Bytes,
        };
        assert_eq!(filter_request(&input), "value 1 10\nvalue 2 21\nfilter\n");
        let out = f.run(&input).unwrap();
        let Readings::PerNode(m) = out else {
            panic!("per node")
        };
        assert_eq!(m[&2].last(), Some(&Reading::Num(42.0)));
    }

    #[test]
    fn bad_declaration() {
        let (_d, e) = test_script("echo 'input bytes'\necho ready\n");
        assert!(PluginFilter::start(&e, 1).is_err());
    }
}
