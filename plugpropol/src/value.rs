//! Values that flow from probes through filters to policies: their units,
//! their scope (one value per node, or one for the whole cluster) and how
//! they print.

use std::collections::{BTreeMap, VecDeque};

/// Node ids as krg numbers them.
pub type NodeId = u32;

/// How many past samples a source keeps per node (moving averages read them).
pub const HISTORY: usize = 64;

/// What a number means. Links are type-checked on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Bytes,
    /// A load average (runnable tasks averaged over time).
    Load,
    Percent,
    Count,
    /// 0 or 1 (threshold filter output).
    Flag,
    /// Free text (process tables); never numeric.
    Text,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Load => "load",
            Unit::Percent => "percent",
            Unit::Count => "count",
            Unit::Flag => "flag",
            Unit::Text => "text",
        }
    }

    pub fn parse(s: &str) -> Option<Unit> {
        Some(match s {
            "bytes" => Unit::Bytes,
            "load" => Unit::Load,
            "percent" => Unit::Percent,
            "count" => Unit::Count,
            "flag" => Unit::Flag,
            "text" => Unit::Text,
            _ => return None,
        })
    }

    pub fn is_numeric(self) -> bool {
        self != Unit::Text
    }
}

/// Whether a source has one value per node or one value for the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    PerNode,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueType {
    pub unit: Unit,
    pub scope: Scope,
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scope = match self.scope {
            Scope::PerNode => "per node",
            Scope::Cluster => "cluster-wide",
        };
        write!(f, "{} ({scope})", self.unit.name())
    }
}

/// One sampled value.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Num(f64),
    Text(String),
}

impl Reading {
    pub fn num(&self) -> Option<f64> {
        match self {
            Reading::Num(v) => Some(*v),
            Reading::Text(_) => None,
        }
    }

    /// How the value prints in `value` files and travels between nodes.
    pub fn render(&self, unit: Unit) -> String {
        match self {
            Reading::Text(t) => t.clone(),
            Reading::Num(v) => match unit {
                Unit::Load | Unit::Percent => format!("{v:.2}"),
                _ => format!("{}", v.round() as i64),
            },
        }
    }

    /// [`Reading::render`] on one line: the newlines of a text value become
    /// ` | ` (for `nodes` files and line protocols).
    pub fn render_line(&self, unit: Unit) -> String {
        self.render(unit).replace('\n', " | ")
    }

    /// Parse a rendered value of `unit` (plug-in output, peer replies).
    pub fn parse(unit: Unit, s: &str) -> Option<Reading> {
        if unit == Unit::Text {
            return Some(Reading::Text(s.to_string()));
        }
        let v: f64 = s.trim().parse().ok()?;
        v.is_finite().then_some(Reading::Num(v))
    }
}

/// The recent samples of one source on one node, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub points: VecDeque<Reading>,
    /// Sample counter of the producer: a pulled remote value is appended
    /// only when it is a new sample.
    pub seq: u64,
}

impl Series {
    pub fn one(r: Reading) -> Series {
        Series {
            points: VecDeque::from([r]),
            seq: 0,
        }
    }

    pub fn push(&mut self, r: Reading, seq: u64) {
        if self.points.len() == HISTORY {
            self.points.pop_front();
        }
        self.points.push_back(r);
        self.seq = seq;
    }

    pub fn last(&self) -> Option<&Reading> {
        self.points.back()
    }
}

/// What a source currently holds: per node, or one cluster-wide series.
#[derive(Debug, Clone, PartialEq)]
pub enum Readings {
    PerNode(BTreeMap<NodeId, Series>),
    Cluster(Series),
}

/// Whose value it is: one node's, or the cluster's (a cluster-wide filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Node(NodeId),
    Cluster,
}

/// `2` or `cluster`, as `nodes` files and the plug-in protocols write it.
impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Node(n) => write!(f, "{n}"),
            Holder::Cluster => f.write_str("cluster"),
        }
    }
}

impl Readings {
    /// The last value of every holder that has one, in node order.
    pub fn latest(&self) -> Vec<(Holder, &Reading)> {
        match self {
            Readings::PerNode(m) => m
                .iter()
                .filter_map(|(n, s)| Some((Holder::Node(*n), s.last()?)))
                .collect(),
            Readings::Cluster(s) => s.last().map(|v| (Holder::Cluster, v)).into_iter().collect(),
        }
    }
}
