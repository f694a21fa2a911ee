//! `kdfsctl replicas N`: a store keeps N copies of its files from now on.
//! Its superblock says so, the store served takes it in place (the
//! handles other nodes hold stay good), and its mirroring starts as at a
//! mirrored store's first start (a claim, then a full copy to the mirror,
//! in the background; `kdfsctl status` shows it).
//!
//! A single-copy store may be mounted on its node: such a mount writes it
//! in place (FUSE passthrough, the sole mount's attribute changes), which
//! a mirror would never see. The conversion then waits (`Pending`): each
//! mount of the node asks every second (`Conversion`), stops writing in
//! place once told, and says how many of its handles still do; when every
//! process holding the store says 0, the store is converted — at once, or
//! once the files opened for writing before are closed. A conversion
//! waiting is remembered in the data directory ([`CONVERSION_FILE`]): a
//! krgd restarted meanwhile goes on waiting for it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kdfs::format::{other_users, MAX_REPLICAS};
use kdfs::store::Store;
use krg_proto::kdfs::{Converting, KdfsResponse};

use super::KdfsService;
use crate::sync;

/// How long `SetReplicas` waits for the mounts before it answers that
/// the conversion goes on in the background (EINPROGRESS).
const MOUNTS_WAIT: Duration = Duration::from_secs(5);
/// A mount's word counts this long (it asks every second).
const FRESH: Duration = Duration::from_secs(3);
/// `<data-dir>/kdfs.conversion`: the file system's id and the copies a
/// waiting conversion gives this node's store (`{fs_id:032x} {copies}`).
const CONVERSION_FILE: &str = "kdfs.conversion";

/// A conversion waiting for this node's mounts.
#[derive(Default)]
pub(super) struct Pending {
    /// The copies asked (`None`: no conversion waits).
    copies: Option<u8>,
    /// What each mount (by pid) said last, and when: whether it stopped
    /// writing in place, and its handles that still use passthrough.
    said: HashMap<u32, Said>,
}

/// A mount's last word.
struct Said {
    at: Instant,
    switched: bool,
    in_place: u32,
}

impl Said {
    /// It no longer writes in place, lately.
    fn ready(&self) -> bool {
        self.switched && self.in_place == 0 && self.at.elapsed() < FRESH
    }
}

impl KdfsService {
    /// Keep `copies` copies of `store` (this node's) from now on.
    pub(super) async fn set_replicas(&self, store: &Arc<Store>, copies: u8) -> KdfsResponse {
        let errno = KdfsResponse::Errno;
        if copies == 0 || copies > MAX_REPLICAS {
            return errno(libc::EINVAL);
        }
        if copies == store.replicas() {
            return KdfsResponse::Done;
        }
        if copies < store.replicas() {
            return errno(libc::ENOTSUP);
        }
        if store.replicas() > 1 {
            // Mirrored already: no mount writes it in place.
            return self.convert(store, copies);
        }
        sync::lock(&self.pending).copies = Some(copies);
        self.remember_conversion(store, Some(copies));
        // Every change must reach the mirror through krgd: no loan either.
        self.callbacks.recall_all(None).await;
        tracing::info!(
            copies,
            "kdfs: converting this store to {copies} copies once its mounts here stop writing it in place"
        );
        let since = Instant::now();
        loop {
            match self.try_convert(store) {
                Some(done) => return done,
                // (converted meanwhile at a mount's word)
                None if store.replicas() >= copies => return KdfsResponse::Done,
                None if since.elapsed() >= MOUNTS_WAIT => return errno(libc::EINPROGRESS),
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// `Conversion` from a mount of this node: what it says is noted, the
    /// store converted if every mount is ready.
    pub(super) fn mount_conversion(
        &self,
        store: &Arc<Store>,
        pid: u32,
        switched: bool,
        writers: u32,
    ) -> KdfsResponse {
        let said = Said {
            at: Instant::now(),
            switched,
            in_place: writers,
        };
        let mut p = sync::lock(&self.pending);
        // (a mount gone long ago is forgotten)
        p.said.retain(|_, s| s.at.elapsed() < FRESH);
        p.said.insert(pid, said);
        drop(p);
        if let Some(KdfsResponse::Errno(e)) = self.try_convert(store) {
            tracing::warn!(errno = e, "kdfs: the waiting conversion failed");
        }
        KdfsResponse::Conversion {
            copies: store.replicas(),
            pending: sync::lock(&self.pending).copies,
        }
    }

    /// Convert if a conversion waits and every process holding the store
    /// here said lately that it no longer writes it in place; `None`: not
    /// yet.
    fn try_convert(&self, store: &Arc<Store>) -> Option<KdfsResponse> {
        let mut p = sync::lock(&self.pending);
        let copies = p.copies?;
        let users = match other_users(store.dir()) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "kdfs: cannot tell who uses the store");
                return None;
            }
        };
        let ready = |pid: &u32| p.said.get(pid).is_some_and(Said::ready);
        if !users.iter().all(ready) {
            return None;
        }
        p.copies = None;
        p.said.clear();
        drop(p);
        let done = self.convert(store, copies);
        if matches!(done, KdfsResponse::Done) {
            self.remember_conversion(store, None);
        }
        Some(done)
    }

