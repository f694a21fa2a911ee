//! CHECKPOINTABLE and CAN_MIGRATE capability tracking (krgcapset,
//! checkpoint, migrate).
//!
//! The tracking itself (proc connector, inheritance on fork) lives in
//! `checkpoint::captrack`; this service authorises requests and answers them.

use std::sync::Arc;

use checkpoint::captrack::CapTracker;
use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::chkpt::{ChkptReply, ChkptRequest};

use crate::caller::Caller;
use crate::context::NodeContext;
use crate::metrics::TrackerLabel;
use crate::DaemonError;

pub struct ChkptService {
    ctx: Arc<NodeContext>,
    /// None when the proc connector could not be opened (krgd not root).
    tracker: Option<CapTracker>,
    /// CAN_MIGRATE, followed the same way.
    migrate: Option<CapTracker>,
}

impl ChkptService {
    pub async fn start(ctx: Arc<NodeContext>) -> Result<Arc<Self>, DaemonError> {
        let tracker = start_tracker(&ctx, "checkpointable", "CHECKPOINTABLE");
        let migrate = start_tracker(&ctx, "can_migrate", "CAN_MIGRATE");
        Ok(Arc::new(Self {
            ctx,
            tracker,
            migrate,
        }))
    }

    /// Does `pid` hold CAN_MIGRATE? (false when it cannot be tracked here)
    pub fn can_migrate(&self, pid: i32) -> bool {
        self.migrate.as_ref().is_some_and(|t| t.is_set(pid))
    }

    /// The processes this krgd's tracker holds CAN_MIGRATE for, each
    /// checked by start time to be the process that was flagged.
    pub fn migratable(&self) -> Vec<i32> {
        self.migrate
            .as_ref()
            .map(CapTracker::holders)
            .unwrap_or_default()
    }

    /// Does `pid` hold CHECKPOINTABLE? (false when it cannot be tracked here)
    pub fn is_checkpointable(&self, pid: i32) -> bool {
        self.tracker.as_ref().is_some_and(|t| t.is_set(pid))
    }

    /// Give processes that migrated in their capabilities again: they
    /// held CAN_MIGRATE (only such processes move), and CHECKPOINTABLE
    /// those of `checkpointable` did on the origin.
    pub fn adopt(&self, pids: &[i32], checkpointable: &[i32]) {
        for &pid in pids {
            if let Some(t) = &self.migrate {
                let _ = t.set(pid, true);
            }
            if let Some(t) = self
                .tracker
                .as_ref()
                .filter(|_| checkpointable.contains(&pid))
            {
                let _ = t.set(pid, true);
            }
        }
    }

    /// Give the programs of new jobs CAN_MIGRATE and/or CHECKPOINTABLE,
    /// as their user's `krg run` held them.
    pub fn grant(&self, pids: &[i32], migrate: bool, checkpoint: bool) {
        let trackers = [(&self.migrate, migrate), (&self.tracker, checkpoint)];
        let wanted = trackers
            .into_iter()
            .filter_map(|(t, wanted)| t.as_ref().filter(|_| wanted));
        for t in wanted {
            for &pid in pids {
                let _ = t.set(pid, true);
            }
        }
    }

    /// `pid` is no longer what it was (a stand-in now): neither
    /// capability holds for it any more.
    pub fn forget(&self, pid: i32) {
        for t in [&self.migrate, &self.tracker].into_iter().flatten() {
            let _ = t.set(pid, false);
        }
    }

    fn migrate_tracker(&self) -> Result<&CapTracker, AdminError> {
        self.migrate.as_ref().ok_or_else(|| {
            AdminError::new(
                ErrorKind::Unavailable,
                "this krgd cannot track CAN_MIGRATE (proc connector unavailable; run krgd as root)",
            )
        })
    }

