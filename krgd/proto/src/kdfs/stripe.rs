//! Striping: a directory's policy ([`StripePolicy`], `kdfsctl stripe 4M:4
//! DIR`) and the layout a file created under it gets ([`StripeLayout`]):
//! which nodes hold its units, and how a byte range splits among them.
//!
//! Every holder keeps its units at their own offsets in a sparse file (the
//! first holder in the file's object itself, whose size is the file's), so
//! a unit is found without any table: unit `i` is on `nodes[i % count]`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Smallest stripe unit: one page, so that pieces stay page-aligned.
pub const MIN_UNIT: u32 = 4096;
/// Largest stripe unit (1 GiB).
pub const MAX_UNIT: u32 = 1 << 30;
/// Most nodes one file is striped over.
pub const MAX_COUNT: u16 = 64;

/// A directory's striping policy: files created in it (and in
/// subdirectories made afterwards, which inherit it) are striped in units
/// of `unit` bytes over `count` nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripePolicy {
    /// Bytes per unit: a multiple of 4096, at most 1 GiB.
    pub unit: u32,
    /// Nodes per file, 2..=64 (fewer when fewer nodes are up).
    pub count: u16,
}

/// Where a striped file's data is: unit `i` (bytes `i*unit..(i+1)*unit`)
/// is held by `nodes[i % nodes.len()]`; `nodes[0]` owns the file's inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeLayout {
    /// Bytes per unit.
    pub unit: u32,
    /// The holders, the inode's owner first. Distinct when the file is
    /// made; a node may appear again later, when a holder that left
    /// handed its units to a node that already held others.
    pub nodes: Vec<NodeId>,
}

/// One holder's part of a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The node holding it.
    pub node: NodeId,
    /// Byte offset in the file (and in the holder's sparse copy).
    pub offset: u64,
    /// Bytes.
    pub len: u32,
}

/// Why a policy or a layout is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeError(pub String);

impl fmt::Display for StripeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StripeError {}

fn bad(why: impl Into<String>) -> StripeError {
    StripeError(why.into())
}

fn check_unit(unit: u32) -> Result<(), StripeError> {
    if !(MIN_UNIT..=MAX_UNIT).contains(&unit) || unit % MIN_UNIT != 0 {
        return Err(bad(format!(
            "stripe unit {unit} must be a multiple of 4K between 4K and 1G"
        )));
    }
    Ok(())
}

impl StripePolicy {
    /// Check the bounds (also of a policy read from the wire or a store).
    pub fn check(&self) -> Result<(), StripeError> {
        check_unit(self.unit)?;
        if !(2..=MAX_COUNT).contains(&self.count) {
            return Err(bad(format!(
                "stripe count {} must be between 2 and {MAX_COUNT}",
                self.count
            )));
        }
        Ok(())
    }

    /// The layout of a file created by node `first` when `up` (in cluster
    /// order) are the nodes available: `first`, then the next ones after it
    /// in that order, round the ring, `count` at most.
    pub fn layout_from(&self, first: NodeId, up: &[NodeId]) -> StripeLayout {
        let start = up.iter().position(|&n| n == first).unwrap_or(0);
        let others = up[start..]
            .iter()
            .chain(&up[..start])
            .copied()
            .filter(|&n| n != first);
        let nodes = std::iter::once(first)
            .chain(others)
            .take(usize::from(self.count))
            .collect();
        StripeLayout {
            unit: self.unit,
            nodes,
        }
    }
}

/// `4M:4`, `64K:2`, `1048576:3`: unit (bytes, or with K, M or G) and count.
impl FromStr for StripePolicy {
    type Err = StripeError;

    fn from_str(s: &str) -> Result<Self, StripeError> {
        let shape = || bad(format!("{s:?} is not UNIT:COUNT (like 4M:4)"));
        let (unit, count) = s.trim().split_once(':').ok_or_else(shape)?;
        let (digits, shift) = match unit.as_bytes().last() {
            Some(b'K' | b'k') => (&unit[..unit.len() - 1], 10),
            Some(b'M' | b'm') => (&unit[..unit.len() - 1], 20),
            Some(b'G' | b'g') => (&unit[..unit.len() - 1], 30),
            _ => (unit, 0),
        };
        let n: u64 = digits.parse().map_err(|_| shape())?;
        let unit = n
            .checked_shl(shift)
            .filter(|&u| u >> shift == n)
            .and_then(|u| u32::try_from(u).ok())
            .ok_or_else(|| bad(format!("stripe unit {unit} is larger than 1G")))?;
        let count = count.parse().map_err(|_| shape())?;
        let p = StripePolicy { unit, count };
        p.check()?;
        Ok(p)
    }
}

/// The shortest form `FromStr` reads back: `4M:4`.
impl fmt::Display for StripePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = self.unit;
        match () {
            _ if u % (1 << 30) == 0 => write!(f, "{}G:{}", u >> 30, self.count),
            _ if u % (1 << 20) == 0 => write!(f, "{}M:{}", u >> 20, self.count),
            _ => write!(f, "{}K:{}", u >> 10, self.count),
        }
    }
}

impl StripeLayout {
    /// Check the bounds and that the holders are node ids (not 0).
    pub fn check(&self) -> Result<(), StripeError> {
        check_unit(self.unit)?;
        if self.nodes.is_empty() || self.nodes.len() > usize::from(MAX_COUNT) {
            return Err(bad("a layout holds 1 to 64 nodes"));
        }
        if self.nodes.contains(&0) {
            return Err(bad("a layout's nodes must be node ids (not 0)"));
        }
        Ok(())
    }

