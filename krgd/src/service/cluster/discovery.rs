//! Presence: which krgds of this session are running, whether in a cluster
//! or not. Two sources feed one table:
//!
//! * UDP broadcast (when no `--peer` is configured): every second each node
//!   broadcasts a [`Presence`] signed with the cluster key, with the time it
//!   was sent and a random nonce under the tag. Datagrams with a bad tag or
//!   another session are dropped, and so are replays ([`freshness`]): one
//!   sent more than [`freshness::WINDOW`] away from this node's clock, or
//!   whose nonce was already seen within that window.
//! * `--peer` addresses: every second each configured peer is asked to
//!   `Describe` itself over an authenticated TCP connection; its answer also
//!   lists the nodes it has seen, so one seed peer is enough.
//!
//! An entry not refreshed for [`PRESENCE_TTL`] is forgotten.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krg_proto::auth::Role;
use krg_proto::client::PeerClient;
use krg_proto::cluster::{ClusterPeerReply, ClusterPeerRequest, NodeSelf, Presence};
use krg_proto::peer::{PeerRequest, PeerResponse};
use krg_proto::{NodeId, ProtoError, SessionId};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use self::freshness::{Freshness, Stale};
use crate::context::NodeContext;
use crate::sync;

pub mod freshness;

/// How often presence is announced or polled.
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(1000);
/// How long a node stays present without news.
pub const PRESENCE_TTL: Duration = Duration::from_millis(3500);

/// What a presence broadcast carries, followed by its HMAC-SHA256 tag over
/// these bytes (postcard).
#[derive(Serialize, Deserialize)]
struct Datagram {
    session: SessionId,
    presence: Presence,
    /// When it was sent: milliseconds since the Unix epoch, sender's clock.
    sent_ms: u64,
    /// Random, never repeated by a sender: a receiver that has seen it
    /// within the freshness window drops the datagram as a replay.
    nonce: [u8; 16],
}

/// A node that sees its own id at another address within this long of its
/// start is the newcomer and stops; later it only warns.
const YIELD_WINDOW: Duration = Duration::from_secs(5);

pub struct Discovery {
    ctx: Arc<NodeContext>,
    table: Mutex<HashMap<NodeId, (Presence, Instant)>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    started: Instant,
    /// Wall-clock time of the start, for datagrams' timestamps.
    started_ms: u64,
    /// Recently seen datagram nonces.
    fresh: Mutex<Freshness>,
    /// Another krgd claiming this node's id, once seen.
    conflict: Mutex<Option<SocketAddr>>,
    conflict_seen: tokio::sync::Notify,
    /// This node's current self-description.
    me: Arc<dyn Fn() -> Presence + Send + Sync>,
}

impl Discovery {
    /// Start announcing and listening. `me` tells the current self-description
    /// (it changes when the node joins or leaves a cluster).
    pub async fn start(
        ctx: Arc<NodeContext>,
        me: Arc<dyn Fn() -> Presence + Send + Sync>,
    ) -> Arc<Self> {
        let d = Arc::new(Self {
            ctx: ctx.clone(),
            table: Mutex::default(),
            tasks: Mutex::default(),
            started: Instant::now(),
            started_ms: freshness::now_ms(),
            fresh: Mutex::new(Freshness::default()),
            conflict: Mutex::default(),
            conflict_seen: tokio::sync::Notify::new(),
            me,
        });
        let mut tasks = Vec::new();
        if ctx.config.peers.is_empty() {
            match bind_broadcast(ctx.config.discovery_port).await {
                Ok(sock) => {
                    let sock = Arc::new(sock);
                    tasks.push(tokio::spawn(d.clone().announce(sock.clone())));
                    tasks.push(tokio::spawn(d.clone().listen(sock)));
                }
                Err(e) => tracing::warn!(port = ctx.config.discovery_port, error = %e,
                    "broadcast discovery unavailable; give peers with --peer"),
            }
        } else {
            tasks.push(tokio::spawn(d.clone().poll_peers()));
        }
        *sync::lock(&d.tasks) = tasks;
        d
    }

