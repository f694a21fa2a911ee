//! The state of a mount's striped files that the rest of the client
//! holds (in `Ops`): the layouts of open handles, the nodes new files may
//! be striped over, and the read-ahead windows. What uses it is in
//! [`super`] and [`super::readahead`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::{BoxFuture, Shared};
use krg_proto::kdfs::{InodeId, StripeLayout};
use krg_proto::NodeId;

/// The mount's striped files: the layouts of its open handles, and which
/// nodes new files may be striped over.
#[derive(Default)]
pub struct Striped {
    open: Mutex<HashMap<(InodeId, u64), Arc<StripeLayout>>>,
    pub(super) serving: tokio::sync::Mutex<Option<(Instant, Vec<NodeId>)>>,
    /// Sequential reads fetched ahead from all holders.
    pub ahead: ReadAhead,
}

impl Striped {
    /// Handle `fh` of `ino` is open on a striped file.
    pub fn opened(&self, ino: InodeId, fh: u64, layout: StripeLayout) {
        self.map().insert((ino, fh), Arc::new(layout));
    }

    /// The layout of an open handle, when its file is striped.
    pub fn layout(&self, ino: InodeId, fh: u64) -> Option<Arc<StripeLayout>> {
        self.map().get(&(ino, fh)).cloned()
    }

    /// The layout of handle `fh` changed (a holder left): use `layout`
    /// from now on, and drop what was fetched ahead with the old one.
    pub(super) fn relaid(&self, ino: InodeId, fh: u64, layout: Arc<StripeLayout>) {
        self.map().insert((ino, fh), layout);
        self.ahead.released(ino, fh);
    }

    pub fn released(&self, ino: InodeId, fh: u64) {
        self.map().remove(&(ino, fh));
        self.ahead.released(ino, fh);
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(InodeId, u64), Arc<StripeLayout>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One block: its bytes (zeros where a holder had none), and whether some
/// holder had less than asked (the size must then be asked).
pub struct Block {
    pub data: Vec<u8>,
    pub short: bool,
    pub(super) at: Instant,
}

pub(super) type Fetch = Shared<BoxFuture<'static, Result<Arc<Block>, i32>>>;

/// The window of one open handle.
#[derive(Default)]
pub(super) struct Stream {
    /// Where the next sequential read starts.
    pub(super) next: u64,
    /// Block index → its fetch, done or in flight.
    pub(super) blocks: BTreeMap<u64, Fetch>,
}

/// The windows of a mount's open striped handles.
#[derive(Default)]
pub struct ReadAhead {
    streams: Mutex<HashMap<(InodeId, u64), Stream>>,
}

impl ReadAhead {
    pub(super) fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(InodeId, u64), Stream>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn released(&self, ino: InodeId, fh: u64) {
        self.map().remove(&(ino, fh));
    }

    /// Drop every window of `ino` (this mount wrote to it).
    pub fn written(&self, ino: InodeId) {
        self.map().retain(|(i, _), _| *i != ino);
    }
}
