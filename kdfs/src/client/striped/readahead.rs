//! Read-ahead of striped files. The kernel reads a file ahead at most
//! `readahead` KiB (1 MiB by default), which keeps one or two requests in
//! flight — to one holder at a time when units are larger than that. A
//! handle read sequentially here fetches the next blocks itself, from all
//! holders at once, so that every holder streams while the reader
//! consumes.
//!
//! Blocks are 1 MiB, aligned; the window ahead covers two rounds of the
//! layout (`2 × unit × count`), 4 to 16 blocks. A block is used once
//! fresh only (1 s), a read elsewhere in the file drops the window, and a
//! write through this mount drops every window of the file: what is read
//! is never older than what close-to-open allows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::FutureExt;
use krg_proto::kdfs::{InodeId, StripeLayout};

use super::super::ops::{Ops, Res};
use super::handles::{Block, Fetch, ReadAhead};

/// Bytes per block fetched ahead.
pub const BLOCK: u64 = 1 << 20;
const MIN_AHEAD: u64 = 4;
const MAX_AHEAD: u64 = 16;
/// How long a block fetched ahead may be used.
const FRESH: Duration = Duration::from_secs(1);

fn ahead(layout: &StripeLayout) -> u64 {
    let round = u64::from(layout.unit) * layout.nodes.len() as u64;
    (2 * round / BLOCK).clamp(MIN_AHEAD, MAX_AHEAD)
}

impl ReadAhead {
    /// The fetches of blocks `first..=last`, starting those missing and,
    /// when the read follows the previous one, the window after them.
    fn fetches(
        &self,
        ops: &Arc<Ops>,
        ino: InodeId,
        fh: u64,
        layout: &Arc<StripeLayout>,
        (offset, len): (u64, u32),
    ) -> Vec<Fetch> {
        let (first, last) = (offset / BLOCK, (offset + u64::from(len) - 1) / BLOCK);
        let mut map = self.map();
        let s = map.entry((ino, fh)).or_default();
        let sequential = offset == s.next;
        if !sequential {
            s.blocks.retain(|&b, _| (first..=last).contains(&b));
        }
        s.blocks.retain(|&b, f| {
            b >= first
                && f.peek()
                    .is_none_or(|r| r.as_ref().is_ok_and(|b| b.at.elapsed() < FRESH))
        });
        let end = if sequential {
            last + ahead(layout)
        } else {
            last
        };
        for b in first..=end {
            s.blocks
                .entry(b)
                .or_insert_with(|| fetch(ops, ino, layout, b));
        }
        s.next = offset + u64::from(len);
        (first..=last)
            .filter_map(|b| s.blocks.get(&b).cloned())
            .collect()
    }

    /// Read `len` bytes at `offset` through the window of handle `fh`.
    pub async fn read(
        &self,
        ops: &Arc<Ops>,
        ino: InodeId,
        fh: u64,
        layout: &Arc<StripeLayout>,
        offset: u64,
        len: u32,
    ) -> Res<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let blocks = futures::future::join_all(self.fetches(ops, ino, fh, layout, (offset, len)))
            .await
            .into_iter()
            .collect::<Res<Vec<_>>>()?;
        let base = (offset / BLOCK) * BLOCK;
        let mut out = Vec::with_capacity(len as usize);
        for b in &blocks {
            out.extend_from_slice(&b.data);
        }
        let skip = (offset - base) as usize;
        let mut end = skip + len as usize;
        if blocks.iter().any(|b| b.short) {
            let size = ops.getattr(ino).await?.size;
            end = end.min(size.saturating_sub(base) as usize);
        }
        end = end.min(out.len());
        Ok(out.get(skip..end).map(<[u8]>::to_vec).unwrap_or_default())
    }
}

/// Start fetching block `b` of `ino` from its holders (a task of its own:
/// it goes on while the reader waits for others).
fn fetch(ops: &Arc<Ops>, ino: InodeId, layout: &Arc<StripeLayout>, b: u64) -> Fetch {
    let (ops, layout) = (ops.clone(), layout.clone());
    let task = tokio::spawn(async move {
        let (data, short) = ops
            .fetch_block(ino, &layout, b * BLOCK, BLOCK as u32)
            .await?;
        Ok(Arc::new(Block {
            data,
            short,
            at: Instant::now(),
        }))
    });
    async move { task.await.unwrap_or(Err(libc::EIO)) }
        .boxed()
        .shared()
}
