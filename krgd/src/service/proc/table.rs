//! This node's share of the global process table: the jobs its krgd
//! started, each in a PID namespace of its own.
//!
//! PIDs as a job sees them: its init is 1 and its program gets
//! `slot × PID_SPAN`, where the slot is free on this node; the program's
//! descendants get the PIDs that follow. So `NODE:PID` names one process
//! on a node as long as no job forks more than `PID_SPAN - 1` times (a
//! name that matches processes of two jobs is refused as ambiguous, never
//! guessed).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::NodeId;

use crate::sync;

/// PIDs between two jobs' programs.
pub const PID_SPAN: i32 = 4096;
/// Slots 1..=MAX_SLOT: a job namespace's pid_max is 4194304 (2^22).
pub const MAX_SLOT: u32 = (4_194_304 / PID_SPAN as u32) - 1;

/// One job of the table.
#[derive(Debug)]
pub struct JobEntry {
    /// Node-unique job number.
    pub id: u64,
    /// Its PID slot.
    pub slot: u32,
    /// PID of its program as the job sees it.
    pub pid: i32,
    /// PID of its init in krgd's namespace.
    pub init_pid: i32,
    /// pidfd of its init.
    pub init_pidfd: OwnedFd,
    /// Inode of its PID namespace (`/proc/PID/ns/pid`).
    pub ns_ino: u64,
    /// Owner.
    pub uid: u32,
    /// Owner's primary group.
    pub gid: u32,
    /// Runs on after its session ends.
    pub detached: bool,
    /// Where a detached job's output goes (its directory, and krgd's
    /// descriptors of its files).
    pub output: Option<Arc<super::detach::Output>>,
    /// The terminal it runs on (`krg run -t`), whose master krgd holds.
    pub tty: Option<Arc<super::pty::Pty>>,
    /// Node whose user started it (this node for local runs).
    pub origin: NodeId,
    /// When it started.
    pub started: Instant,
    /// Set when its processes moved to another node (`migrate`).
    pub moved: Mutex<Option<Moved>>,
    /// The node whose krgd carries this job's session, when another node
    /// carries it: when the job moves on, that node joins it where it
    /// runs next instead of reaching it through this one (see `splice`).
    pub carrier: Mutex<Option<NodeId>>,
    /// Its stdio as its session holds it, for a checkpoint that holds
    /// the job (a job with pipes or a terminal, once its session runs).
    pub held_stdio: Mutex<Option<Arc<super::heldio::HeldStdio>>>,
}

/// How a job that moved away ended, as its relay learned it.
#[derive(Debug)]
pub enum MovedEnd {
    /// It ended there.
    Exited(krg_proto::proc::ExitStatus),
    /// It runs on `node`, and its session's carrier joins it there with
    /// `token`: this node is out of its path.
    Rejoin {
        /// Where it runs.
        node: NodeId,
        /// For the carrier's `JoinSession`.
        token: u64,
    },
}

/// A job whose processes moved to another node: its session (on the node
/// that started it) reaches them through the relay to that node.
#[derive(Debug)]
pub struct Moved {
    /// The node that runs them now.
    pub to: NodeId,
    /// Signals for the job (the relay sends them there).
    pub signals: tokio::sync::mpsc::UnboundedSender<i32>,
    /// Window sizes of its terminal (likewise).
    pub resize: tokio::sync::mpsc::UnboundedSender<krg_proto::proc::WinSize>,
    /// How the job ended there, once the relay knows (taken by the session).
    pub exit: Option<tokio::sync::oneshot::Receiver<MovedEnd>>,
}

impl JobEntry {
    /// Where signals for the job go now, if its processes moved.
    pub fn moved_signals(&self) -> Option<tokio::sync::mpsc::UnboundedSender<i32>> {
        sync::lock(&self.moved).as_ref().map(|m| m.signals.clone())
    }

    /// Where its terminal's window sizes go now, if its processes moved.
    pub fn moved_resize(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedSender<krg_proto::proc::WinSize>> {
        sync::lock(&self.moved).as_ref().map(|m| m.resize.clone())
    }

    /// The end of a moved job, to wait for instead of the local init's.
    pub fn take_moved_exit(&self) -> Option<tokio::sync::oneshot::Receiver<MovedEnd>> {
        sync::lock(&self.moved).as_mut().and_then(|m| m.exit.take())
    }
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<u64, Arc<JobEntry>>,
    slots: BTreeSet<u32>,
    next_slot: u32,
    next_id: u64,
}

/// The table.
#[derive(Default)]
pub struct Table {
    inner: Mutex<Inner>,
}

/// A slot and job number set aside for a job being started; given back
/// when dropped unless the job was entered into the table.
pub struct Reservation<'a> {
    table: &'a Table,
    /// Job number.
    pub id: u64,
    /// Slot.
    pub slot: u32,
    entered: bool,
}

