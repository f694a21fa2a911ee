//! Talking to the local krgd about CHECKPOINTABLE (krgcapset, checkpoint,
//! restart), and asking it to restart a job's checkpoint: one connection
//! and one small runtime for all the requests of a command.

use std::path::Path;
use std::time::Duration;

use krg_proto::admin::{AdminRequest, AdminResponse};
use krg_proto::chkpt::{ChkptReply, ChkptRequest};
use krg_proto::client::AdminClient;
use krg_proto::proc::{
    CheckpointAt, CheckpointedThere, JobRestarted, PartsRestoring, ProcReply, ProcRequest,
    ReadSaved, ReleaseHeld, RemoveSaved, RestartJob, RestoreParts, SavedChunk, SavedPart,
};

use crate::error::{ChkptError, Result};

/// What krgd reports about a process.
#[derive(Debug, Clone, Copy)]
pub struct Capability {
    pub checkpointable: bool,
    /// The node id of the krgd that answered.
    pub node: u32,
}

/// A connection to the local krgd's admin socket.
pub struct CapClient {
    rt: tokio::runtime::Runtime,
    conn: AdminClient,
}

impl CapClient {
    pub fn connect(socket: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ChkptError::Thread(format!("starting the krgd client: {e}")))?;
        let conn = rt.block_on(AdminClient::connect(socket))?;
        Ok(Self { rt, conn })
    }

    /// Send one request and return the capability krgd reports.
    pub fn call(&mut self, req: ChkptRequest) -> Result<Capability> {
        let reply = self
            .rt
            .block_on(self.conn.call(&AdminRequest::Chkpt(req)))?;
        match reply {
            AdminResponse::Chkpt(ChkptReply::Capability {
                checkpointable,
                node,
                ..
            }) => Ok(Capability {
                checkpointable,
                node,
            }),
            AdminResponse::Error(e) => Err(ChkptError::KrgdRefused(e)),
            _ => Err(ChkptError::KrgdReply),
        }
    }

    /// Send a CAN_MIGRATE request; whether the process holds it (now).
    pub fn call_migrate(&mut self, req: ChkptRequest) -> Result<bool> {
        let reply = self
            .rt
            .block_on(self.conn.call(&AdminRequest::Chkpt(req)))?;
        match reply {
            AdminResponse::Chkpt(ChkptReply::CanMigrate { can_migrate, .. }) => Ok(can_migrate),
            AdminResponse::Error(e) => Err(ChkptError::KrgdRefused(e)),
            _ => Err(ChkptError::KrgdReply),
        }
    }

    /// Send one process-service request; its answer, or krgd's refusal.
    fn proc_call(&mut self, req: ProcRequest) -> Result<ProcReply> {
        match self.rt.block_on(self.conn.call(&AdminRequest::Proc(req)))? {
            AdminResponse::Proc(reply) => Ok(reply),
            AdminResponse::Error(e) => Err(ChkptError::KrgdRefused(e)),
            _ => Err(ChkptError::KrgdReply),
        }
    }

    /// Have the node the process `req` names runs on save it (see
    /// `ProcRequest::CheckpointAt`).
    pub fn checkpoint_at(&mut self, req: CheckpointAt) -> Result<CheckpointedThere> {
        match self.proc_call(ProcRequest::CheckpointAt(req))? {
            ProcReply::CheckpointedThere(there) => Ok(there),
            _ => Err(ChkptError::KrgdReply),
        }
    }

    /// Have every part of an application that ran on other nodes run
    /// again there, its session waiting in krgd for its stand-in (see
    /// `ProcRequest::RestoreParts`): the token of each stand-in.
    /// With `here`, each part then moves to this node; a part whose
    /// node is not online runs here from its copy under `copies`.
    pub fn restore_parts(
        &mut self,
        parts: Vec<SavedPart>,
        here: bool,
        copies: Option<String>,
    ) -> Result<PartsRestoring> {
        let req = RestoreParts {
            parts,
            here,
            copies,
        };
        match self.proc_call(ProcRequest::RestoreParts(req))? {
            ProcReply::PartsRestoring(r) => Ok(r),
            _ => Err(ChkptError::KrgdReply),
        }
    }

    /// What node `node` saved as SN `sn` of application `app`, read
    /// there for the caller (see `ProcRequest::ReadSaved`): with no
    /// `chunk`, its files; with one, those bytes.
    fn read_saved(&mut self, req: ReadSaved) -> Result<ProcReply> {
        self.proc_call(ProcRequest::ReadSaved(req))
    }
}

