//! The target's side: images pushed by a member's krgd, written into
//! `<data_dir>/migrate/in/<node>-<xfer>/<app>/` (the checkpoint store's
//! layout, owned by the image's owner), restored on `Commit`, then counted
//! as this node's processes (`krg ps`) and reaped by krgd.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::migrate::{Data, ImageFile, Offer, Restored};
use krg_proto::NodeId;

use super::super::creds::{self, Origin, RunPolicy};
use super::super::spawn;
use super::super::state::ProcState;
use super::entry::Entry;
use super::registry::Receiving;
use super::{check, restore, Adopted};

/// Transfers waiting longer than this are dropped.
const STALE: Duration = Duration::from_secs(600);
/// At most this many transfers at once.
const MAX_INCOMING: usize = 8;
/// Largest image accepted, bytes.
const MAX_IMAGE: u64 = 64 << 30;

fn bad(msg: impl Into<String>) -> AdminError {
    AdminError::new(ErrorKind::InvalidArgument, msg)
}

/// A file name an image may hold.
fn sane_name(name: &str, sn: u32) -> bool {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    ok_chars
        && !name.starts_with('.')
        && name.len() < 128
        && (name.ends_with(&format!("_v{sn}.bin")) || name == format!("description_v{sn}.txt"))
}

/// Accept an image: only a member's krgd may push one, for its owner or root.
pub fn offer(st: &ProcState, origin: Origin, o: Offer) -> Result<(), AdminError> {
    let me = st.node();
    let Origin::Member(from) = origin else {
        let n = match origin {
            Origin::Outsider(n) | Origin::Member(n) => n,
            Origin::Local => 0,
        };
        return Err(AdminError::new(
            ErrorKind::PermissionDenied,
            format!(
                "node {n} is not a member of node {me}'s cluster: it may not push a process image"
            ),
        ));
    };
    if o.creds.uid != 0 && o.creds.uid != o.owner {
        return Err(AdminError::new(
            ErrorKind::PermissionDenied,
            format!(
                "uid {} may not migrate processes of uid {}",
                o.creds.uid, o.owner
            ),
        ));
    }
    let owner = krg_proto::proc::Credentials::of(o.owner, 0);
    creds::check(
        &owner,
        RunPolicy {
            allow_root: st.policy.allow_root,
        },
        origin,
        me,
    )?;
    let total: u64 = o.files.iter().map(|f| f.len).sum();
    if o.files.is_empty() || o.files.len() > 100_000 || total > MAX_IMAGE {
        return Err(bad(
            "an image of no files, too many files or too many bytes",
        ));
    }
    if let Some(f) = o.files.iter().find(|f| !sane_name(&f.name, o.sn)) {
        return Err(bad(format!("image file name {:?} refused", f.name)));
    }
    if let Some(why) = restore::unavailable() {
        return Err(AdminError::new(
            ErrorKind::Unavailable,
            format!("node {me} cannot restore: {why}"),
        ));
    }
    check::same_files(me, &o.identities)?;
    let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(o.owner))
        .ok()
        .flatten()
        .map_or(0, |u| u.gid.as_raw());
    let root = st.spool.join("in").join(format!("{from}-{:x}", o.xfer));
    let _ = std::fs::remove_dir_all(&root);
    let fail = |e: String| AdminError::new(ErrorKind::Internal, format!("node {me}: {e}"));
    let dir = checkpoint::store::prepare_dir(&root, o.app, o.owner, gid)
        .map_err(|e| fail(e.to_string()))?;
    let mut files = Vec::new();
    for f in &o.files {
        let e = create(dir.path(), &f.name, f.len, o.owner, gid).map_err(&fail)?;
        files.push(Some(e));
    }
    let mut t = crate::sync::lock(&st.migration.transfers.0);
    t.retain(|_, x| x.started.elapsed() < STALE);
    if t.len() >= MAX_INCOMING {
        drop(t);
        let _ = std::fs::remove_dir_all(&root);
        return Err(AdminError::new(
            ErrorKind::Unavailable,
            format!("node {me} is receiving {MAX_INCOMING} migrations already"),
        ));
    }
    t.insert(
        (from, o.xfer),
        Receiving {
            started: Instant::now(),
            root,
            dir: dir.path().to_path_buf(),
            owner: o.owner,
            gid,
            app: o.app,
            sn: o.sn,
            pids: o.pids,
            files,
            postcopy: o.postcopy,
        },
    );
    Ok(())
}