    fn conversion_file(&self) -> PathBuf {
        self.ctx.config.data_dir.join(CONVERSION_FILE)
    }

    /// Remember the conversion waiting for `store` (`None`: none waits).
    fn remember_conversion(&self, store: &Store, copies: Option<u8>) {
        let file = self.conversion_file();
        let r = match copies {
            Some(c) => {
                let text = format!("{:032x} {c}\n", store.superblock().fs_id);
                let dir = &self.ctx.config.data_dir;
                crate::service::cluster::write_atomic(dir, CONVERSION_FILE, text.as_bytes())
            }
            None => match std::fs::remove_file(&file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        };
        if let Err(e) = r {
            tracing::warn!(file = %file.display(), error = %e,
                "kdfs: a waiting conversion is not remembered (a restart of this krgd forgets it)");
        }
    }

    /// `store` is served (krgd started, or it was attached): a conversion
    /// of it remembered from before waits again for this node's mounts.
    pub(super) fn resume_conversion(&self, store: &Store) {
        let Ok(text) = std::fs::read_to_string(self.conversion_file()) else {
            return;
        };
        let mut words = text.split_whitespace();
        let fs_id = words.next().and_then(|w| u128::from_str_radix(w, 16).ok());
        let copies = words.next().and_then(|w| w.parse::<u8>().ok());
        match (fs_id, copies) {
            (Some(id), Some(c))
                if id == store.superblock().fs_id && c > store.replicas() && c <= MAX_REPLICAS =>
            {
                tracing::info!(
                    copies = c,
                    "kdfs: a conversion to {c} copies waits again for this node's mounts"
                );
                sync::lock(&self.pending).copies = Some(c);
            }
            // Done, or of another store, or not ours: forgotten.
            _ => self.remember_conversion(store, None),
        }
    }

    /// The conversion waiting for this node's mounts, for `kdfsctl status`.
    pub(super) fn converting(&self) -> Option<Converting> {
        let p = sync::lock(&self.pending);
        let copies = p.copies?;
        let fresh = p.said.values().filter(|s| s.at.elapsed() < FRESH);
        Some(Converting {
            copies,
            in_place: fresh.map(|s| s.in_place).sum(),
        })
    }

    /// Write `copies` in the superblock and take it in place (the handles
    /// other nodes' mounts hold stay good).
    fn convert(&self, store: &Store, copies: u8) -> KdfsResponse {
        if let Err(e) = store.set_replicas(copies) {
            tracing::error!(error = %e, "kdfs: cannot write the superblock");
            return KdfsResponse::Errno(libc::EIO);
        }
        tracing::info!(
            copies,
            "kdfs: this store keeps {copies} copies from now on; its mirror gets a full copy"
        );
        KdfsResponse::Done
    }
}