    pub fn stop(&self) {
        for t in sync::lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    /// Resolves when another krgd with this node's id is seen during the
    /// first seconds of this one's life: the newcomer must stop.
    pub async fn identity_conflict(&self) -> SocketAddr {
        loop {
            let notified = self.conflict_seen.notified();
            if let Some(addr) = *sync::lock(&self.conflict) {
                return addr;
            }
            notified.await;
        }
    }

    fn note_own_id_at(&self, addr: SocketAddr) {
        if addr == self.ctx.config.advertise {
            return;
        }
        if self.started.elapsed() < YIELD_WINDOW {
            *sync::lock(&self.conflict) = Some(addr);
            self.conflict_seen.notify_waiters();
        } else {
            tracing::warn!(node = self.ctx.node_id(), other = %addr, "another krgd claims this node's id; it should stop");
        }
    }

    /// Record that `p` was heard of `age` ago; older news never replaces newer.
    pub fn record(&self, p: Presence, age: Duration) {
        if p.node == self.ctx.node_id() {
            if age < PRESENCE_TTL {
                self.note_own_id_at(p.addr);
            }
            return;
        }
        if age >= PRESENCE_TTL {
            return;
        }
        let Some(seen) = Instant::now().checked_sub(age) else {
            return;
        };
        let mut t = sync::lock(&self.table);
        if let Some((known, at)) = t.get(&p.node) {
            if *at >= seen {
                return;
            }
            // Two krgds claiming one id: the one known first keeps it while
            // it stays fresh, so the newcomer hears of it and stops (see
            // `note_own_id_at`) instead of both taking turns in the table.
            if known.addr != p.addr && at.elapsed() < PRESENCE_TTL {
                tracing::debug!(node = p.node, known = %known.addr, other = %p.addr,
                    "ignored a second krgd claiming a known node id");
                return;
            }
        }
        self.ctx.peers.set_address(p.node, p.addr);
        t.insert(p.node, (p, seen));
    }

    /// Nodes seen within the presence TTL, by id.
    pub fn present(&self) -> Vec<Presence> {
        self.present_with_age()
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// Nodes seen within the presence TTL with the age of the last sighting.
    pub fn present_with_age(&self) -> Vec<(Presence, u32)> {
        let mut t = sync::lock(&self.table);
        t.retain(|_, (_, at)| at.elapsed() < PRESENCE_TTL);
        let mut out: Vec<(Presence, u32)> = t
            .values()
            .map(|(p, at)| (p.clone(), at.elapsed().as_millis() as u32))
            .collect();
        out.sort_by_key(|(p, _)| p.node);
        out
    }

    fn me(&self) -> Presence {
        (self.me)()
    }

    async fn announce(self: Arc<Self>, sock: Arc<UdpSocket>) {
        let bcast = self.ctx.config.broadcast.unwrap_or(Ipv4Addr::BROADCAST);
        let dest = SocketAddr::V4(SocketAddrV4::new(bcast, self.ctx.config.discovery_port));
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        loop {
            tick.tick().await;
            let dg = Datagram {
                session: self.ctx.config.session_id,
                presence: self.me(),
                sent_ms: freshness::now_ms(),
                nonce: freshness::nonce(),
            };
            let Ok(mut bytes) = postcard::to_stdvec(&dg) else {
                continue;
            };
            let tag = self.ctx.key.sign(&bytes);
            bytes.extend_from_slice(&tag);
            if let Err(e) = sock.send_to(&bytes, dest).await {
                tracing::debug!(%dest, error = %e, "presence broadcast failed");
            }
        }
    }

    async fn listen(self: Arc<Self>, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            match self.parse(&buf[..n]) {
                Ok(dg) => self.heard(dg),
                Err(why) => tracing::debug!(%from, "ignored a presence datagram: {why}"),
            }
        }
    }

    /// Record a checked datagram. A claim of this node's own id counts as
    /// a conflict only if it was sent after this krgd started: a replay of
    /// this node's previous life must not make it yield.
    fn heard(&self, dg: Datagram) {
        if dg.presence.node == self.ctx.node_id() && dg.sent_ms < self.started_ms {
            return;
        }
        self.record(dg.presence, Duration::ZERO);
    }

    /// Check a datagram's tag, session and freshness, in that order
    /// (nothing is decoded before the tag is checked).
    fn parse(&self, bytes: &[u8]) -> Result<Datagram, &'static str> {
        let split = bytes.len().checked_sub(32).ok_or("too short")?;
        let (body, tag) = bytes.split_at(split);
        if !self.ctx.key.verify(body, tag) {
            return Err("bad tag");
        }
        let dg: Datagram = postcard::from_bytes(body).map_err(|_| "malformed")?;
        if dg.session != self.ctx.config.session_id {
            return Err("another session");
        }
        sync::lock(&self.fresh)
            .check(dg.sent_ms, dg.nonce, freshness::now_ms())
            .map_err(|e| match e {
                Stale::OutOfWindow => {
                    "sent outside the freshness window (replayed, or clocks too far apart)"
                }
                Stale::Replayed => "nonce already seen (replayed)",
            })?;
        Ok(dg)
    }

    async fn poll_peers(self: Arc<Self>) {
        let mut clients: HashMap<SocketAddr, PeerClient> = HashMap::new();
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        loop {
            tick.tick().await;
            // A shared config may list this node itself among the peers.
            let me = self.ctx.config.advertise;
            let polls = self
                .ctx
                .config
                .peers
                .iter()
                .filter(|a| **a != me)
                .map(|addr| {
                    let client = clients.remove(addr).filter(PeerClient::is_alive);
                    let me = self.clone();
                    async move { (*addr, me.describe(*addr, client).await) }
                });
            for (addr, client) in futures::future::join_all(polls).await {
                if let Some(c) = client {
                    clients.insert(addr, c);
                }
            }
        }
    }

    async fn describe(&self, addr: SocketAddr, client: Option<PeerClient>) -> Option<PeerClient> {
        let timeout = Duration::from_millis(800);
        let client = match client {
            Some(c) => c,
            None => {
                let mut me = self.ctx.me;
                me.role = Role::Node;
                match PeerClient::connect(addr, &self.ctx.key, me, timeout).await {
                    Ok(c) => c,
                    Err(e @ (ProtoError::Auth(_) | ProtoError::Refused(_))) => {
                        tracing::warn!(%addr, error = %e, "peer refused");
                        return None;
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "peer not reachable");
                        return None;
                    }
                }
            }
        };
        match client
            .call(
                PeerRequest::Cluster(ClusterPeerRequest::Describe { from: self.me() }),
                timeout,
            )
            .await
        {
            Ok(PeerResponse::Cluster(ClusterPeerReply::Describe(NodeSelf { me, known }))) => {
                self.record(me, Duration::ZERO);
                for (p, age_ms) in known {
                    self.record(p, Duration::from_millis(age_ms.into()));
                }
                Some(client)
            }
            _ => None,
        }
    }
}

async fn bind_broadcast(port: u16) -> std::io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    sock.set_broadcast(true)?;
    Ok(sock)
}
