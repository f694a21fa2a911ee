//! Node ids and LinuxSSI-style node lists (`16:18`, `3-7`, `1:4-6:9`), as
//! every krg command line spells them.

use std::ops::RangeInclusive;

use crate::NodeId;

/// The ids a node may have (0 means "no node" in places, and ids are kept
/// to 16 bits, as LinuxSSI's were).
pub const VALID_IDS: RangeInclusive<NodeId> = 1..=65535;

/// Parse a node list. Ids are separated by ':' (as in LinuxSSI's
/// `krgadm nodes add -n16:18`); `A-B` is an inclusive range.
pub fn parse_node_list(text: &str) -> Result<Vec<NodeId>, String> {
    let bad = |why: &str| format!("bad node list '{text}': {why}");
    if text.trim().is_empty() {
        return Err(bad("it is empty"));
    }
    let mut out = Vec::new();
    for part in text.split([':', ',']) {
        let part = part.trim();
        if part.is_empty() {
            return Err(bad("empty item (two separators in a row?)"));
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let a = parse_id(a).map_err(|e| bad(&e))?;
                let b = parse_id(b).map_err(|e| bad(&e))?;
                if a > b {
                    return Err(bad(&format!("range {a}-{b} goes backwards")));
                }
                if b - a >= 4096 {
                    return Err(bad(&format!("range {a}-{b} names more than 4096 nodes")));
                }
                out.extend(a..=b);
            }
            None => out.push(parse_id(part).map_err(|e| bad(&e))?),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|id| seen.insert(*id));
    Ok(out)
}

/// One node id, 1..=65535.
pub fn parse_id(s: &str) -> Result<NodeId, String> {
    s.trim()
        .parse::<NodeId>()
        .ok()
        .filter(|id| VALID_IDS.contains(id))
        .ok_or_else(|| format!("'{s}' is not a node id (a number from 1 to 65535)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        assert_eq!(parse_node_list("16:18").unwrap(), vec![16, 18]);
        assert_eq!(parse_node_list("3-7").unwrap(), vec![3, 4, 5, 6, 7]);
        assert_eq!(parse_node_list("1:4-5:4:9").unwrap(), vec![1, 4, 5, 9]);
        assert_eq!(parse_node_list("21,34").unwrap(), vec![21, 34]);
    }

    #[test]
    fn malformed_lists_are_refused_with_the_reason() {
        for bad in [
            "",
            ":",
            "1::2",
            "a",
            "3-",
            "-3",
            "7-3",
            "1-99999",
            "-1",
            "5000000000",
            "0",
            "65536",
            "0-3",
        ] {
            let e = parse_node_list(bad).unwrap_err();
            assert!(e.starts_with("bad node list"), "{bad}: {e}");
        }
    }
}
