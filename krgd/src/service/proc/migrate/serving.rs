//! The origin's side of a post-copy migration after the handover: its
//! copy of the image (`<data_dir>/migrate/out/<xfer>/`) is kept and
//! served, byte ranges at a time ([`MigratePeerRequest::Pull`]), to the
//! target that restored the process, until the target has every byte
//! and releases it ([`MigratePeerRequest::Release`]) — or, at most,
//! [`KEEP`] later.
//!
//! [`MigratePeerRequest::Pull`]: krg_proto::migrate::MigratePeerRequest::Pull
//! [`MigratePeerRequest::Release`]: krg_proto::migrate::MigratePeerRequest::Release

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::migrate::{Data, MAX_DATA};
use krg_proto::NodeId;

use super::super::creds::Origin;
use super::super::state::ProcState;
use super::incoming::member;
use super::registry::Served;

/// How long an image is kept for a target that never releases it.
const KEEP: Duration = Duration::from_secs(600);

/// Serve transfer `xfer`'s image (`files` in the target's index order,
/// under `root`) to node `to` from now on.
pub fn start(
    st: &Arc<ProcState>,
    xfer: u64,
    to: NodeId,
    root: PathBuf,
    files: Vec<Option<Arc<File>>>,
) {
    let served = Served { to, root, files };
    crate::sync::lock(&st.migration.serving.0).insert(xfer, served);
    let st = st.clone();
    tokio::spawn(async move {
        tokio::time::sleep(KEEP).await;
        if stop(&st, xfer) {
            tracing::warn!(
                xfer,
                to,
                "post-copy image never released by its target: dropped"
            );
        }
    });
}

/// Stop serving `xfer`, keeping its image (the origin restores it).
pub fn forget(st: &ProcState, xfer: u64) {
    crate::sync::lock(&st.migration.serving.0).remove(&xfer);
}

/// Stop serving `xfer` and remove its image; whether it was served. The
/// removal runs on a blocking thread: freeing a GiB of page cache takes
/// about 60 ms here, which would hold a runtime thread (and every task
/// queued on it) that long.
pub fn stop(st: &ProcState, xfer: u64) -> bool {
    let served = crate::sync::lock(&st.migration.serving.0).remove(&xfer);
    match served {
        Some(s) => {
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_dir_all(&s.root);
            });
            true
        }
        None => false,
    }
}

fn refused(msg: String) -> AdminError {
    AdminError::new(ErrorKind::InvalidArgument, msg)
}

/// `Pull`: `len` bytes at `offset` of file `file` of `xfer`, for its target.
pub async fn pull(
    st: &ProcState,
    origin: Origin,
    xfer: u64,
    file: u32,
    offset: u64,
    len: u32,
) -> Result<Data, AdminError> {
    let from = member(origin)?;
    let f = {
        let s = crate::sync::lock(&st.migration.serving.0);
        let served = s.get(&xfer).filter(|x| x.to == from).ok_or_else(|| {
            AdminError::new(
                ErrorKind::NotFound,
                format!("node {} serves no image {xfer:x} to node {from}", st.node()),
            )
        })?;
        served
            .files
            .get(file as usize)
            .cloned()
            .flatten()
            .ok_or_else(|| refused(format!("no file {file} in image {xfer:x}")))?
    };
    if len as usize > MAX_DATA {
        return Err(refused(format!(
            "a pull of {len} bytes (at most {MAX_DATA})"
        )));
    }
    let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let size = f.metadata().map_err(|e| e.to_string())?.len();
        if offset
            .checked_add(u64::from(len))
            .is_none_or(|end| end > size)
        {
            return Err(format!("bytes {offset}+{len} are beyond the file's {size}"));
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| e.to_string())?;
        Ok(buf)
    })
    .await
    .map_err(|e| AdminError::new(ErrorKind::Internal, format!("worker thread: {e}")))?
    .map_err(|e| refused(format!("image {xfer:x}: {e}")))?;
    Ok(Data {
        xfer,
        file,
        offset,
        data: data.into(),
    })
}

/// `Release`: the target of `xfer` needs the image no more.
pub fn release(st: &ProcState, origin: Origin, xfer: u64) -> Result<(), AdminError> {
    let from = member(origin)?;
    let ours = crate::sync::lock(&st.migration.serving.0)
        .get(&xfer)
        .is_some_and(|x| x.to == from);
    if ours {
        stop(st, xfer);
    }
    Ok(())
}
