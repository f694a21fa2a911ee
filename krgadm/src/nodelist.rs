//! Parsing of LinuxSSI-style node lists: `16:18`, `3-7`, `1:4-6:9`.

use krg_proto::NodeId;

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

fn parse_id(s: &str) -> Result<NodeId, String> {
    s.trim().parse::<NodeId>().map_err(|_| {
        format!(
            "'{s}' is not a node id (a number from 0 to {})",
            NodeId::MAX
        )
    })
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
        ] {
            let e = parse_node_list(bad).unwrap_err();
            assert!(e.starts_with("bad node list"), "{bad}: {e}");
        }
    }
}
