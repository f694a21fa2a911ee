//! Striped files, the client's side: a file created in a directory with a
//! striping policy gets a layout here, and the reads, writes and syncs of
//! an open striped file go to all its holders at once, each getting the
//! pieces it holds (`krg_proto::kdfs::stripe`). The kernel never does a
//! striped file's I/O itself (no passthrough): its owner's object holds
//! only every `count`-th unit.
//!
//! The file's size is its owner's: a write that ends past it asks the
//! owner to extend the file (`Extend`), alongside the data; a read that
//! finds less than asked somewhere asks the owner the size, and reads what
//! no holder has (holes, the end of a holder's copy) as zeros up to it. A
//! holder's copy never reaches past the size: a truncate cuts the copies
//! first. Reads go through a read-ahead window (`readahead`). Truncation
//! and removal are krgd's (the owner's krgd cuts or drops the other
//! holders' copies). A request that fails is made once more if the
//! owner's layout changed meanwhile (a holder left and handed its units
//! to another node; it answers ESTALE until it is gone): `with_layout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use krg_proto::kdfs::{
    inode_node, Attr, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A, StripeLayout,
    StripePolicy,
};
use krg_proto::NodeId;

use super::ops::{Ops, Res};
use super::pieces::{written, written_without_gap, WRITE_PIECE};

pub mod handles;
mod readahead;
pub use handles::{ReadAhead, Striped};

/// How long the list of nodes serving this kDFS is reused for new layouts.
const SERVING_FRESH: Duration = Duration::from_secs(5);
/// How long a node may take to say it serves this kDFS.
const HELLO_WAIT: Duration = Duration::from_secs(1);

impl Ops {
    /// Apply directory policy `policy` to `attr`, just made in it: a
    /// subdirectory inherits the policy, a regular file gets its layout
    /// (returned); `attr` is read again after (its ctime moved). A step
    /// that fails leaves the new inode as it is (not striped, or without
    /// the policy), logged.
    pub async fn apply_stripe(
        &self,
        attr: &mut Attr,
        policy: Option<StripePolicy>,
    ) -> Option<StripeLayout> {
        let policy = policy?;
        let (node, ino) = (inode_node(attr.ino), attr.ino);
        let (q, layout) = match attr.kind {
            FileKind::Dir => (
                Q::SetStripePolicy {
                    dir: ino,
                    policy: Some(policy),
                },
                None,
            ),
            FileKind::File => {
                let layout = policy.layout_from(node, &self.serving_nodes().await);
                if layout.nodes.len() < 2 {
                    return None;
                }
                let q = Q::SetLayout {
                    ino,
                    layout: layout.clone(),
                };
                (q, Some(layout))
            }
            _ => return None,
        };
        match self.call(node, q).await {
            Ok(_) => {
                // The attribute set changed the inode's ctime: the kernel
                // is to get the attributes as they are now.
                if let Ok(now) = self.getattr(ino).await {
                    *attr = now;
                }
                layout
            }
            Err(e) => {
                tracing::warn!(
                    ino,
                    errno = e,
                    "kdfs: could not stripe a new inode; it is left unstriped"
                );
                None
            }
        }
    }

    /// Run `op` on handle `fh` of striped file `ino` with its layout `l`;
    /// if it fails, once more with the owner's layout when that is no
    /// longer `l`: a holder left (its units went to another node, and it
    /// answers ESTALE, or nothing once it is gone).
    pub async fn with_layout<T, F, Fut>(
        &self,
        ino: InodeId,
        fh: u64,
        l: Arc<StripeLayout>,
        op: F,
    ) -> Res<T>
    where
        F: Fn(Arc<StripeLayout>) -> Fut,
        Fut: std::future::Future<Output = Res<T>>,
    {
        match op(l.clone()).await {
            Err(e) => match self.relayout(ino, fh, &l).await {
                Some(new) => op(new).await,
                None => Err(e),
            },
            done => done,
        }
    }

    /// The owner's layout of striped file `ino`, kept for handle `fh`,
    /// when it is no longer `old` (`None`: unchanged, or not readable).
    async fn relayout(
        &self,
        ino: InodeId,
        fh: u64,
        old: &StripeLayout,
    ) -> Option<Arc<StripeLayout>> {
        match self.call(inode_node(ino), Q::GetStripe { ino }).await {
            Ok(A::Stripe {
                layout: Some(l), ..
            }) if l != *old => {
                let l = Arc::new(l);
                self.striped.relaid(ino, fh, l.clone());
                Some(l)
            }
            _ => None,
        }
    }