    pub async fn handle_admin(
        &self,
        caller: &Caller,
        req: ChkptRequest,
    ) -> Result<ChkptReply, AdminError> {
        let node = self.ctx.node_id();
        match req {
            ChkptRequest::SetCheckpointable { pid, enable } => {
                set(self.checkpoint_tracker()?, caller, pid, enable)?;
                tracing::info!(pid, enable, uid = caller.uid, "CHECKPOINTABLE changed");
                Ok(ChkptReply::Capability {
                    pid,
                    checkpointable: enable,
                    node,
                })
            }
            ChkptRequest::Query { pid } => {
                let t = self.checkpoint_tracker()?;
                check_exists(pid)?;
                Ok(ChkptReply::Capability {
                    pid,
                    checkpointable: t.is_set(pid),
                    node,
                })
            }
            ChkptRequest::SetCanMigrate { pid, enable } => {
                set(self.migrate_tracker()?, caller, pid, enable)?;
                tracing::info!(pid, enable, uid = caller.uid, "CAN_MIGRATE changed");
                Ok(ChkptReply::CanMigrate {
                    pid,
                    can_migrate: enable,
                    node,
                })
            }
            ChkptRequest::QueryCanMigrate { pid } => {
                let t = self.migrate_tracker()?;
                check_exists(pid)?;
                Ok(ChkptReply::CanMigrate {
                    pid,
                    can_migrate: t.is_set(pid),
                    node,
                })
            }
        }
    }

    fn checkpoint_tracker(&self) -> Result<&CapTracker, AdminError> {
        self.tracker.as_ref().ok_or_else(|| {
            AdminError::new(ErrorKind::Unavailable, "this krgd cannot track CHECKPOINTABLE (proc connector unavailable; run krgd as root)")
        })
    }

    pub async fn shutdown(&self) {
        for t in [&self.tracker, &self.migrate].into_iter().flatten() {
            t.shutdown();
        }
    }
}

/// A tracker whose received events are counted in `/metrics`
/// (`krg_proc_connector_events_total{tracker=label}`); None (logged) when
/// the proc connector cannot be opened.
fn start_tracker(ctx: &NodeContext, label: &'static str, cap: &str) -> Option<CapTracker> {
    let counter = ctx
        .metrics
        .proc_events
        .get_or_create(&TrackerLabel { tracker: label })
        .clone();
    match CapTracker::start_counting(Box::new(move || {
        counter.inc();
    })) {
        Ok(t) => {
            if !t.filtered() {
                tracing::warn!("{cap}: the proc connector is not filtered in the kernel; every fork of the machine wakes this krgd");
            }
            Some(t)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow forks with the proc connector; {cap} is unavailable");
            None
        }
    }
}

/// Set or clear a capability for `caller`: only root may change that of a
/// process not entirely the caller's.
fn set(t: &CapTracker, caller: &Caller, pid: i32, enable: bool) -> Result<(), AdminError> {
    if !caller.is_root() {
        check_owned_by(pid, caller.uid)?;
    }
    t.set(pid, enable)
        .map_err(|e| AdminError::new(ErrorKind::NotFound, e.to_string()))
}

fn read_status(pid: i32) -> Result<String, AdminError> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| AdminError::new(ErrorKind::NotFound, format!("process {pid} does not exist")))
}

/// Does process `pid` exist?
fn check_exists(pid: i32) -> Result<(), AdminError> {
    read_status(pid).map(drop)
}

/// A user may change the capabilities of a process only if it is entirely
/// theirs: real, effective, saved and file-system uids all the caller's,
/// and its gids all one. A setuid or setgid program the user started holds
/// another identity, and is root's business.
pub fn check_owned_by(pid: i32, uid: u32) -> Result<(), AdminError> {
    let status = read_status(pid)?;
    let ids = |key| {
        checkpoint::procfs::status_ids(&status, key).map_err(|_| {
            AdminError::new(
                ErrorKind::Internal,
                format!("cannot read the credentials of process {pid}"),
            )
        })
    };
    let (uids, gids) = (ids("Uid")?, ids("Gid")?);
    let all_caller = uids.iter().all(|&u| u == uid);
    let one_gid = gids.iter().all(|&g| Some(&g) == gids.first());
    if !all_caller || !one_gid {
        return Err(AdminError::new(
            ErrorKind::PermissionDenied,
            format!(
                "process {pid} runs with uids {uids:?} and gids {gids:?}; only root may change the capabilities of a process that is not entirely yours"
            ),
        ));
    }
    Ok(())
}
