//! `nfsroot nodes add|del`: edit the description in place with toml_edit,
//! so comments and layout survive, and validate before saving.

use std::net::Ipv4Addr;
use std::path::Path;

use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

use crate::atomic::write_atomic;
use crate::desc::Description;
use crate::error::{NfsrootError, Result};

/// A node to add. `node_id` None picks the smallest unused id.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub name: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub node_id: Option<u32>,
}

fn load(path: &Path) -> Result<(String, DocumentMut)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| NfsrootError::io(format!("reading {}", path.display()), e))?;
    let doc = text
        .parse::<DocumentMut>()
        .map_err(|e| NfsrootError::Parse {
            path: path.into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
    Ok((text, doc))
}

/// Validate the edited text as a whole, then save it atomically.
fn save(path: &Path, doc: &DocumentMut) -> Result<Description> {
    let text = doc.to_string();
    let desc = Description::parse(&text, path)?;
    write_atomic(path, text.as_bytes(), file_mode(path))?;
    Ok(desc)
}

fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644)
}

/// Add a node; returns the new description and the node id it got.
pub fn add(path: &Path, node: &NewNode) -> Result<(Description, u32)> {
    let (text, mut doc) = load(path)?;
    let current = Description::parse(&text, path)?;
    let id = match node.node_id {
        Some(id) => id,
        None => (1..=u32::MAX)
            .find(|i| !current.nodes.iter().any(|n| n.node_id == *i))
            .unwrap_or(0),
    };
    let mut t = Table::new();
    t.insert("name", value(node.name.as_str()));
    t.insert("mac", value(node.mac.as_str()));
    t.insert("ip", value(node.ip.to_string()));
    t.insert("node_id", value(i64::from(id)));
    match doc.get_mut("node") {
        None => {
            let mut arr = ArrayOfTables::new();
            arr.push(t);
            doc.insert("node", Item::ArrayOfTables(arr));
        }
        Some(Item::ArrayOfTables(arr)) => arr.push(t),
        Some(_) => {
            return Err(NfsrootError::invalid(
                "node",
                None,
                "must be an array of [[node]] tables",
            ))
        }
    }
    // validate() in save() refuses duplicates, naming the clash.
    let desc = save(path, &doc)?;
    Ok((desc, id))
}

/// Delete the node with this name or node id; returns the new description
/// and the removed node's id.
pub fn del(path: &Path, who: &str) -> Result<(Description, u32)> {
    let (_, mut doc) = load(path)?;
    let arr = match doc.get_mut("node") {
        Some(Item::ArrayOfTables(arr)) => arr,
        _ => {
            return Err(NfsrootError::invalid(
                "node",
                Some(who),
                "no such node: the description has no [[node]]",
            ))
        }
    };
    let matches = |t: &Table| {
        t.get("name").and_then(|v| v.as_str()) == Some(who)
            || t.get("node_id")
                .and_then(|v| v.as_integer())
                .map(|i| i.to_string())
                .as_deref()
                == Some(who)
    };
    let idx = arr.iter().position(matches).ok_or_else(|| {
        NfsrootError::invalid("node", Some(who), "no node has this name or node_id")
    })?;
    let id = arr
        .get(idx)
        .and_then(|t| t.get("node_id"))
        .and_then(|v| v.as_integer())
        .unwrap_or(0);
    arr.remove(idx);
    if arr.is_empty() {
        doc.remove("node");
    }
    let desc = save(path, &doc)?;
    Ok((desc, u32::try_from(id).unwrap_or(0)))
}
