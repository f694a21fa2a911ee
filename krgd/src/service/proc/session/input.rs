//! A session's input frames, applied to the jobs it runs here.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use krg_proto::proc::{Up, MAX_CHUNK, STDIN_WINDOW};

use super::{signal_job, Ctl};

/// Apply one input frame to every job still running.
pub(super) fn apply(up: Up, ctls: &mut [Option<Ctl>]) -> Result<(), &'static str> {
    match up {
        Up::Image(_) => return Err("image bytes after the jobs started"),
        Up::Stdin(data) => {
            if data.len() > MAX_CHUNK {
                return Err("a stdin frame larger than MAX_CHUNK");
            }
            for ctl in ctls.iter_mut().flatten() {
                if let Some(tx) = &ctl.stdin {
                    let q = ctl.queued.fetch_add(data.len() as u64, Ordering::SeqCst);
                    if q > 2 * (STDIN_WINDOW + MAX_CHUNK as u64) {
                        return Err("stdin beyond the window");
                    }
                    if tx.send(data.clone()).is_err() {
                        ctl.stdin = None;
                    }
                }
            }
        }
        Up::StdinEof => {
            for ctl in ctls.iter_mut().flatten() {
                if let (Some(tx), Some(_)) = (&ctl.stdin, &ctl.pty) {
                    // A terminal has no end of input: type its EOF character.
                    let _ = tx.send(Bytes::from_static(&[4]));
                }
                ctl.stdin = None;
                // A relay that is handing its job over cannot tell this
                // end of its pipe from the carrier's last word: say it
                // (signal 0, which nothing delivers).
                if let Some(relay) = ctl.entry.moved_signals() {
                    let _ = relay.send(0);
                }
            }
        }
        Up::Signal(sig) => {
            for ctl in ctls.iter().flatten() {
                signal_job(&ctl.entry, sig);
            }
        }
        Up::WinSize(ws) => {
            for ctl in ctls.iter().flatten() {
                if let Some(p) = &ctl.pty {
                    let _ = p.resize(ws);
                }
                if let Some(relay) = ctl.entry.moved_resize() {
                    let _ = relay.send(ws);
                }
            }
        }
        Up::CloseStdout => {
            for ctl in ctls.iter_mut().flatten() {
                ctl.close_stdout.take();
                if ctl.pty.is_some() {
                    // A terminal has no broken pipe: its reader left.
                    signal_job(&ctl.entry, libc::SIGHUP);
                }
            }
        }
        // (answered in `drive`, which knows the node's marks)
        Up::OutputWritten { .. } => {}
        // (the carrier joins the job here, when it moves on from here)
        Up::Splice { joiner, .. } => {
            for ctl in ctls.iter().flatten() {
                let mut carrier = crate::sync::lock(&ctl.entry.carrier);
                if carrier.is_some() {
                    *carrier = Some(joiner);
                }
            }
        }
        // The carrier joined a job that moved on where it runs now: what
        // it sent here goes to the job's relay, which passes it on; once
        // all of it is written, the relay's signals end, which tells it
        // to end the job's path through this node.
        Up::PathEnd { job } => {
            let rejoined = |c: &&mut Ctl| c.rejoined.load(Ordering::SeqCst);
            let ctl = ctls.get_mut(job as usize).and_then(Option::as_mut);
            let Some(ctl) = ctl.filter(rejoined) else {
                tracing::warn!(
                    job,
                    "the carrier's last word for a job that did not move on: ignored"
                );
                return Ok(());
            };
            ctl.stdin = None;
            let pump = ctl.stdin_pump.take();
            let moved = crate::sync::lock(&ctl.entry.moved).take();
            let told = ctl.path_end.take();
            tokio::spawn(async move {
                if let Some(pump) = pump {
                    let _ = pump.await;
                }
                drop(moved);
                if let Some(told) = told {
                    let _ = told.send(());
                }
            });
        }
    }
    Ok(())
}
