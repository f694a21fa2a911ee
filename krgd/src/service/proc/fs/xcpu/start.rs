//! Starting an XCPU session's job (ctl `exec`): the job spec from what was
//! written into the session's files, the run itself (the same library call
//! as `krg run`), then the job's events carried into `stdout`, `stderr` and
//! `wait` until it ends.

use std::sync::Arc;
use std::time::Instant;

use krg_proto::proc::{Down, JobSpec, Placement, Program, RunRequest, Up, MAX_CHUNK};
use tokio::sync::mpsc;

use super::super::super::hub;
use super::super::super::state::ProcState;
use super::super::words;
use super::{errno_of, refuse, trim, Phase, Refusal, XSession, OUT_CAP};
use crate::caller::Caller;
use crate::service::sched::SchedService;

impl XSession {
    fn spec(&self) -> Result<(JobSpec, Vec<u8>), Refusal> {
        let mut st = self.lock();
        match st.phase {
            Phase::New => {}
            _ => return refuse(libc::EBUSY, "the session's job was already started"),
        }
        if st.image_writers > 0 {
            return refuse(libc::EBUSY, "exec is still open for writing");
        }
        let mut argv = words::split(&st.argv).map_err(|e| (libc::EINVAL, format!("argv: {e}")))?;
        let image = std::mem::take(&mut st.image);
        let program = if image.is_empty() {
            if argv.is_empty() {
                return refuse(
                    libc::EINVAL,
                    "nothing to run: write argv (or an image into exec) first",
                );
            }
            Program::Command
        } else {
            if argv.is_empty() {
                argv.push(b"a.out".to_vec());
            }
            Program::Image {
                name: String::from_utf8_lossy(&argv[0]).into_owned(),
                len: image.len() as u64,
            }
        };
        let env = match &st.env {
            Some(e) => e
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect(),
            None => default_env(self.owner.uid),
        };
        let cwd = st
            .cwd
            .as_deref()
            .map(|c| trim(c).to_vec())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| b"/".to_vec());
        st.phase = Phase::Starting;
        let spec = JobSpec {
            program,
            argv,
            env,
            cwd,
            tty: None,
            detach: false,
            stdin: true,
        };
        Ok((spec, image))
    }

    fn failed(&self, why: String) {
        let mut st = self.lock();
        st.phase = Phase::New;
        st.last_error = Some(why);
        drop(st);
        self.touch();
    }

    /// Start the job (ctl `exec`): answered once it runs, or with the errno
    /// of why it could not start (nothing is left running then).
    pub(super) async fn exec(
        self: &Arc<Self>,
        st: &Arc<ProcState>,
        sched: &SchedService,
    ) -> Result<(), Refusal> {
        let (spec, image) = self.spec()?;
        let caller = Caller {
            uid: self.owner.uid,
            gid: self.owner.gid,
            pid: None,
        };
        let req = RunRequest {
            spec,
            placement: Placement::Nodes(vec![self.node]),
            per_node: 1,
        };
        let opened = hub::open(st, sched, &caller, req, self.owner.clone()).await;
        let (_, mut sess) = match opened {
            Ok(x) => x,
            Err(e) => {
                self.failed(e.message.clone());
                return refuse(errno_of(&e), e.message);
            }
        };
        for chunk in image.chunks(MAX_CHUNK) {
            let _ = sess.input.send(Up::Image(chunk.to_vec().into())).await;
        }
        let pid = loop {
            match sess.events.recv().await {
                Some(Down::Started { pid, .. }) => break pid,
                Some(Down::Refused { error, .. }) => {
                    self.failed(error.message.clone());
                    return refuse(errno_of(&error), error.message);
                }
                Some(Down::Lost { reason, .. }) => {
                    self.failed(reason.clone());
                    return refuse(libc::EHOSTDOWN, reason);
                }
                Some(_) => continue,
                None => {
                    self.failed("the job did not start".into());
                    return refuse(libc::EIO, "the job did not start");
                }
            }
        };
        let (early, closed) = {
            let mut s = self.lock();
            s.phase = Phase::Running {
                input: sess.input.clone(),
                pid: Some(pid),
            };
            s.stdin_sent = s.stdin_early.len() as u64;
            (std::mem::take(&mut s.stdin_early), s.stdin_closed)
        };
        for chunk in early.chunks(MAX_CHUNK) {
            let _ = sess.input.send(Up::Stdin(chunk.to_vec().into())).await;
        }
        if closed {
            let _ = sess.input.send(Up::StdinEof).await;
        }
        self.touch();
        tokio::spawn(self.clone().pump(sess.events, sess.input));
        Ok(())
    }

    /// Carry the job's events into the session until it ends.
    async fn pump(self: Arc<Self>, mut events: mpsc::Receiver<Down>, input: mpsc::Sender<Up>) {
        let mut end = None;
        while let Some(d) = events.recv().await {
            match d {
                Down::Stdout { data, .. } => self.push(true, data).await,
                Down::Stderr { data, .. } => self.push(false, data).await,
                Down::StdinAck { bytes, .. } => {
                    let mut st = self.lock();
                    st.stdin_acked = st.stdin_acked.max(bytes);
                    drop(st);
                    self.touch();
                }
                Down::Exited { status, .. } => {
                    end = Some((status.to_string(), status.shell_code()))
                }
                Down::Refused { error, .. } => {
                    end = Some((format!("failed: {}", error.message), 255))
                }
                Down::Lost { reason, .. } => end = Some((format!("lost: {reason}"), 255)),
                // what came before is in the session's output already
                Down::OutputMark { mark, .. } => {
                    let _ = input.send(Up::OutputWritten { mark }).await;
                }
                Down::Started { .. }
                | Down::InputResume { .. }
                | Down::Detached { .. }
                | Down::Spliced { .. }
                | Down::Rejoin { .. } => {}
            }
        }
        drop(input);
        let (status, code) = end.unwrap_or_else(|| ("lost: the session ended".into(), 255));
        // With no ctl open now, the session lingers (the sweep removes it
        // after LINGER), so `wait` and the output can still be read.
        let mut st = self.lock();
        st.phase = Phase::Ended { status, code };
        st.idle_since = Instant::now();
        drop(st);
        self.touch();
    }

    async fn push(&self, out: bool, data: Vec<u8>) {
        let mut data = Some(data);
        self.wait_for(|st| {
            let pipe = if out { &mut st.out } else { &mut st.err };
            if pipe.buf.len() >= OUT_CAP {
                return None;
            }
            pipe.buf.extend(data.take().unwrap_or_default());
            Some(())
        })
        .await;
        self.touch();
    }
}

/// PATH, HOME, USER and LOGNAME of `uid`, for a session whose env was not written.
fn default_env(uid: u32) -> Vec<Vec<u8>> {
    let mut env = vec![b"PATH=/usr/local/bin:/usr/bin:/bin".to_vec()];
    if let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        env.push(format!("HOME={}", u.dir.display()).into_bytes());
        env.push(format!("USER={}", u.name).into_bytes());
        env.push(format!("LOGNAME={}", u.name).into_bytes());
    }
    env
}
