//! Another node's file data, in pieces: a read or write of more than
//! [`WRITE_PIECE`] goes as several requests at once, each a task of its
//! own on its node's next connection ([`LANES`]), so that the pieces are
//! sealed, sent, opened and written side by side (docs/kdfs.md,
//! Protocol).

use std::sync::Arc;

use krg_proto::kdfs::{inode_node, InodeId, KdfsRequest as Q, KdfsResponse as A};
use krg_proto::NodeId;

use super::conn::LANES;
use super::ops::{unexpected, Ops, Res};

/// Bytes per request of a read or write of another node's file (a 1 MiB
/// one goes as 4, all in flight at once). Measured with the bench's
/// remote sequential write, 512 MiB, alternating builds: 308 and 315
/// MiB/s against 285 and 276 for one 1 MiB request, 281 for 128 KiB
/// pieces (Dec 4, one connection); over [`LANES`] connections, 128 KiB
/// pieces over 8 did no better than these over 4 (Dec 6).
pub const WRITE_PIECE: usize = 256 << 10;

/// The count of a `Write` or `StripeWrite` answer.
pub fn written(a: A) -> Res<u32> {
    match a {
        A::Written(n) => Ok(n),
        other => unexpected("write", other),
    }
}

/// What a write sent in pieces wrote, from its start without a gap: the
/// sum of the pieces' counts (`results`, in file order, against the
/// pieces' lengths `lens`) up to the first that failed or fell short; the
/// first piece's error if it failed.
pub fn written_without_gap(
    results: impl IntoIterator<Item = Res<u32>>,
    lens: impl IntoIterator<Item = usize>,
) -> Res<u32> {
    let mut total = 0u32;
    for (r, len) in results.into_iter().zip(lens) {
        match r {
            Ok(n) => {
                total += n;
                if n as usize != len {
                    break;
                }
            }
            Err(e) if total == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(total)
}

impl Ops {
    /// Send every request of `pieces` (node, request) at once, each a task
    /// of its own, a node's share spread over its connections ([`LANES`]):
    /// so the pieces of one large read or write are sealed, sent, opened and
    /// written side by side. Their answers, in order, through `take`.
    pub async fn in_pieces<T: Send + 'static>(
        self: &Arc<Self>,
        mut pieces: Vec<(NodeId, Q)>,
        take: fn(A) -> Res<T>,
    ) -> Vec<Res<T>> {
        if pieces.len() == 1 {
            // a small read or write: sent from here, without a task's hop
            if let Some((node, q)) = pieces.pop() {
                return vec![self.call(node, q).await.and_then(take)];
            }
        }
        let mut next_lane: std::collections::HashMap<NodeId, u8> = Default::default();
        let tasks: Vec<_> = pieces
            .into_iter()
            .map(|(node, q)| {
                let lane = next_lane.entry(node).or_default();
                let on = *lane;
                *lane = (*lane + 1) % LANES;
                let ops = self.clone();
                tokio::spawn(async move { ops.call_on(node, on, q).await.and_then(take) })
            })
            .collect();
        let mut answers = Vec::with_capacity(tasks.len());
        for t in tasks {
            answers.push(t.await.unwrap_or(Err(libc::EIO)));
        }
        answers
    }

    /// Read from another node's file: a large read goes in pieces of
    /// [`WRITE_PIECE`] ([`Ops::in_pieces`]). The data up to the first
    /// piece that came back short (the file's end) or failed; the first
    /// piece's error if it failed.
    pub async fn read(
        self: &Arc<Self>,
        ino: InodeId,
        fh: u64,
        offset: u64,
        len: u32,
    ) -> Res<Vec<u8>> {
        let piece = WRITE_PIECE as u32;
        let wants: Vec<u32> = (0..len.div_ceil(piece))
            .map(|i| piece.min(len - i * piece))
            .collect();
        let reads = wants
            .iter()
            .enumerate()
            .map(|(i, &want)| {
                let at = offset + u64::from(i as u32 * piece);
                let q = Q::Read {
                    ino,
                    fh,
                    offset: at,
                    len: want,
                };
                (inode_node(ino), q)
            })
            .collect();
        let data = |a| match a {
            A::Data(d) => Ok(d.0),
            other => unexpected("read", other),
        };
        let mut out = Vec::with_capacity(len as usize);
        for (got, want) in self.in_pieces(reads, data).await.into_iter().zip(wants) {
            match got {
                Ok(d) => {
                    let want = want as usize;
                    out.extend_from_slice(&d[..d.len().min(want)]);
                    if d.len() < want {
                        break;
                    }
                }
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Write to another node's file: a large write goes in pieces of
    /// [`WRITE_PIECE`] ([`Ops::in_pieces`]). It returns once every piece
    /// is at the owner (another node's next read sees it), with the bytes
    /// written from `offset` on without a gap: a piece that failed or fell
    /// short ends the count there.
    pub async fn write(
        self: &Arc<Self>,
        ino: InodeId,
        fh: u64,
        offset: u64,
        data: ::bytes::Bytes,
    ) -> Res<u32> {
        let lens: Vec<usize> = data.chunks(WRITE_PIECE).map(<[u8]>::len).collect();
        let writes = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let at = i * WRITE_PIECE;
                let q = Q::Write {
                    ino,
                    fh,
                    offset: offset + at as u64,
                    data: krg_proto::kdfs::Bytes(data.slice(at..at + len)),
                };
                (inode_node(ino), q)
            })
            .collect();
        written_without_gap(self.in_pieces(writes, written).await, lens)
    }
}
