//! Directories of this node lent to this mount by its krgd (`Lend`): the
//! mount then makes regular files there, and removes those it made, in the
//! store itself — no round trip to krgd, answered on the FUSE thread. What
//! krgd does to keep that safe is in `kdfs::callback::loans`; here is the
//! mount's side:
//!
//! * only the node's sole mount borrows, only while its store keeps one
//!   copy, and only while its krgd answered its `Watch` lately (a krgd
//!   that stopped answering may have taken the loan back: it waits
//!   [`crate::callback::GONE`] for an answer, this mount stops after
//!   `FRESH`);
//! * every local change under a loan is made holding this table's lock, so
//!   a recall ([`Loans::take`]) waits for the one under way and no other
//!   starts after it;
//! * a file made under a loan is opened here with a handle krgd does not
//!   know (`LENT_HANDLE` set). krgd hears of it (`Open`, the mount's
//!   handle then maps to krgd's) when the loan is recalled, when the file
//!   is unlinked through krgd while open, or when a request with that
//!   handle must go to krgd — so that an unlinked file keeps its data
//!   while open, whoever unlinks it. A handle closed before any of that
//!   costs krgd nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use krg_proto::kdfs::{InodeId, Inval};
use tokio::sync::{mpsc, oneshot};

/// Set in the handles of files made under a loan (krgd's own handles, and
/// a mirror's `MIRROR_HANDLE`, never have it).
pub const LENT_HANDLE: u64 = 1 << 61;

/// A loan is used only if the node's krgd answered a `Watch` within this.
const FRESH: Duration = Duration::from_secs(2);

/// After krgd refused a directory, it is not asked again for this long.
const REFUSED_FOR: Duration = Duration::from_secs(1);

/// One lent directory.
pub struct Loan {
    /// The next inode id to give, and the end of the loan's numbers.
    next: InodeId,
    end: InodeId,
    /// Every block of inode ids krgd gave the loan, `[first, end)`: an
    /// inode numbered from one was made under the loan.
    blocks: Vec<(InodeId, InodeId)>,
}

