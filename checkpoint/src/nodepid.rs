//! `PID` or `NODE:PID` on the command line of `checkpoint` and `restart`:
//! a process (or an application id) of this node, or of the node named,
//! as `krg ps` and `migrate` write it.

/// A PID, and the node it is on when one is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePid {
    /// The node named, if any.
    pub node: Option<u32>,
    /// The PID (positive).
    pub pid: i32,
}

impl std::str::FromStr for NodePid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s}: expected PID or NODE:PID (e.g. 4242 or 2:4096)");
        let (node, pid) = match s.split_once(':') {
            Some((n, p)) => (Some(n.parse::<u32>().map_err(|_| bad())?), p),
            None => (None, s),
        };
        let pid = pid.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(bad)?;
        Ok(NodePid { node, pid })
    }
}

#[cfg(test)]
mod tests {
    use super::NodePid;

    #[test]
    fn pids_with_and_without_a_node() {
        assert_eq!(
            "4242".parse(),
            Ok(NodePid {
                node: None,
                pid: 4242
            })
        );
        assert_eq!(
            "2:4096".parse(),
            Ok(NodePid {
                node: Some(2),
                pid: 4096
            })
        );
        for bad in ["", "0", "-3", "x", "2:", ":4", "2:3:4", "a:4"] {
            assert!(bad.parse::<NodePid>().is_err(), "{bad}");
        }
    }
}
