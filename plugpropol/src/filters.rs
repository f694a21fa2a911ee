//! Filters: transform a source's values. A filter has one input port
//! (`input`, a link to a probe source or another filter) and is itself a
//! source that policies and other filters can link to.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::value::{NodeId, Reading, Readings, Scope, Series, Unit, ValueType, HISTORY};

pub const BUILTIN_FILTERS: &[&str] = &[
    "moving_average",
    "threshold",
    "cluster_min",
    "cluster_max",
    "cluster_sum",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    /// Mean of the last `window` samples, per node.
    MovingAverage,
    /// 1 where the value is >= `threshold`, else 0, per node.
    Threshold,
    /// One value for the whole cluster: smallest, largest or sum of the
    /// nodes' current values.
    ClusterMin,
    ClusterMax,
    ClusterSum,
    /// A filter plug-in; its declaration and last output are in
    /// [`Filter::external`].
    External,
}

/// What a filter plug-in declared, and its last output (computed on the
/// plug-in's own thread; reads only copy it).
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalFilter {
    /// Accepted input unit (None: any).
    pub input: Option<Unit>,
    /// Output unit (None: the input's).
    pub output: Option<Unit>,
    pub scope: Scope,
    pub cache: Option<Readings>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub kind: FilterKind,
    pub window: usize,
    pub threshold: f64,
    pub external: Option<ExternalFilter>,
}

impl Filter {
    pub fn new(kind_name: &str) -> Option<Filter> {
        let kind = match kind_name {
            "moving_average" => FilterKind::MovingAverage,
            "threshold" => FilterKind::Threshold,
            "cluster_min" => FilterKind::ClusterMin,
            "cluster_max" => FilterKind::ClusterMax,
            "cluster_sum" => FilterKind::ClusterSum,
            _ => return None,
        };
        Some(Filter {
            kind,
            window: 5,
            threshold: 0.0,
            external: None,
        })
    }

    /// A filter plug-in's part of the tree.
    pub fn external(spec: ExternalFilter) -> Filter {
        Filter {
            kind: FilterKind::External,
            window: 5,
            threshold: 0.0,
            external: Some(spec),
        }
    }