/// A new image file, the owner's, `len` bytes long.
fn create(
    dir: &std::path::Path,
    name: &str,
    len: u64,
    owner: u32,
    gid: u32,
) -> Result<Entry, String> {
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::os::unix::fs::fchown(&file, Some(owner), Some(gid))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.set_len(len)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // its data comes in pieces (chunks, or pulls after a post-copy handover)
    checkpoint::prealloc::reserve(&file, 0, len);
    Ok(Entry {
        name: name.to_string(),
        file: Arc::new(file),
        len,
        have: Vec::new(),
    })
}

/// The final file list of an image offered early (see `Files`).
pub fn files(
    st: &ProcState,
    origin: Origin,
    xfer: u64,
    pids: Vec<i32>,
    list: Vec<ImageFile>,
) -> Result<(), AdminError> {
    let from = member(origin)?;
    let mut t = crate::sync::lock(&st.migration.transfers.0);
    let x = t.get_mut(&(from, xfer)).ok_or_else(|| unknown(xfer))?;
    let total: u64 = list.iter().map(|f| f.len).sum();
    if list.is_empty() || list.len() > 100_000 || total > MAX_IMAGE {
        return Err(bad(
            "an image of no files, too many files or too many bytes",
        ));
    }
    if let Some(f) = list.iter().find(|f| !sane_name(&f.name, x.sn)) {
        return Err(bad(format!("image file name {:?} refused", f.name)));
    }
    let fail = |e: String| AdminError::new(ErrorKind::Internal, format!("node {}: {e}", st.node()));
    for slot in x.files.iter_mut() {
        if slot
            .as_ref()
            .is_some_and(|e| !list.iter().any(|f| f.name == e.name))
        {
            if let Some(e) = slot.take() {
                let _ = std::fs::remove_file(x.dir.join(&e.name));
            }
        }
    }
    for f in &list {
        match x.files.iter_mut().flatten().find(|e| e.name == f.name) {
            Some(e) => {
                e.file
                    .set_len(f.len)
                    .map_err(|err| fail(format!("{}: {err}", f.name)))?;
                e.len = f.len;
                e.have.retain_mut(|r| {
                    r.1 = r.1.min(f.len);
                    r.1 > r.0
                });
            }
            None => {
                let e = create(&x.dir, &f.name, f.len, x.owner, x.gid).map_err(fail)?;
                x.files.push(Some(e));
            }
        }
    }
    x.pids = pids;
    Ok(())
}

/// A received image, taken out of the transfers to be restored.
pub struct Complete {
    /// Directory to remove once restored.
    pub root: PathBuf,
    /// Application id (root PID at dump time).
    pub app: i32,
    /// Its SN.
    pub sn: u32,
    /// Owner of the processes.
    pub owner: u32,
    /// The owner's primary group here.
    pub gid: u32,
    /// PIDs of the processes (at dump time).
    pub pids: Vec<i32>,
    /// Post-copy: the image's files, by index, whose memory files' page
    /// data is still to be pulled (`None` when every byte is in).
    pub pulling: Option<Vec<Option<Entry>>>,
}

/// A memory file: its page data may come after `Commit` (post-copy).
fn memory_file(name: &str) -> bool {
    name.starts_with("task_mm_")
}

/// Take transfer `xfer` of `from`, which must be complete (else it is
/// dropped: the image is incomplete) — but for the page data of its memory
/// files, in a post-copy transfer.
pub fn take_complete(st: &ProcState, from: NodeId, xfer: u64) -> Result<Complete, AdminError> {
    let x = crate::sync::lock(&st.migration.transfers.0)
        .remove(&(from, xfer))
        .ok_or_else(|| unknown(xfer))?;
    let may_wait = |e: &Entry| x.postcopy && memory_file(&e.name);
    if x.files
        .iter()
        .flatten()
        .any(|e| !(e.complete() || may_wait(e)))
    {
        let _ = std::fs::remove_dir_all(&x.root);
        return Err(bad("the image is incomplete"));
    }
    let all_in = x.files.iter().flatten().all(Entry::complete);
    Ok(Complete {
        pulling: (!all_in).then_some(x.files),
        root: x.root,
        app: x.app,
        sn: x.sn,
        owner: x.owner,
        gid: x.gid,
        pids: x.pids,
    })
}

fn unknown(xfer: u64) -> AdminError {
    AdminError::new(
        ErrorKind::NotFound,
        format!("no migration {xfer:x} in progress here"),
    )
}

pub fn member(origin: Origin) -> Result<NodeId, AdminError> {
    match origin {
        Origin::Member(n) => Ok(n),
        _ => Err(AdminError::new(
            ErrorKind::PermissionDenied,
            "only a member may take part in a migration",
        )),
    }
}