    /// The striping and replica policies of directory `dir` (`None` when
    /// it has none or the question failed: new files are then not striped
    /// and keep the file system's count of copies).
    pub async fn dir_policy(&self, dir: InodeId) -> (Option<StripePolicy>, Option<u8>) {
        match self.call(inode_node(dir), Q::GetStripe { ino: dir }).await {
            Ok(A::Stripe {
                policy, replicas, ..
            }) => (policy, replicas),
            _ => (None, None),
        }
    }

    /// The nodes serving this kDFS now, in node order (asked every few
    /// seconds at most).
    async fn serving_nodes(&self) -> Vec<NodeId> {
        let mut cached = self.striped.serving.lock().await;
        if let Some((at, nodes)) = cached.as_ref() {
            if at.elapsed() < SERVING_FRESH {
                return nodes.clone();
            }
        }
        let nodes = self.cluster.nodes();
        let hellos = nodes
            .iter()
            .map(|&n| self.cluster.call_within(n, Q::Hello, HELLO_WAIT));
        let serving: Vec<NodeId> = join_all(hellos)
            .await
            .into_iter()
            .zip(&nodes)
            .filter(|(r, _)| matches!(r, Ok(A::Hello { fs_id: Some(_), .. })))
            .map(|(_, &n)| n)
            .collect();
        *cached = Some((Instant::now(), serving.clone()));
        serving
    }

    /// `len` bytes at `offset` of striped file `ino`, every holder's pieces
    /// at once (this node's read in place, off the runtime's threads): the
    /// bytes, zeros where a holder had none, and whether one had less than
    /// asked (a hole, or the end of its copy or of the file).
    pub async fn fetch_block(
        &self,
        ino: InodeId,
        layout: &StripeLayout,
        offset: u64,
        len: u32,
    ) -> Res<(Vec<u8>, bool)> {
        let pieces = layout.pieces(offset, len);
        let reads = pieces.iter().map(|p| {
            let q = Q::StripeRead {
                ino,
                offset: p.offset,
                len: p.len,
            };
            async move {
                let got = if p.node == self.local {
                    tokio::task::block_in_place(|| self.local_store.answer(p.node, q))
                } else {
                    Err(q)
                };
                let got = match got {
                    Ok(answer) => answer?,
                    Err(q) => self.call(p.node, q).await?,
                };
                match got {
                    A::Data(d) => Ok(d.0),
                    _ => Err(libc::EIO),
                }
            }
        });
        let mut out = Vec::with_capacity(len as usize);
        let mut short = false;
        for (p, got) in pieces.iter().zip(join_all(reads).await) {
            let bytes = got?;
            short |= bytes.len() < p.len as usize;
            let have = bytes.len().min(p.len as usize);
            out.extend_from_slice(&bytes[..have]);
            out.resize(out.len() + (p.len as usize - have), 0);
        }
        Ok((out, short))
    }

    /// Write `data` at `offset` of striped file `ino`: each holder gets its
    /// pieces (cut to [`WRITE_PIECE`] at most), all in flight at once, and
    /// the owner extends the file if the write ends past its size. The
    /// count stops at the first piece that failed.
    pub async fn striped_write(
        self: &Arc<Self>,
        ino: InodeId,
        layout: &StripeLayout,
        offset: u64,
        data: &::bytes::Bytes,
    ) -> Res<u32> {
        let len = u32::try_from(data.len()).map_err(|_| libc::EINVAL)?;
        let pieces: Vec<(NodeId, u64, usize, usize)> = layout
            .pieces(offset, len)
            .into_iter()
            .flat_map(|p| {
                let start = (p.offset - offset) as usize;
                (0..p.len as usize).step_by(WRITE_PIECE).map(move |at| {
                    let n = WRITE_PIECE.min(p.len as usize - at);
                    (p.node, p.offset + at as u64, start + at, n)
                })
            })
            .collect();
        let writes = pieces
            .iter()
            .map(|&(node, at, from, n)| {
                let q = Q::StripeWrite {
                    ino,
                    offset: at,
                    data: krg_proto::kdfs::Bytes(data.slice(from..from + n)),
                };
                (node, q)
            })
            .collect();
        let size = offset + u64::from(len);
        let extend = self.call(inode_node(ino), Q::Extend { ino, size });
        let (written, extended) = futures::join!(self.in_pieces(writes, written), extend);
        self.striped.ahead.written(ino);
        let total = written_without_gap(written, pieces.iter().map(|p| p.3))?;
        extended?;
        Ok(total)
    }

    /// fsync a striped file: every holder flushes its copy.
    pub async fn striped_fsync(&self, ino: InodeId, layout: &StripeLayout) -> Res<()> {
        let syncs = layout
            .holders()
            .into_iter()
            .map(|n| self.call(n, Q::StripeSync { ino }));
        for r in join_all(syncs).await {
            r?;
        }
        Ok(())
    }
}