    /// Writable attributes of this filter kind.
    pub fn attributes(&self) -> &'static [&'static str] {
        match self.kind {
            FilterKind::MovingAverage => &["window"],
            FilterKind::Threshold => &["threshold"],
            _ => &[],
        }
    }

    pub fn get(&self, attr: &str) -> Option<String> {
        match attr {
            "window" => Some(self.window.to_string()),
            "threshold" => Some(self.threshold.to_string()),
            _ => None,
        }
    }

    /// Validate and apply a write; on error nothing changes.
    pub fn set(&mut self, attr: &str, text: &str) -> Result<()> {
        match attr {
            "window" => {
                let w: usize = text
                    .parse()
                    .ok()
                    .filter(|w| (1..=HISTORY).contains(w))
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "window must be an integer from 1 to {HISTORY}, not {text:?}"
                        ))
                    })?;
                self.window = w;
            }
            "threshold" => {
                let t: f64 = text
                    .parse()
                    .ok()
                    .filter(|t: &f64| t.is_finite())
                    .ok_or_else(|| {
                        Error::Invalid(format!("threshold must be a number, not {text:?}"))
                    })?;
                self.threshold = t;
            }
            _ => return Err(Error::NotPermitted(format!("{attr} is not writable"))),
        }
        Ok(())
    }

    /// Whether `input` may be linked to this filter's input port.
    pub fn accepts(&self, input: ValueType) -> Result<()> {
        if let Some(ext) = &self.external {
            return match ext.input {
                Some(u) if u != input.unit => Err(Error::Invalid(format!(
                    "this filter plug-in needs {} values, the target gives {input}",
                    u.name()
                ))),
                _ => Ok(()),
            };
        }
        if !input.unit.is_numeric() {
            return Err(Error::Invalid(format!(
                "a filter needs numbers, the target gives {input}"
            )));
        }
        let cluster = matches!(
            self.kind,
            FilterKind::ClusterMin | FilterKind::ClusterMax | FilterKind::ClusterSum
        );
        if cluster && input.scope == Scope::Cluster {
            return Err(Error::Invalid(format!(
                "a cluster-wide filter needs per-node values, the target gives {input}"
            )));
        }
        Ok(())
    }

    /// The type this filter produces from `input`.
    pub fn output_type(&self, input: ValueType) -> ValueType {
        if let Some(ext) = &self.external {
            return ValueType {
                unit: ext.output.unwrap_or(input.unit),
                scope: ext.scope,
            };
        }
        match self.kind {
            FilterKind::MovingAverage => input,
            FilterKind::Threshold => ValueType {
                unit: Unit::Flag,
                scope: input.scope,
            },
            _ => ValueType {
                unit: input.unit,
                scope: Scope::Cluster,
            },
        }
    }

    pub fn apply(&self, input: &Readings) -> Readings {
        if let Some(ext) = &self.external {
            let empty = match ext.scope {
                Scope::PerNode => Readings::PerNode(BTreeMap::new()),
                Scope::Cluster => Readings::Cluster(Series::default()),
            };
            return ext.cache.clone().unwrap_or(empty);
        }
        match (self.kind, input) {
            (FilterKind::MovingAverage, Readings::PerNode(m)) => {
                Readings::PerNode(m.iter().map(|(n, s)| (*n, self.average(s))).collect())
            }
            (FilterKind::MovingAverage, Readings::Cluster(s)) => Readings::Cluster(self.average(s)),
            (FilterKind::Threshold, Readings::PerNode(m)) => {
                Readings::PerNode(m.iter().map(|(n, s)| (*n, self.flags(s))).collect())
            }
            (FilterKind::Threshold, Readings::Cluster(s)) => Readings::Cluster(self.flags(s)),
            (_, Readings::PerNode(m)) => Readings::Cluster(self.aggregate(m)),
            // Refused at link time by `accepts`.
            (_, Readings::Cluster(_)) => Readings::Cluster(Series::default()),
        }
    }

    fn average(&self, s: &Series) -> Series {
        let nums: Vec<f64> = s
            .points
            .iter()
            .rev()
            .take(self.window)
            .filter_map(Reading::num)
            .collect();
        if nums.is_empty() {
            return Series::default();
        }
        Series {
            seq: s.seq,
            ..Series::one(Reading::Num(nums.iter().sum::<f64>() / nums.len() as f64))
        }
    }

    fn flags(&self, s: &Series) -> Series {
        let points = s
            .points
            .iter()
            .filter_map(Reading::num)
            .map(|v| Reading::Num(if v >= self.threshold { 1.0 } else { 0.0 }))
            .collect();
        Series { points, seq: s.seq }
    }

    fn aggregate(&self, m: &BTreeMap<NodeId, Series>) -> Series {
        let current: Vec<f64> = m
            .values()
            .filter_map(|s| s.last().and_then(Reading::num))
            .collect();
        if current.is_empty() {
            return Series::default();
        }
        let v = match self.kind {
            FilterKind::ClusterMin => current.iter().copied().fold(f64::INFINITY, f64::min),
            FilterKind::ClusterMax => current.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            _ => current.iter().sum(),
        };
        Series::one(Reading::Num(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(v: &[f64]) -> Series {
        let mut s = Series::default();
        for (i, x) in v.iter().enumerate() {
            s.push(Reading::Num(*x), i as u64);
        }
        s
    }

    #[test]
    fn moving_average_and_threshold() {
        let mut f = Filter::new("moving_average").unwrap();
        f.set("window", "2").unwrap();
        assert!(f.set("window", "0").is_err() && f.set("window", "x").is_err());
        assert_eq!(f.window, 2);
        let input = Readings::PerNode(BTreeMap::from([(1, series(&[1.0, 2.0, 4.0]))]));
        let Readings::PerNode(out) = f.apply(&input) else {
            panic!()
        };
        assert_eq!(out[&1].last(), Some(&Reading::Num(3.0)));

        let mut t = Filter::new("threshold").unwrap();
        t.set("threshold", "2.5").unwrap();
        assert!(t.set("threshold", "nan").is_err());
        let Readings::PerNode(out) = t.apply(&input) else {
            panic!()
        };
        assert_eq!(out[&1].last(), Some(&Reading::Num(1.0)));
    }

    #[test]
    fn cluster_aggregates_and_types() {
        let input = Readings::PerNode(BTreeMap::from([(1, series(&[5.0])), (2, series(&[7.0]))]));
        for (k, want) in [
            ("cluster_min", 5.0),
            ("cluster_max", 7.0),
            ("cluster_sum", 12.0),
        ] {
            let f = Filter::new(k).unwrap();
            assert_eq!(
                f.apply(&input),
                Readings::Cluster(Series::one(Reading::Num(want)))
            );
            let per = ValueType {
                unit: Unit::Bytes,
                scope: Scope::PerNode,
            };
            assert!(f.accepts(per).is_ok());
            assert_eq!(f.output_type(per).scope, Scope::Cluster);
            assert!(f.accepts(f.output_type(per)).is_err());
        }
        let text = ValueType {
            unit: Unit::Text,
            scope: Scope::PerNode,
        };
        assert!(Filter::new("moving_average")
            .unwrap()
            .accepts(text)
            .is_err());
        assert!(Filter::new("median").is_none());
    }

    #[test]
    fn external_filters_check_types_and_serve_their_cache() {
        let mut f = Filter::external(ExternalFilter {
            input: Some(Unit::Bytes),
            output: Some(Unit::Percent),
            scope: Scope::PerNode,
            cache: None,
        });
        let bytes = ValueType {
            unit: Unit::Bytes,
            scope: Scope::PerNode,
        };
        assert!(f.accepts(bytes).is_ok());
        assert!(f
            .accepts(ValueType {
                unit: Unit::Load,
                scope: Scope::PerNode
            })
            .is_err());
        assert_eq!(f.output_type(bytes).unit, Unit::Percent);
        assert_eq!(
            f.apply(&Readings::Cluster(Series::default())),
            Readings::PerNode(BTreeMap::new())
        );
        let out = Readings::PerNode(BTreeMap::from([(1, series(&[50.0]))]));
        if let Some(ext) = f.external.as_mut() {
            ext.cache = Some(out.clone());
        }
        assert_eq!(f.apply(&Readings::Cluster(Series::default())), out);
        assert!(f.attributes().is_empty());
    }
}
