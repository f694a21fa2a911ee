//! XCPU sessions of the /krg tree: what `nodes/<id>/xcpu/<n>/` holds and
//! does. A session is started by the same library call as `krg run`
//! ([`hub::open`]), with the credentials of whoever opened `clone`.
//!
//! Lifetime: a session stays while any of its files is open (the `clone`
//! descriptor counts as its `ctl`) or its job runs. It vanishes when its
//! last `ctl`/`clone` descriptor is closed after the job ended (XCPU's
//! rule), or after [`LINGER`] with nothing open and nothing running (so
//! that `n=$(cat clone)` followed by writes by path works, and a finished
//! job's `wait` and output can still be read for a while).
//!
//! [`start`]: how `exec` starts the job and carries its events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::proc::{parse_signal, Credentials, Up, MAX_CHUNK, STDIN_WINDOW};
use krg_proto::NodeId;
use tokio::sync::{mpsc, Notify};

use super::super::state::ProcState;
use super::words;
use crate::service::sched::SchedService;
use crate::sync;

mod start;

/// How long a session with nothing open and nothing running is kept.
pub const LINGER: Duration = Duration::from_secs(10);
/// Output a session buffers per stream before its job waits.
const OUT_CAP: usize = 1 << 20;
/// Largest argument list, environment or stdin buffered before exec.
const MAX_TEXT: usize = 2 << 20;
/// Largest executable image a session takes.
const MAX_IMAGE: usize = 256 << 20;

/// An errno and why (the reason goes to krgd's log and the status file).
pub type Refusal = (i32, String);

fn refuse<T>(errno: i32, why: impl Into<String>) -> Result<T, Refusal> {
    Err((errno, why.into()))
}

/// The errno a file operation answers for a refused request.
pub fn errno_of(e: &AdminError) -> i32 {
    match e.kind {
        ErrorKind::NotFound => libc::ENOENT,
        ErrorKind::PermissionDenied => libc::EACCES,
        ErrorKind::InvalidArgument if e.message.contains("too long") => libc::E2BIG,
        ErrorKind::InvalidArgument => libc::EINVAL,
        ErrorKind::Unavailable => libc::EHOSTDOWN,
        ErrorKind::Conflict => libc::EBUSY,
        ErrorKind::NoQuorum => libc::EAGAIN,
        ErrorKind::Internal => libc::EIO,
    }
}

#[derive(Default)]
struct Pipe {
    buf: VecDeque<u8>,
}

enum Phase {
    New,
    Starting,
    Running {
        input: mpsc::Sender<Up>,
        pid: Option<i32>,
    },
    Ended {
        status: String,
        code: i32,
    },
}

struct State {
    argv: Vec<u8>,
    env: Option<Vec<u8>>,
    cwd: Option<Vec<u8>>,
    image: Vec<u8>,
    image_writers: u32,
    image_sealed: bool,
    phase: Phase,
    last_error: Option<String>,
    out: Pipe,
    err: Pipe,
    stdin_early: Vec<u8>,
    stdin_closed: bool,
    stdin_sent: u64,
    stdin_acked: u64,
    handles: u32,
    ctl_handles: u32,
    /// The last ctl handle was closed after the job ended: vanish now.
    done: bool,
    idle_since: Instant,
}

/// One session.
pub struct XSession {
    /// Node its job runs on.
    pub node: NodeId,
    /// Its number.
    pub n: u64,
    /// Whoever opened `clone`.
    pub owner: Credentials,
    state: Mutex<State>,
    changed: Notify,
}

/// Every session of this tree.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<BTreeMap<(NodeId, u64), Arc<XSession>>>,
    next: AtomicU64,
}

