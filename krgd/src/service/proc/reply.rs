//! A peer's answer to a process-service request, as the admin side
//! takes it: the reply wanted, the peer's own error as it sent it, or the
//! node unreachable.

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::peer::PeerResponse;
use krg_proto::proc::ProcPeerReply;
use krg_proto::NodeId;

use crate::peers::PeerCallError;

/// What `node`'s process service answered, as `pick` takes it (`Err`
/// gives back an answer of another kind: an internal error); its own
/// error as it sent it; an unreachable node as `Unavailable`.
pub fn answer<T>(
    node: NodeId,
    got: Result<PeerResponse, PeerCallError>,
    pick: impl FnOnce(ProcPeerReply) -> Result<T, ProcPeerReply>,
) -> Result<T, AdminError> {
    let odd =
        |what: String| AdminError::new(ErrorKind::Internal, format!("node {node} answered {what}"));
    match got {
        Ok(PeerResponse::Proc(reply)) => pick(reply).map_err(|other| odd(format!("{other:?}"))),
        Ok(other) => Err(odd(format!("{other:?}"))),
        Err(PeerCallError::Remote { error, .. }) => Err(error),
        Err(e) => Err(AdminError::new(
            ErrorKind::Unavailable,
            format!("node {node}: {e}"),
        )),
    }
}
