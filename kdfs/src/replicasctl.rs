//! `kdfsctl replicas N`: every member's store keeps N copies of its files
//! from now on — a single-copy file system converted to `--replicas 2`,
//! each store's full copy made by its krgd in the background (`kdfsctl
//! status` shows it). Each member's krgd converts its own store, and
//! refuses while the store is in use on its node (a mount there writes it
//! in place): unmount kDFS on every node first, mount it again after.

use std::path::Path;
use std::time::Duration;

use krg_proto::kdfs::{KdfsRequest, KdfsResponse};
use krg_proto::NodeId;

use crate::error::KdfsError;
use crate::format::MAX_REPLICAS;

/// How long a member may take to convert its store (the copy itself is
/// made afterwards, in the background).
const CONVERT_WAIT: Duration = Duration::from_secs(10);

/// What one member did: `Ok`, or why not, in words.
pub type Outcome = Result<(), String>;

/// Have every member (the local krgd at `socket` names them; the cluster
/// key is in `keyfile`) keep `copies` copies of its store.
pub async fn set(
    socket: &Path,
    keyfile: &Path,
    copies: u8,
) -> Result<Vec<(NodeId, Outcome)>, KdfsError> {
    if copies == 0 || copies > MAX_REPLICAS {
        return Err(KdfsError::Invalid(format!(
            "{copies} copies: a store keeps 1 to {MAX_REPLICAS}"
        )));
    }
    let m = crate::members::connect(socket, keyfile, None).await?;
    let mut out = Vec::new();
    for n in &m.members {
        let outcome = if n.failed {
            Err("down (the cluster counts it failed): run this again once it is back".into())
        } else {
            let asked = m
                .cluster
                .call_within(n.id, KdfsRequest::SetReplicas { copies }, CONVERT_WAIT)
                .await;
            outcome(asked)
        };
        out.push((n.id, outcome));
    }
    Ok(out)
}

/// A member's answer, in words (the connection gives its `Errno` as an
/// error).
fn outcome(asked: Result<KdfsResponse, i32>) -> Outcome {
    match asked {
        Ok(KdfsResponse::Done) => Ok(()),
        Ok(other) => Err(format!("answered out of turn: {other:?}")),
        Err(libc::EBUSY) => Err(
            "its store is in use on that node (kdfs mounted there?): unmount it there and run this again"
                .into(),
        ),
        Err(libc::ENOTSUP) => Err("it keeps more copies already (fewer is not supported)".into()),
        Err(e) => Err(std::io::Error::from_raw_os_error(e).to_string()),
    }
}
