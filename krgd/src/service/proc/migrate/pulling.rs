//! The target's side of a post-copy migration: the image came without
//! the page data of its memory files, and the processes were restored
//! lazily (`restart --lazy --check-as-loaded --fetch-fd`). This pulls
//! that data from the origin's copy of the image
//! ([`MigratePeerRequest::Pull`]) into the received files:
//!
//! - **on demand**: restart, then its page server, name the byte ranges
//!   they are about to read on the fetch socket
//!   ([`checkpoint::restore::fetch`]); what is missing of them is pulled
//!   at once and the answer waits for it;
//! - **in the background**: every other missing range, in file order, in
//!   chunks of [`BACKGROUND_CHUNK`] (small, so that a pull on demand does
//!   not queue behind much on the peer connection).
//!
//! Once the processes run here and every byte is in (or they ended,
//! closing the socket), the origin is told to drop its copy
//! ([`MigratePeerRequest::Release`]); never before the restore succeeded,
//! as the origin may need its copy to take the processes back. If
//! the origin cannot be reached, the missing memory cannot be had: the
//! page server is told so and kills the processes (post-copy's price: the
//! process needs both nodes until its memory is in).

use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use checkpoint::restore::fetch::Line;
use futures::stream::{self, StreamExt, TryStreamExt};
use krg_proto::cluster::NodeState;
use krg_proto::migrate::{MigratePeerReply, MigratePeerRequest};
use krg_proto::NodeId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::super::state::ProcState;
use super::entry::{gaps, Entry};
use super::{call, STEP_TIMEOUT};

/// Bytes per background pull (measured with the bench's 1 GiB writer:
/// 256 KiB to 1 MiB, 8 in flight, brought it all in within 1.8-2.0 s;
/// 4 in flight took 2-8 s; 4 MiB pulls made its faults wait longer).
const BACKGROUND_CHUNK: u64 = 256 << 10;
/// Background pulls in flight at once (16 against 8, alternating runs of
/// the same bench: all in after 1.66-1.67 s against 1.80-1.86 s).
const IN_FLIGHT: usize = 16;
/// A pull on demand also brings this much after what was asked for (the
/// next faults of a process going through its memory in order find it in).
const READ_AHEAD: u64 = 256 << 10;
/// Tries of one pull before the memory is given up.
const TRIES: u32 = 3;
/// How long one pull may take.
const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One image whose page data is being pulled.
pub struct Pulling {
    st: Arc<ProcState>,
    from: NodeId,
    xfer: u64,
    /// The image's files, by index.
    files: Mutex<Vec<Option<Entry>>>,
    /// Why the missing data cannot be had, once it cannot.
    failed: Mutex<Option<String>>,
    /// Set when the restore failed: pull nothing more.
    stopped: AtomicBool,
    /// The origin was told to drop its copy.
    released: AtomicBool,
    /// The processes run here: the origin's copy is not needed to take
    /// them back any more (before that it may be: never released then).
    restored: AtomicBool,
}

/// (file index, offset, length) of a pull.
type Chunk = (u32, u64, u64);

/// Post-copy on the target: start pulling what the image's `files` lack
/// (`None`: nothing was left out) from node `from`; the pulls and
/// restart's end of the fetch socket, both `None` for a whole image.
pub fn begin(
    st: &Arc<ProcState>,
    from: NodeId,
    xfer: u64,
    files: Option<Vec<Option<Entry>>>,
) -> Result<(Option<Arc<Pulling>>, Option<OwnedFd>), String> {
    let Some(files) = files else {
        return Ok((None, None));
    };
    let (p, sock) =
        Pulling::start(st, from, xfer, files).map_err(|e| format!("fetch socket: {e}"))?;
    // (tests of an origin taking a post-copy process back)
    kdfs::store::crash::point("krgd-postcopy-commit");
    Ok((Some(p), Some(OwnedFd::from(sock))))
}

/// The restore is over: on success the origin's copy may go once every
/// byte is in; on failure nothing more is pulled (the origin keeps it).
pub fn settle(p: Option<&Arc<Pulling>>, restored: bool) {
    match p {
        Some(p) if restored => p.restored(),
        Some(p) => p.stop(),
        None => {}
    }
}