impl Reservation<'_> {
    /// The program's PID as the job will see it.
    pub fn pid(&self) -> i32 {
        self.slot as i32 * PID_SPAN
    }

    /// Enter the started job into the table (its `id` and `slot` are the
    /// reservation's).
    pub fn enter(mut self, mut entry: JobEntry) -> Arc<JobEntry> {
        self.entered = true;
        entry.id = self.id;
        entry.slot = self.slot;
        let entry = Arc::new(entry);
        sync::lock(&self.table.inner)
            .jobs
            .insert(entry.id, entry.clone());
        entry
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.entered {
            sync::lock(&self.table.inner).slots.remove(&self.slot);
        }
    }
}

impl Table {
    /// Set a slot aside for a new job.
    pub fn reserve(&self) -> Result<Reservation<'_>, AdminError> {
        let mut inner = sync::lock(&self.inner);
        let start = inner.next_slot;
        let mut slot = start;
        loop {
            slot = if slot >= MAX_SLOT { 1 } else { slot + 1 };
            if !inner.slots.contains(&slot) {
                break;
            }
            if slot == start {
                return Err(AdminError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "this node already runs {} jobs, the most it can",
                        inner.slots.len()
                    ),
                ));
            }
        }
        inner.next_slot = slot;
        Ok(self.hold(&mut inner, slot))
    }

    /// Take `slot` (free) and a new job number.
    fn hold(&self, inner: &mut Inner, slot: u32) -> Reservation<'_> {
        inner.slots.insert(slot);
        inner.next_id += 1;
        Reservation {
            table: self,
            id: inner.next_id,
            slot,
            entered: false,
        }
    }

    /// Set aside the slot of a job's program PID `pid` (a job that
    /// migrated in keeps its PIDs) when it is free here, else any slot: two
    /// jobs may then show the same PIDs, and a name that matches both is
    /// refused as ambiguous.
    pub fn reserve_for(&self, pid: i32) -> Result<Reservation<'_>, AdminError> {
        let slot = u32::try_from(pid / PID_SPAN).unwrap_or(0);
        let mut inner = sync::lock(&self.inner);
        if (1..=MAX_SLOT).contains(&slot) && !inner.slots.contains(&slot) {
            return Ok(self.hold(&mut inner, slot));
        }
        drop(inner);
        self.reserve()
    }

    /// Take an ended job out of the table.
    pub fn remove(&self, id: u64) {
        let mut inner = sync::lock(&self.inner);
        if let Some(e) = inner.jobs.remove(&id) {
            inner.slots.remove(&e.slot);
        }
    }

    /// Every job now in the table.
    pub fn jobs(&self) -> Vec<Arc<JobEntry>> {
        sync::lock(&self.inner).jobs.values().cloned().collect()
    }

    /// How many jobs run.
    pub fn len(&self) -> usize {
        sync::lock(&self.inner).jobs.len()
    }

    /// Whether no job runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_unique_and_given_back() {
        let t = Table::default();
        let a = t.reserve().unwrap();
        let b = t.reserve().unwrap();
        assert_ne!(a.slot, b.slot);
        assert_eq!(a.pid() % PID_SPAN, 0);
        assert!(a.pid() >= PID_SPAN);
        let slot = b.slot;
        drop(b);
        // Round robin: the freed slot is not reused at once, but is free.
        assert!(!sync::lock(&t.inner).slots.contains(&slot));
        let mut held = vec![a];
        while let Ok(r) = t.reserve() {
            held.push(r);
        }
        assert_eq!(held.len(), MAX_SLOT as usize);
        let e = t.reserve().err().unwrap();
        assert!(e.message.contains("the most it can"), "{e}");
        held.pop();
        assert!(t.reserve().is_ok());
    }

    #[test]
    fn a_job_that_migrated_in_gets_its_slot_when_it_is_free() {
        let t = Table::default();
        let r = t.reserve_for(5 * PID_SPAN).unwrap();
        assert_eq!(r.slot, 5);
        // taken: another slot, not a refusal
        let other = t.reserve_for(5 * PID_SPAN + 3).unwrap();
        assert_ne!(other.slot, 5);
        assert_ne!(t.reserve_for(0).unwrap().slot, 0);
    }
}