/// A chunk of an image file.
pub fn data(st: &ProcState, origin: Origin, d: Data) -> Result<(), AdminError> {
    let from = member(origin)?;
    let entry = |t: &mut HashMap<(NodeId, u64), Receiving>| {
        let x = t.get_mut(&(from, d.xfer)).ok_or_else(|| unknown(d.xfer))?;
        x.files
            .get_mut(d.file as usize)
            .and_then(|e| e.as_mut())
            .map(|e| (e.file.clone(), e.len))
            .ok_or_else(|| bad(format!("no file {} in migration {:x}", d.file, d.xfer)))
    };
    let (file, len) = entry(&mut crate::sync::lock(&st.migration.transfers.0))?;
    let end = d.offset.checked_add(d.data.len() as u64);
    let Some(end) = end.filter(|&end| end <= len) else {
        return Err(bad("image data beyond the announced file length"));
    };
    // written without the lock: the chunks in flight are written at once
    file.write_all_at(&d.data, d.offset)
        .map_err(|e| AdminError::new(ErrorKind::Internal, format!("writing the image: {e}")))?;
    let mut t = crate::sync::lock(&st.migration.transfers.0);
    // (the file may have been cut by `Files` meanwhile: count what is in it)
    if let Some(Some(e)) = t
        .get_mut(&(from, d.xfer))
        .and_then(|x| x.files.get_mut(d.file as usize))
    {
        if Arc::ptr_eq(&e.file, &file) {
            e.got(d.offset, end.min(e.len));
        }
    }
    Ok(())
}

/// Forget a transfer.
pub fn abort(st: &ProcState, origin: Origin, xfer: u64) -> Result<(), AdminError> {
    let from = member(origin)?;
    let x = crate::sync::lock(&st.migration.transfers.0).remove(&(from, xfer));
    if let Some(x) = x {
        let _ = std::fs::remove_dir_all(&x.root);
    }
    Ok(())
}

/// The origin's copy is gone: restore the image, adopt the processes.
pub async fn commit(
    st: &Arc<ProcState>,
    origin: Origin,
    xfer: u64,
    checkpointable: &[i32],
) -> Result<Restored, AdminError> {
    let from = member(origin)?;
    let mut clock = super::Clock::new();
    let mut x = take_complete(st, from, xfer)?;
    let fail = |e: String| AdminError::new(ErrorKind::Internal, format!("node {}: {e}", st.node()));
    // post-copy: what is missing is pulled while restart and its page
    // server run, and they ask for what they are about to read
    let (pulling, fetch) = match super::pulling::begin(st, from, xfer, x.pulling.take()) {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&x.root);
            return Err(fail(e));
        }
    };
    // No fsync: the image lives only until restart has read it (a crash
    // of this node loses the process anyway); checkpoints proper are not
    // written here. Open files stay: the page server and the pulls use
    // them after the names are gone.
    // its output goes back to what it led to on the origin
    let forward = super::stdio::Forward::new().map_err(|e| fail(format!("pipe: {e}")))?;
    let [o, e] = forward.for_restart.each_ref().map(|f| f.try_clone().ok());
    let gate = super::fence::runs_here(st.clone(), xfer, from);
    let r = restore::restore_lazily(&x.root, x.app, x.sn, fetch, [o, e], gate).await;
    clock.mark("target.restart");
    let _ = std::fs::remove_dir_all(&x.root);
    super::pulling::settle(pulling.as_ref(), r.is_ok());
    let (inner, server) = r.map_err(fail)?;
    forward.start(st.clone(), from, xfer);
    if let Some(server) = server {
        super::filling(st, server, &x.pids);
    }
    clock.extend("target.restart.", &inner);
    adopt(st, &x.pids, from, checkpointable);
    Ok(Restored {
        pids: x.pids,
        phases: clock.phases,
    })
}

/// Count restored processes as this node's (with their capabilities:
/// CHECKPOINTABLE for those of `checkpointable`), and reap those that come
/// to krgd.
pub fn adopt(st: &Arc<ProcState>, pids: &[i32], from: NodeId, checkpointable: &[i32]) {
    st.caps.adopt(pids, checkpointable);
    {
        let mut a = crate::sync::lock(&st.migration.adopted);
        for &p in pids {
            if let Some(start) = super::start_ticks(p) {
                a.insert(
                    p,
                    Adopted {
                        start,
                        from,
                        at: std::time::Instant::now(),
                    },
                );
            }
        }
    }
    // The root is krgd's child now; a child is too once its parent ended.
    for &p in pids {
        let st = st.clone();
        tokio::spawn(async move { reap(st, p).await });
    }
}

/// Wait for a restored process to end; reap it if it is krgd's child by then.
async fn reap(st: Arc<ProcState>, pid: i32) {
    if let Some(status) = spawn::reap_adopted(pid).await {
        tracing::info!(pid, status, "migrated process ended");
    }
    crate::sync::lock(&st.migration.adopted).remove(&pid);
}