    /// Every holder once, in layout order.
    pub fn holders(&self) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::with_capacity(self.nodes.len());
        for &n in &self.nodes {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    /// Every holder but the owner, once each: those keeping units in
    /// their `stripes/` copy.
    pub fn others(&self) -> Vec<NodeId> {
        let owner = self.nodes.first().copied();
        self.holders()
            .into_iter()
            .filter(|&n| Some(n) != owner)
            .collect()
    }

    /// The layout with holder `from`'s units held by `to` instead.
    pub fn replaced(&self, from: NodeId, to: NodeId) -> StripeLayout {
        let nodes = self
            .nodes
            .iter()
            .map(|&n| if n == from { to } else { n })
            .collect();
        StripeLayout {
            unit: self.unit,
            nodes,
        }
    }

    /// The node holding byte `offset`.
    pub fn holder(&self, offset: u64) -> NodeId {
        let unit = offset / u64::from(self.unit);
        self.nodes[(unit % self.nodes.len() as u64) as usize]
    }

    /// `offset..offset+len` cut at unit boundaries, each piece with its
    /// holder, in file order.
    pub fn pieces(&self, offset: u64, len: u32) -> Vec<Piece> {
        let (unit, end) = (u64::from(self.unit), offset.saturating_add(u64::from(len)));
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let next = ((at / unit) + 1).saturating_mul(unit).min(end);
            out.push(Piece {
                node: self.holder(at),
                offset: at,
                len: (next - at) as u32,
            });
            at = next;
        }
        out
    }
}

/// `4M:3 on nodes 1,2,3`.
impl fmt::Display for StripeLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = StripePolicy {
            unit: self.unit,
            count: self.nodes.len() as u16,
        };
        let nodes: Vec<String> = self.nodes.iter().map(|n| n.to_string()).collect();
        write!(f, "{shape} on nodes {}", nodes.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_and_print_back() {
        let p: StripePolicy = "4M:4".parse().unwrap();
        assert_eq!(
            p,
            StripePolicy {
                unit: 4 << 20,
                count: 4
            }
        );
        assert_eq!(p.to_string(), "4M:4");
        assert_eq!(
            "64k:2".parse::<StripePolicy>().unwrap().to_string(),
            "64K:2"
        );
        assert_eq!(
            "8192:3".parse::<StripePolicy>().unwrap().to_string(),
            "8K:3"
        );
        assert_eq!("1G:2".parse::<StripePolicy>().unwrap().unit, 1 << 30);
    }

    #[test]
    fn nonsense_policies_are_refused_with_the_reason() {
        for bad in [
            "", "4M", "4M:", ":4", "x:4", "4M:x", "4M:1", "4M:65", "1000:2",
        ] {
            assert!(bad.parse::<StripePolicy>().is_err(), "{bad:?} accepted");
        }
        let e = "2G:2".parse::<StripePolicy>().unwrap_err();
        assert!(e.0.contains("1G"), "{e}");
        assert!("99999999999999999999G:2".parse::<StripePolicy>().is_err());
    }

    #[test]
    fn a_layout_starts_at_the_creator_and_goes_round_the_ring() {
        let p = StripePolicy {
            unit: 4096,
            count: 3,
        };
        assert_eq!(p.layout_from(3, &[1, 2, 3, 4]).nodes, vec![3, 4, 1]);
        assert_eq!(p.layout_from(2, &[1, 2]).nodes, vec![2, 1]);
        // The creator counts even if the list missed it.
        assert_eq!(p.layout_from(9, &[1, 2, 3, 4]).nodes, vec![9, 1, 2]);
    }

    #[test]
    fn a_range_splits_at_unit_boundaries_among_the_holders() {
        let l = StripeLayout {
            unit: 4096,
            nodes: vec![2, 5, 7],
        };
        let p = l.pieces(4000, 10000);
        let got: Vec<(NodeId, u64, u32)> = p.iter().map(|p| (p.node, p.offset, p.len)).collect();
        assert_eq!(
            got,
            vec![
                (2, 4000, 96),
                (5, 4096, 4096),
                (7, 8192, 4096),
                (2, 12288, 1712)
            ]
        );
        assert_eq!(l.holder(3 * 4096), 2);
        assert!(l.pieces(100, 0).is_empty());
        assert!(l.check().is_ok());
        let dup = StripeLayout {
            unit: 4096,
            nodes: vec![2, 2],
        };
        assert!(
            dup.check().is_ok(),
            "a holder may come back after another left"
        );
        let zero = StripeLayout {
            unit: 4096,
            nodes: vec![2, 0],
        };
        assert!(zero.check().is_err());
    }

    #[test]
    fn a_leaving_holder_is_replaced() {
        let l = StripeLayout {
            unit: 4096,
            nodes: vec![1, 3, 2],
        };
        let to_new = l.replaced(3, 4);
        assert_eq!(to_new.nodes, vec![1, 4, 2]);
        assert_eq!(to_new.others(), vec![4, 2]);
        // to a node already holding units: it holds both positions
        let to_owner = l.replaced(3, 1);
        assert_eq!(to_owner.nodes, vec![1, 1, 2]);
        assert_eq!(to_owner.holders(), vec![1, 2]);
        assert_eq!(to_owner.others(), vec![2]);
        assert_eq!(to_owner.holder(4096), 1);
    }
}
