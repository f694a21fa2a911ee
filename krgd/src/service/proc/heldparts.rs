//! The parts of applications this node holds stopped (see `held`): what
//! is kept of each, and letting one run on.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::heldio::HeldStdio;
use super::migrate::registry::start_ticks;

/// A part held stopped: who asked for its save, and its processes (with
/// their start times, so that a PID used again is left alone).
pub(super) struct HeldPart {
    pub(super) uid: u32,
    pub(super) pids: Vec<(i32, Option<u64>)>,
    /// Which hold this is (the limit's timer of an earlier hold of the
    /// same SN, removed and saved again, leaves this one alone).
    pub(super) serial: u64,
    /// When its save froze it.
    pub(super) since: Instant,
    /// Its stdio, whose reader stopped reading at the output mark, and
    /// the input it had not read (see `heldio`).
    pub(super) stdio: Option<(Arc<HeldStdio>, Bytes)>,
}

/// The parts this node holds, by (application id, SN).
#[derive(Default)]
pub struct Held {
    pub(super) parts: Mutex<HashMap<(i32, u32), HeldPart>>,
    pub(super) next: AtomicU64,
    /// The output marks of held parts awaiting their stand-in's answer.
    pub output_marks: super::heldio::Marks,
}

impl Held {
    /// The part held as `serial`, taken out.
    pub(super) fn take(&self, app: i32, sn: u32, serial: u64) -> Option<HeldPart> {
        let mut parts = crate::sync::lock(&self.parts);
        match parts.get(&(app, sn)) {
            Some(p) if p.serial == serial => parts.remove(&(app, sn)),
            _ => None,
        }
    }
}

/// SIGCONT to each process of `part` that is still the one held, its
/// unread input written back first, and its stand-in told to read again.
pub(super) fn run_on(part: &HeldPart) {
    if let Some((stdio, unread)) = &part.stdio {
        stdio.give_back(unread.clone());
    }
    for &(pid, born) in &part.pids {
        if born.is_some() && start_ticks(pid) == born {
            // SAFETY: plain kill(2) with SIGCONT of a process this node
            // stopped (its start time checked just before).
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
    if let Some((stdio, _)) = &part.stdio {
        stdio.resume();
    }
}