impl Loan {
    /// The next inode id of the loan, if any is left.
    pub fn number(&mut self) -> Option<InodeId> {
        (self.next < self.end).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Whether `ino` was made under this loan.
    pub fn made(&self, ino: InodeId) -> bool {
        self.blocks.iter().any(|(a, b)| (*a..*b).contains(&ino))
    }
}

/// Handles of files made under recalled loans, for krgd to hear of, and
/// what to tell once it has: (file, handle, opened for writing).
pub type Recalled = (Vec<(InodeId, u64, bool)>, oneshot::Sender<()>);

/// How long a recall waits for krgd to hear of the handles (less than
/// krgd waits for the recall's acknowledgement).
const MAKE_KNOWN_WAIT: Duration = Duration::from_secs(2);

/// A handle of a file made under a loan.
struct LentHandle {
    write: bool,
    /// krgd's handle for it, once krgd heard of it.
    krgd: Option<u64>,
}

#[derive(Default)]
pub struct Table {
    pub lent: HashMap<InodeId, Loan>,
    refused: HashMap<InodeId, Instant>,
    handles: HashMap<(InodeId, u64), LentHandle>,
}

impl Table {
    /// The handles krgd has not heard of, of the files `of` picks: (file,
    /// handle, for writing).
    pub fn unknown_handles(&self, of: impl Fn(InodeId) -> bool) -> Vec<(InodeId, u64, bool)> {
        self.handles
            .iter()
            .filter(|((ino, _), h)| h.krgd.is_none() && of(*ino))
            .map(|((ino, fh), h)| (*ino, *fh, h.write))
            .collect()
    }
}

pub struct Loans {
    table: Mutex<Table>,
    next_handle: AtomicU64,
    /// When the node's krgd last answered a `Watch` (`None`: not since
    /// this mount's watcher there last failed).
    answered: Mutex<Option<Instant>>,
    /// Where recalled loans' handles go to be made known to krgd.
    to_make_known: Mutex<Option<mpsc::UnboundedSender<Recalled>>>,
    /// `-o nolend` turns it off: nothing is borrowed.
    on: std::sync::atomic::AtomicBool,
}

impl Default for Loans {
    fn default() -> Self {
        Self {
            table: Mutex::default(),
            next_handle: AtomicU64::new(1),
            answered: Mutex::default(),
            to_make_known: Mutex::default(),
            on: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

impl Loans {
    /// The table, locked: a local change under a loan holds it throughout.
    pub fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's krgd answered a `Watch` (`true`) or stopped answering:
    /// then every loan ends at once — it may have been taken back.
    pub fn krgd_answered(&self, yes: bool) {
        *self.answered.lock().unwrap_or_else(|p| p.into_inner()) = yes.then(Instant::now);
        if !yes {
            let mut t = self.lock();
            if !t.lent.is_empty() {
                tracing::info!(
                    "kdfs: the node's krgd stopped answering: lent directories given up"
                );
            }
            t.lent.clear();
        }
    }

    /// Where the handles of recalled loans' files arrive, for krgd to hear
    /// of (the mount's operations do that: `lent::make_recalled_known`).
    pub fn recalled_handles(&self) -> mpsc::UnboundedReceiver<Recalled> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.to_make_known.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// krgd recalls the directories of the `Recall`s among `items`: stop
    /// using them (once a change under way is done), and return once krgd
    /// heard of the handles of the files made there.
    pub async fn recall(&self, items: &[Inval]) {
        let mut handles = Vec::new();
        for item in items {
            if let Inval::Recall(dir) = item {
                tracing::debug!(dir = %format!("{dir:x}"), "kdfs: lent directory recalled");
                handles.extend(self.take(*dir));
            }
        }
        if handles.is_empty() {
            return;
        }
        let tx = self
            .to_make_known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(tx) = tx {
            let (done, wait) = oneshot::channel();
            if tx.send((handles, done)).is_ok() {
                let _ = tokio::time::timeout(MAKE_KNOWN_WAIT, wait).await;
            }
        }
    }

    /// Borrow nothing (`-o nolend`).
    pub fn turn_off(&self) {
        self.on.store(false, Ordering::Relaxed);
    }

    /// Whether loans may be used now (see `FRESH`).
    pub fn usable(&self) -> bool {
        self.on.load(Ordering::Relaxed)
            && self
                .answered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| t.elapsed() < FRESH)
    }

    /// Whether to ask krgd for `dir` (not refused lately).
    pub fn may_ask(&self, dir: InodeId) -> bool {
        let mut t = self.lock();
        match t.refused.get(&dir) {
            Some(at) if at.elapsed() < REFUSED_FOR => false,
            Some(_) => {
                t.refused.remove(&dir);
                true
            }
            None => true,
        }
    }

    /// krgd lent `dir` with inode ids `first .. first + count`.
    pub fn lent(&self, dir: InodeId, first: InodeId, count: u64) {
        let mut t = self.lock();
        let loan = t.lent.entry(dir).or_insert_with(|| Loan {
            next: first,
            end: first,
            blocks: Vec::new(),
        });
        (loan.next, loan.end) = (first, first + count);
        loan.blocks.push((first, first + count));
    }

    /// krgd refused `dir`.
    pub fn refused(&self, dir: InodeId) {
        let mut t = self.lock();
        if t.refused.len() > 4096 {
            t.refused.clear();
        }
        t.refused.insert(dir, Instant::now());
    }

    /// A new handle for a file made under a loan, opened for writing or not.
    pub fn new_handle(&self, t: &mut Table, ino: InodeId, write: bool) -> u64 {
        let fh = LENT_HANDLE | self.next_handle.fetch_add(1, Ordering::Relaxed);
        t.handles
            .insert((ino, fh), LentHandle { write, krgd: None });
        fh
    }

    /// Recalled: `dir` is no longer lent (once a change under way there is
    /// done). The handles krgd must hear of: those of the files made there.
    pub fn take(&self, dir: InodeId) -> Vec<(InodeId, u64, bool)> {
        let mut t = self.lock();
        let Some(loan) = t.lent.remove(&dir) else {
            return Vec::new();
        };
        t.unknown_handles(|ino| loan.made(ino))
    }

    /// Every directory lent now.
    pub fn lent_dirs(&self) -> Vec<InodeId> {
        self.lock().lent.keys().copied().collect()
    }

    /// krgd's handle `krgd` now stands for handle `fh` of `ino`.
    pub fn known(&self, ino: InodeId, fh: u64, krgd: u64) {
        if let Some(h) = self.lock().handles.get_mut(&(ino, fh)) {
            h.krgd = Some(krgd);
        }
    }

    /// krgd's handle for `fh` of `ino`, and whether `fh` is one of this
    /// table's at all (opened for writing): `(Some(krgd), _)` once krgd
    /// heard of it.
    pub fn krgd_handle(&self, ino: InodeId, fh: u64) -> Option<(Option<u64>, bool)> {
        self.lock()
            .handles
            .get(&(ino, fh))
            .map(|h| (h.krgd, h.write))
    }

    /// Handle `fh` of `ino` closed: krgd's handle to release, if it heard
    /// of it.
    pub fn released(&self, ino: InodeId, fh: u64) -> Option<u64> {
        self.lock().handles.remove(&(ino, fh)).and_then(|h| h.krgd)
    }
}