/// A part's SNs read through krgd from the node that saved them (the
/// source of [`crate::partcopy::copy::copy_in`]).
pub struct SavedSource {
    client: CapClient,
    socket: std::path::PathBuf,
    node: u32,
    app: i32,
}

impl SavedSource {
    /// The part node `node` saved as application `app`, through the krgd
    /// of `socket`.
    pub fn connect(socket: &Path, node: u32, app: i32) -> Result<Self> {
        Ok(Self {
            client: CapClient::connect(socket)?,
            socket: socket.to_path_buf(),
            node,
            app,
        })
    }
}

impl crate::partcopy::copy::Source for SavedSource {
    fn list(&mut self, sn: u32) -> Result<crate::partcopy::serve::Listing> {
        let req = ReadSaved {
            node: self.node,
            app: self.app,
            sn,
            chunk: None,
        };
        match self.client.read_saved(req)? {
            ProcReply::SavedFiles(f) => Ok(crate::partcopy::serve::Listing {
                files: f.files,
                parent: f.parent,
            }),
            _ => Err(ChkptError::KrgdReply),
        }
    }

    fn read(&mut self, sn: u32, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
        let chunk = SavedChunk {
            name: name.to_string(),
            offset,
            len,
        };
        let req = ReadSaved {
            node: self.node,
            app: self.app,
            sn,
            chunk: Some(chunk),
        };
        match self.client.read_saved(req)? {
            ProcReply::SavedBytes(b) => Ok(b.to_vec()),
            _ => Err(ChkptError::KrgdReply),
        }
    }

    fn another(&self) -> Result<Self> {
        Self::connect(&self.socket, self.node, self.app)
    }
}

impl CapClient {
    /// Have node `node` remove SN `sn` of application `app` of its own
    /// checkpoint store (a part of an application, `checkpoint rm`).
    pub fn remove_saved(&mut self, node: u32, app: i32, sn: u32) -> Result<()> {
        match self.proc_call(ProcRequest::RemoveSaved(RemoveSaved { node, app, sn }))? {
            ProcReply::SavedRemoved => Ok(()),
            _ => Err(ChkptError::KrgdReply),
        }
    }

    /// Have node `node` let the part it saved as SN `sn` of application
    /// `app` and held stopped run on: how long it was stopped in all
    /// (None: it was not held any more).
    pub fn release_held(&mut self, node: u32, app: i32, sn: u32) -> Result<Option<Duration>> {
        match self.proc_call(ProcRequest::ReleaseHeld(ReleaseHeld { node, app, sn }))? {
            ProcReply::HeldReleased { stopped_us } => Ok(stopped_us.map(Duration::from_micros)),
            _ => Err(ChkptError::KrgdReply),
        }
    }

    /// Have krgd restart SN `sn` of application `app` under `dir` (an
    /// absolute path) as a detached job, on node `node` (None: this
    /// one): where it runs, its PIDs and its output directory.
    pub fn restart_job(
        &mut self,
        node: Option<u32>,
        dir: &Path,
        app: i32,
        sn: u32,
    ) -> Result<JobRestarted> {
        let req = RestartJob {
            node,
            dir: dir.to_string_lossy().into_owned(),
            app,
            sn,
        };
        match self.proc_call(ProcRequest::RestartJob(req))? {
            ProcReply::Restarted(r) => Ok(r),
            _ => Err(ChkptError::KrgdReply),
        }
    }
}
