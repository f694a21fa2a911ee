//! Sending an image to the target: byte ranges of files, cut into chunks
//! of at most [`CHUNK`] bytes, several in flight over the pooled peer
//! connection (one request at a time would wait a round trip per chunk).
//!
//! The memory files go first, while the process still runs (the
//! checkpoint engine hands them over through [`Early`], a
//! [`checkpoint::dump::Ship`]); once it is frozen and dumped only what
//! changed since follows, with the other files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::migrate::{Data, ImageFile, MigratePeerRequest, Offer, MAX_DATA};
use krg_proto::NodeId;

use super::super::state::ProcState;
use super::{call, STEP_TIMEOUT};

/// Chunks in flight at once (8 of 1 MiB were as fast for 100 MiB and
/// slower for 1 GiB: ship 1.56-1.58 s against 0.64-0.89).
const IN_FLIGHT: usize = 4;
/// Bytes per chunk. Measured with the migration bench's pre-copy lines
/// (Dec 7 2026, alternating runs): 1 MiB chunks sent 100 MiB while the
/// process ran in 71-76 ms against 88-111 ms with chunks of `MAX_DATA`
/// (4 MiB), the whole move 0.180-0.188 s against 0.202-0.232 s; 1 GiB
/// in 0.64-0.89 s against 0.99-1.29 s. 512 KiB and 2 MiB chunks fell
/// in between.
const CHUNK: u64 = 1 << 20;
const _: () = assert!(CHUNK as usize <= MAX_DATA);

/// Ranges of one file to send.
pub struct Part {
    pub name: String,
    pub file: Arc<File>,
    pub ranges: Vec<(u64, u64)>,
}

/// One transfer to `to`, and the file indices the target knows.
pub struct Sender {
    pub st: Arc<ProcState>,
    pub to: NodeId,
    pub xfer: u64,
    /// Names in the target's index order.
    names: Vec<String>,
    /// Whether the offer has gone.
    pub offered: bool,
    /// Bytes of file data sent.
    pub bytes: u64,
}

fn internal(msg: String) -> AdminError {
    AdminError::new(ErrorKind::Internal, msg)
}

impl Sender {
    pub fn new(st: Arc<ProcState>, to: NodeId, xfer: u64) -> Self {
        Sender {
            st,
            to,
            xfer,
            names: Vec::new(),
            offered: false,
            bytes: 0,
        }
    }

    /// The image's file names, in the target's index order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Offer the image (its files as listed).
    pub async fn offer(&mut self, offer: Offer) -> Result<(), AdminError> {
        self.names = offer.files.iter().map(|f| f.name.clone()).collect();
        call(
            &self.st,
            self.to,
            MigratePeerRequest::Offer(offer),
            STEP_TIMEOUT,
        )
        .await?;
        self.offered = true;
        Ok(())
    }

    /// The final file list, after an early offer.
    pub async fn files(&mut self, pids: Vec<i32>, files: Vec<ImageFile>) -> Result<(), AdminError> {
        for f in &files {
            if !self.names.contains(&f.name) {
                self.names.push(f.name.clone());
            }
        }
        let body = MigratePeerRequest::Files {
            xfer: self.xfer,
            pids,
            files,
        };
        call(&self.st, self.to, body, STEP_TIMEOUT).await?;
        Ok(())
    }

    /// Send the ranges of every part.
    pub async fn send(&mut self, parts: &[Part]) -> Result<(), AdminError> {
        self.bytes += self.sending(parts)?.await?;
        Ok(())
    }

    /// The sending of the ranges of every part, to be awaited (or spawned):
    /// how many bytes it sent. Err: a part the target was not offered.
    pub fn sending(
        &self,
        parts: &[Part],
    ) -> Result<
        impl std::future::Future<Output = Result<u64, AdminError>> + Send + 'static,
        AdminError,
    > {
        let mut chunks = Vec::new();
        for p in parts {
            let idx = self
                .names
                .iter()
                .position(|n| n == &p.name)
                .ok_or_else(|| internal(format!("{} was not offered", p.name)))?;
            for &(s, e) in &p.ranges {
                let mut at = s;
                while at < e {
                    let n = (e - at).min(CHUNK);
                    chunks.push((p.file.clone(), idx as u32, at, n as usize));
                    at += n;
                }
            }
        }
        let (st, to, xfer) = (self.st.clone(), self.to, self.xfer);
        Ok(async move {
            let st = &st;
            let sent: Vec<u64> = stream::iter(chunks)
                .map(|(file, idx, offset, n)| async move {
                    let data = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; n];
                        file.read_exact_at(&mut buf, offset).map(|()| buf)
                    })
                    .await
                    .map_err(|e| internal(format!("worker thread: {e}")))?
                    .map_err(|e| internal(format!("reading the image: {e}")))?;
                    let d = Data {
                        xfer,
                        file: idx,
                        offset,
                        data: data.into(),
                    };
                    call(st, to, MigratePeerRequest::Data(d), STEP_TIMEOUT).await?;
                    Ok::<u64, AdminError>(n as u64)
                })
                .buffer_unordered(IN_FLIGHT)
                .try_collect()
                .await?;
            Ok(sent.iter().sum::<u64>())
        })
    }
}
