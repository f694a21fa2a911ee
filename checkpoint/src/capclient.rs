//! Talking to the local krgd about CHECKPOINTABLE (krgcapset, checkpoint).

use std::path::{Path, PathBuf};

use krg_proto::admin::{AdminRequest, AdminResponse};
use krg_proto::chkpt::{ChkptReply, ChkptRequest};
use krg_proto::client::AdminClient;

use crate::error::{ChkptError, Result};

pub const DEFAULT_SOCKET: &str = "/run/krg/krgd.sock";

/// `--socket`, else `KRG_SOCKET`, else the default path.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("KRG_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// What krgd reports about a process.
#[derive(Debug, Clone, Copy)]
pub struct Capability {
    pub checkpointable: bool,
    /// The node id of the krgd that answered.
    pub node: u32,
}

/// Send one request to krgd and return the capability it reports.
pub fn call(socket: &Path, req: ChkptRequest) -> Result<Capability> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ChkptError::Other(format!("tokio: {e}")))?;
    rt.block_on(async {
        let mut c = AdminClient::connect(socket)
            .await
            .map_err(|e| ChkptError::Other(e.to_string()))?;
        match c.call(&AdminRequest::Chkpt(req)).await {
            Ok(AdminResponse::Chkpt(ChkptReply::Capability {
                checkpointable,
                node,
                ..
            })) => Ok(Capability {
                checkpointable,
                node,
            }),
            Ok(AdminResponse::Error(e)) => Err(ChkptError::Other(format!("krgd: {}", e.message))),
            Ok(_) => Err(ChkptError::Other("krgd sent an unexpected reply".into())),
            Err(e) => Err(ChkptError::Other(format!(
                "talking to krgd at {}: {e}",
                socket.display()
            ))),
        }
    })
}