impl Pulling {
    /// Start pulling transfer `xfer`'s missing data from node `from`;
    /// returns restart's end of the fetch socket.
    pub fn start(
        st: &Arc<ProcState>,
        from: NodeId,
        xfer: u64,
        files: Vec<Option<Entry>>,
    ) -> std::io::Result<(Arc<Pulling>, std::os::unix::net::UnixStream)> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let sock = tokio::net::UnixStream::from_std(ours)?;
        let p = Arc::new(Pulling {
            st: st.clone(),
            from,
            xfer,
            files: Mutex::new(files),
            failed: Mutex::new(None),
            stopped: AtomicBool::new(false),
            released: AtomicBool::new(false),
            restored: AtomicBool::new(false),
        });
        tokio::spawn(p.clone().answer(sock));
        tokio::spawn(p.clone().background());
        Ok((p, theirs))
    }

    /// The restore failed: stop pulling (the origin keeps its image).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// The restore succeeded: the origin may drop its image once every
    /// byte is in (or at once, if the processes are gone already).
    pub fn restored(self: &Arc<Self>) {
        self.restored.store(true, Ordering::Relaxed);
        if self.all_in() || self.stopped.load(Ordering::Relaxed) {
            let p = self.clone();
            tokio::spawn(async move { p.release().await });
        }
    }

    /// What is missing of `[off, off + len)` of file `name`, cut into
    /// pulls of at most `max` bytes.
    fn missing_of(&self, name: &str, off: u64, len: u64, max: u64) -> Result<Vec<Chunk>, String> {
        let files = crate::sync::lock(&self.files);
        let (idx, e) = files
            .iter()
            .enumerate()
            .find_map(|(i, e)| e.as_ref().filter(|e| e.name == name).map(|e| (i, e)))
            .ok_or_else(|| format!("no file {name} in this image"))?;
        let end = off
            .checked_add(len)
            .filter(|&end| end <= e.len)
            .ok_or_else(|| format!("bytes {off}+{len} are beyond {name}'s {} bytes", e.len))?;
        Ok(gaps(&e.have, off, end, max)
            .into_iter()
            .map(|(s, n)| (idx as u32, s, n))
            .collect())
    }

    /// What is missing of the [`READ_AHEAD`] bytes of file `name` from
    /// `at` (none past its end).
    fn ahead_of(&self, name: &str, at: u64) -> Vec<Chunk> {
        let len = crate::sync::lock(&self.files)
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .map_or(0, |e| e.len.saturating_sub(at).min(READ_AHEAD));
        if len == 0 {
            return Vec::new();
        }
        self.missing_of(name, at, len, READ_AHEAD)
            .unwrap_or_default()
    }

    /// Every missing range, in file order.
    fn all_missing(&self) -> Vec<Chunk> {
        let files = crate::sync::lock(&self.files);
        files
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i, e)))
            .flat_map(|(i, e)| {
                gaps(&e.have, 0, e.len, BACKGROUND_CHUNK)
                    .into_iter()
                    .map(move |(s, n)| (i as u32, s, n))
            })
            .collect()
    }

    fn all_in(&self) -> bool {
        crate::sync::lock(&self.files)
            .iter()
            .flatten()
            .all(Entry::complete)
    }

    /// Pull `chunks`, several at once, and write them in.
    async fn fetch(&self, chunks: Vec<Chunk>) -> Result<(), String> {
        stream::iter(chunks)
            .map(|c| self.pull(c))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    /// One chunk from the origin into its file.
    async fn pull(&self, (file, offset, len): Chunk) -> Result<(), String> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err("the restore failed".into());
        }
        let req = MigratePeerRequest::Pull {
            xfer: self.xfer,
            file,
            offset,
            len: len as u32,
        };
        let mut last = String::new();
        for _ in 0..TRIES {
            // another pull may have brought it (the background's and a
            // fault's overlap), and the origin may have been released since
            if self.had((file, offset, len)) {
                return Ok(());
            }
            if let Some(why) = self.origin_failed() {
                return Err(why);
            }
            match call(&self.st, self.from, req.clone(), PULL_TIMEOUT).await {
                Ok(MigratePeerReply::Pulled(d))
                    if d.xfer == self.xfer
                        && d.file == file
                        && d.offset == offset
                        && d.data.len() as u64 == len =>
                {
                    return self.write(file, offset, d.data).await;
                }
                Ok(other) => last = format!("node {} answered {other:?}", self.from),
                Err(e) => last = e.message,
            }
        }
        if self.had((file, offset, len)) {
            return Ok(());
        }
        Err(last)
    }

    /// Whether all of `chunk` is in.
    fn had(&self, (file, offset, len): Chunk) -> bool {
        crate::sync::lock(&self.files)
            .get(file as usize)
            .and_then(|e| e.as_ref())
            .is_some_and(|e| gaps(&e.have, offset, offset + len, len.max(1)).is_empty())
    }

    /// Why the origin cannot serve any more, when the cluster says it failed.
    fn origin_failed(&self) -> Option<String> {
        let view = self.st.ctx.view();
        match view.node(self.from).map(|n| n.state) {
            Some(NodeState::Failed) | None => Some(format!(
                "node {} (the origin, which holds the memory still to come) has failed",
                self.from
            )),
            _ => None,
        }
    }

    async fn write(&self, file: u32, offset: u64, data: bytes::Bytes) -> Result<(), String> {
        let f = crate::sync::lock(&self.files)
            .get(file as usize)
            .and_then(|e| e.as_ref())
            .map(|e| e.file.clone())
            .ok_or_else(|| format!("no file {file}"))?;
        let n = data.len() as u64;
        tokio::task::spawn_blocking(move || f.write_all_at(&data, offset))
            .await
            .map_err(|e| format!("worker thread: {e}"))?
            .map_err(|e| format!("writing the image: {e}"))?;
        let mut files = crate::sync::lock(&self.files);
        if let Some(Some(e)) = files.get_mut(file as usize) {
            e.got(offset, offset + n);
        }
        self.st.ctx.metrics.migration_pulled_bytes.inc_by(n);
        Ok(())
    }

    /// Pull everything still missing, then release the origin's copy.
    async fn background(self: Arc<Self>) {
        let chunks = self.all_missing();
        match self.fetch(chunks).await {
            Ok(()) => self.release().await,
            Err(why) => {
                if !self.stopped.load(Ordering::Relaxed) {
                    tracing::warn!(
                        xfer = self.xfer,
                        from = self.from,
                        why,
                        "post-copy: memory still on the origin cannot be had"
                    );
                }
                let mut f = crate::sync::lock(&self.failed);
                f.get_or_insert(why);
            }
        }
    }

    /// Tell the origin to drop its copy (once, and only once the
    /// processes were restored here).
    async fn release(&self) {
        if !self.restored.load(Ordering::Relaxed) || self.released.swap(true, Ordering::Relaxed) {
            return;
        }
        let req = MigratePeerRequest::Release { xfer: self.xfer };
        if let Err(e) = call(&self.st, self.from, req, STEP_TIMEOUT).await {
            tracing::warn!(xfer = self.xfer, from = self.from, error = %e.message, "post-copy: the origin was not told to drop its image");
        }
    }

    /// Answer restart and its page server on the fetch socket until they
    /// are gone.
    async fn answer(self: Arc<Self>, sock: tokio::net::UnixStream) {
        let (r, mut w) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        // the `need`s since the last `sync` or `poll`
        let mut batch: Vec<(String, u64, u64)> = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let (reply, go_on) = match Line::parse(&line) {
                Some(Line::Need { name, off, len }) => {
                    batch.push((name, off, len));
                    continue;
                }
                Some(Line::Poll) => (self.look(&std::mem::take(&mut batch)), true),
                Some(Line::Sync) => (self.settle(&std::mem::take(&mut batch)).await, true),
                None => ("err a line krgd does not know\n".to_string(), false),
            };
            if w.write_all(reply.as_bytes()).await.is_err() || !go_on {
                break;
            }
        }
        // restart and its page server are gone: the processes ended or
        // have all their memory (or the restore failed: the origin uses
        // its copy, and drops it itself)
        if !self.stopped.swap(true, Ordering::Relaxed) {
            self.release().await;
        }
    }

    /// What is missing of a batch of `need`s; with `read_ahead`, a batch
    /// of one (a fault of the page server) also gets the [`READ_AHEAD`]
    /// bytes after it (restart's own batch names scattered pages: none).
    fn wanted(&self, batch: &[(String, u64, u64)], read_ahead: bool) -> Result<Vec<Chunk>, String> {
        let mut chunks = Vec::new();
        for (name, off, len) in batch {
            chunks.extend(self.missing_of(name, *off, *len, BACKGROUND_CHUNK * 4)?);
        }
        if let [(name, off, len)] = batch {
            if read_ahead {
                let more = self.ahead_of(name, off.saturating_add(*len));
                chunks.extend(
                    more.into_iter()
                        .filter(|c| !chunks.contains(c))
                        .collect::<Vec<_>>(),
                );
            }
        }
        Ok(chunks)
    }

    /// The answer to a `poll`: whether what the batch names is in.
    fn look(&self, batch: &[(String, u64, u64)]) -> String {
        let failed = crate::sync::lock(&self.failed).clone();
        match (failed, self.wanted(batch, false)) {
            (Some(why), _) | (None, Err(why)) => format!("err {why}\n"),
            (None, Ok(missing)) if !missing.is_empty() => "no\n".into(),
            _ if self.all_in() => "all\n".into(),
            _ => "ok\n".into(),
        }
    }

    /// The answer to a `sync`, once what the batch names is in.
    async fn settle(&self, batch: &[(String, u64, u64)]) -> String {
        let chunks = match self.wanted(batch, true) {
            Ok(c) => c,
            Err(why) => return format!("err {why}\n"),
        };
        if !chunks.is_empty() {
            if let Err(why) = self.fetch(chunks).await {
                let earlier = crate::sync::lock(&self.failed).clone();
                return format!("err {}\n", earlier.unwrap_or(why));
            }
        }
        if self.all_in() {
            "all\n".into()
        } else {
            "ok\n".into()
        }
    }
}
