//! `-n LIST` / `-a`: which nodes a command is for, as krgadm spells them.

use anyhow::{anyhow, Result};
use clap::Args;
use krg_proto::proc::Placement;
use krg_proto::NodeId;

/// Node selection flags.
#[derive(Args, Clone, Default)]
pub struct NodeSel {
    /// Node ids separated by ':' (-n16:18), with ranges (-n 3-7).
    #[arg(
        short = 'n',
        long = "nodes",
        value_name = "LIST",
        conflicts_with = "all"
    )]
    pub nodes: Option<String>,
    /// Every online node.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
}

impl NodeSel {
    /// The node list, if one was given.
    pub fn list(&self) -> Result<Option<Vec<NodeId>>> {
        self.nodes
            .as_deref()
            .map(|l| krg_proto::nodeset::parse_node_list(l).map_err(|e| anyhow!(e)))
            .transpose()
    }

    /// Where a run goes: the list, every online node, or (neither) `none`.
    pub fn placement(&self, none: Placement) -> Result<Placement> {
        Ok(match self.list()? {
            Some(l) => Placement::Nodes(l),
            None if self.all => Placement::AllOnline,
            None => none,
        })
    }

    /// Whether the selection may name more than one node.
    pub fn many(&self) -> Result<bool> {
        Ok(self.all || self.list()?.is_some_and(|l| l.len() > 1))
    }
}

/// `node[1-3,5]` for a set of node ids (clush's folding).
pub fn fold(ids: &[NodeId]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    if let [one] = ids.as_slice() {
        return format!("node{one}");
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        let mut end = start;
        while i + 1 < ids.len() && ids[i + 1] == end + 1 {
            i += 1;
            end = ids[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    format!("node[{}]", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding() {
        assert_eq!(fold(&[5]), "node5");
        assert_eq!(fold(&[3, 1, 2, 5, 7, 8]), "node[1-3,5,7-8]");
    }
}