impl Sessions {
    /// A new session of `owner` for `node` (its clone handle open).
    pub fn create(&self, node: NodeId, owner: Credentials) -> Arc<XSession> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let s = Arc::new(XSession {
            node,
            n,
            owner,
            state: Mutex::new(State {
                argv: Vec::new(),
                env: None,
                cwd: None,
                image: Vec::new(),
                image_writers: 0,
                image_sealed: false,
                phase: Phase::New,
                last_error: None,
                out: Pipe::default(),
                err: Pipe::default(),
                stdin_early: Vec::new(),
                stdin_closed: false,
                stdin_sent: 0,
                stdin_acked: 0,
                handles: 1,
                ctl_handles: 1,
                done: false,
                idle_since: Instant::now(),
            }),
            changed: Notify::new(),
        });
        sync::lock(&self.map).insert((node, n), s.clone());
        s
    }

    /// Session `n` of `node`.
    pub fn get(&self, node: NodeId, n: u64) -> Option<Arc<XSession>> {
        sync::lock(&self.map).get(&(node, n)).cloned()
    }

    /// Session numbers of `node`.
    pub fn of_node(&self, node: NodeId) -> Vec<u64> {
        sync::lock(&self.map)
            .keys()
            .filter(|(a, _)| *a == node)
            .map(|(_, n)| *n)
            .collect()
    }

    /// Remove the sessions whose time is up; their (node, n).
    pub fn sweep(&self) -> Vec<(NodeId, u64)> {
        let mut map = sync::lock(&self.map);
        let gone: Vec<(NodeId, u64)> = map
            .iter()
            .filter(|(_, s)| s.expired())
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            map.remove(k);
        }
        gone
    }

    /// How many sessions exist.
    pub fn len(&self) -> usize {
        sync::lock(&self.map).len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl XSession {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        sync::lock(&self.state)
    }

    fn expired(&self) -> bool {
        let st = self.lock();
        let quiet = st.handles == 0 && !matches!(st.phase, Phase::Running { .. } | Phase::Starting);
        quiet && (st.done || st.idle_since.elapsed() >= LINGER)
    }

    /// Wait until `ready` holds (checked again after every change).
    async fn wait_for<R>(&self, mut ready: impl FnMut(&mut State) -> Option<R>) -> R {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = ready(&mut self.lock()) {
                return r;
            }
            notified.await;
        }
    }

    fn touch(&self) {
        self.changed.notify_waiters();
    }

    /// A file of the session was opened (`ctl` for ctl or clone).
    pub fn opened(&self, ctl: bool) {
        let mut st = self.lock();
        st.handles += 1;
        if ctl {
            st.ctl_handles += 1;
        }
    }

    /// A file of the session was closed.
    pub fn closed(&self, ctl: bool) {
        let mut st = self.lock();
        st.handles = st.handles.saturating_sub(1);
        if ctl {
            st.ctl_handles = st.ctl_handles.saturating_sub(1);
            if st.ctl_handles == 0 && matches!(st.phase, Phase::Ended { .. }) {
                st.done = true;
            }
        }
        st.idle_since = Instant::now();
    }

    /// A writer of `exec` closed: the image is complete.
    pub fn image_closed(&self) {
        let mut st = self.lock();
        st.image_writers = st.image_writers.saturating_sub(1);
        if st.image_writers == 0 && !st.image.is_empty() {
            st.image_sealed = true;
        }
    }

    /// Open `exec` for writing: once only.
    pub fn open_image(&self) -> Result<(), Refusal> {
        let mut st = self.lock();
        if st.image_sealed || !matches!(st.phase, Phase::New) {
            return refuse(libc::EPERM, "exec is written once, before the job starts");
        }
        st.image_writers += 1;
        Ok(())
    }

    fn new_only(st: &State, what: &str) -> Result<(), Refusal> {
        if matches!(st.phase, Phase::New) {
            Ok(())
        } else {
            refuse(
                libc::EBUSY,
                format!("{what} cannot change once the job started"),
            )
        }
    }

    /// Write into argv, env, cwd or exec at `offset`. What the write
    /// leaves is checked before it is kept (argv only when written whole at
    /// offset 0, the usual `echo … > argv`; always again at exec), so a
    /// refused write changes nothing.
    pub fn write_text(
        &self,
        which: super::inode::SessFile,
        offset: u64,
        data: &[u8],
        whole: bool,
    ) -> Result<(), Refusal> {
        use super::inode::SessFile as F;
        let mut st = self.lock();
        Self::new_only(&st, which.name())?;
        let (current, max): (&[u8], usize) = match which {
            F::Argv => (&st.argv, MAX_TEXT),
            F::Env => (st.env.as_deref().unwrap_or_default(), MAX_TEXT),
            F::Cwd => (st.cwd.as_deref().unwrap_or_default(), 4096),
            F::Exec => (&st.image, MAX_IMAGE),
            _ => return refuse(libc::EBADF, "not a text file"),
        };
        let offset = offset as usize;
        if offset > current.len() {
            return refuse(libc::EINVAL, "write at a hole");
        }
        if offset + data.len() > max {
            return refuse(
                libc::E2BIG,
                format!("{} is limited to {max} bytes", which.name()),
            );
        }
        match which {
            F::Argv if whole && offset == 0 => {
                words::split(data).map_err(|e| (libc::EINVAL, format!("argv: {e}")))?;
            }
            F::Env => {
                let mut text = current[..offset].to_vec();
                text.extend_from_slice(data);
                for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if !line.contains(&b'=') || line.starts_with(b"=") || line.contains(&0) {
                        return refuse(
                            libc::EINVAL,
                            format!("env: '{}' is not NAME=value", String::from_utf8_lossy(line)),
                        );
                    }
                }
            }
            F::Cwd => {
                let mut text = current[..offset].to_vec();
                text.extend_from_slice(data);
                let t = trim(&text);
                if !t.starts_with(b"/") || t.contains(&0) {
                    return refuse(libc::EINVAL, "cwd must be an absolute path");
                }
            }
            _ => {}
        }
        let buf = match which {
            F::Argv => &mut st.argv,
            F::Env => st.env.get_or_insert_with(Vec::new),
            F::Cwd => st.cwd.get_or_insert_with(Vec::new),
            _ => &mut st.image,
        };
        buf.truncate(offset);
        buf.extend_from_slice(data);
        Ok(())
    }

    /// Clear a text file (`echo x > argv` truncates first).
    pub fn truncate(&self, which: super::inode::SessFile) -> Result<(), Refusal> {
        use super::inode::SessFile as F;
        let mut st = self.lock();
        Self::new_only(&st, which.name())?;
        match which {
            F::Argv => st.argv.clear(),
            F::Env => st.env = Some(Vec::new()),
            F::Cwd => st.cwd = Some(Vec::new()),
            F::Exec => st.image.clear(),
            _ => {}
        }
        Ok(())
    }

    /// Read back argv, env or cwd as written.
    pub fn text(&self, which: super::inode::SessFile) -> Vec<u8> {
        use super::inode::SessFile as F;
        let st = self.lock();
        match which {
            F::Argv => st.argv.clone(),
            F::Env => st.env.clone().unwrap_or_default(),
            F::Cwd => st.cwd.clone().unwrap_or_else(|| b"/\n".to_vec()),
            _ => Vec::new(),
        }
    }

    /// The `status` file.
    pub fn status(&self) -> String {
        let st = self.lock();
        let line = match &st.phase {
            Phase::New => match &st.last_error {
                Some(e) => format!("new (last exec failed: {e})"),
                None => "new".into(),
            },
            Phase::Starting => "starting".into(),
            Phase::Running { .. } => "running".into(),
            Phase::Ended { status, .. } => status.clone(),
        };
        format!("{line}\n")
    }

    /// The `pid` file: the PID as the job sees it, once started.
    pub fn pid(&self) -> String {
        match &self.lock().phase {
            Phase::Running { pid: Some(p), .. } => format!("{p}\n"),
            _ => String::new(),
        }
    }

    /// `wait`: block until the job ended; its shell status.
    pub async fn wait(&self) -> String {
        self.wait_for(|st| match &st.phase {
            Phase::Ended { code, .. } => Some(format!("{code}\n")),
            _ => None,
        })
        .await
    }

    /// Read stdout (`out`) or stderr: what is there, or wait for some, or
    /// end of file once the job ended and all was read.
    pub async fn read_output(&self, out: bool, size: usize) -> Vec<u8> {
        let data = self
            .wait_for(|st| {
                let ended = matches!(st.phase, Phase::Ended { .. });
                let pipe = if out { &mut st.out } else { &mut st.err };
                if !pipe.buf.is_empty() {
                    let n = size.min(pipe.buf.len());
                    Some(pipe.buf.drain(..n).collect())
                } else if ended {
                    Some(Vec::new())
                } else {
                    None
                }
            })
            .await;
        self.touch();
        data
    }

    /// Write stdin: before the job starts it is kept (up to a bound); while
    /// it runs, at most a window is in flight; after it ended: EPIPE.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), Refusal> {
        for chunk in data.chunks(MAX_CHUNK) {
            let input = self
                .wait_for(|st| {
                    if st.stdin_closed {
                        return Some(refuse(libc::EPIPE, "stdin was closed"));
                    }
                    match &st.phase {
                        Phase::New | Phase::Starting => {
                            if st.stdin_early.len() + chunk.len() > MAX_TEXT {
                                return Some(refuse(
                                    libc::EAGAIN,
                                    "stdin before exec is limited to 2 MiB",
                                ));
                            }
                            st.stdin_early.extend_from_slice(chunk);
                            Some(Ok(None))
                        }
                        Phase::Running { input, .. } => {
                            if st.stdin_sent - st.stdin_acked < STDIN_WINDOW {
                                st.stdin_sent += chunk.len() as u64;
                                Some(Ok(Some(input.clone())))
                            } else {
                                None
                            }
                        }
                        Phase::Ended { .. } => Some(refuse(libc::EPIPE, "the job ended")),
                    }
                })
                .await?;
            if let Some(input) = input {
                if input.send(Up::Stdin(chunk.to_vec().into())).await.is_err() {
                    return refuse(libc::EPIPE, "the job ended");
                }
            }
        }
        Ok(())
    }

    /// A `ctl` command.
    pub async fn ctl(
        self: &Arc<Self>,
        st: &Arc<ProcState>,
        sched: &SchedService,
        cmd: &[u8],
    ) -> Result<(), Refusal> {
        let text = String::from_utf8_lossy(trim(cmd)).into_owned();
        let mut words = text.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("exec"), None, _) => self.exec(st, sched).await,
            (Some("kill"), Some(sig), None) => {
                let sig = parse_signal(sig).map_err(|e| (libc::EINVAL, e))?;
                let input = match &self.lock().phase {
                    Phase::Running { input, .. } => input.clone(),
                    _ => return refuse(libc::ESRCH, "no job runs"),
                };
                input
                    .send(Up::Signal(sig))
                    .await
                    .map_err(|_| (libc::ESRCH, "the job ended".to_string()))
            }
            (Some("close"), None, _) => {
                let input = {
                    let mut s = self.lock();
                    s.stdin_closed = true;
                    match &s.phase {
                        Phase::Running { input, .. } => Some(input.clone()),
                        _ => None,
                    }
                };
                if let Some(i) = input {
                    let _ = i.send(Up::StdinEof).await;
                }
                self.touch();
                Ok(())
            }
            _ => refuse(
                libc::EINVAL,
                format!("ctl: '{text}' is not a command (exec, kill SIG, close)"),
            ),
        }
    }
}

pub(super) fn trim(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map(|i| i + 1)
        .unwrap_or(0);
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(end);
    &b[start..end]
}
