//! Replay protection of presence datagrams. Each datagram carries, under its
//! MAC, the time it was sent and a random nonce. A receiver drops it when
//! the time is more than [`WINDOW`] away from its own clock, or when it has
//! seen the nonce before; it remembers each nonce until the datagram would
//! fall out of the window anyway, so the memory is bounded by the traffic of
//! one window (one datagram per node per second: 10 entries per node).
//!
//! Why 10 s is safe with the heartbeat: a node announces itself every
//! second and is forgotten 3.5 s after its last datagram, so a live node is
//! never at risk of being dropped by the window (its datagrams are less than
//! a second old when they arrive), and the window only has to absorb clock
//! differences between nodes (kept far below 10 s by NTP). A datagram
//! captured and replayed is refused by every receiver that saw the original
//! (nonce) and by every receiver once 10 s have passed (time): a dead node
//! cannot be kept `present` by replays, and a node restarting at a new
//! address is not made to yield by replays of its previous life (those were
//! sent before it started; see `Discovery::heard`).

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;

/// How far a datagram's send time may be from the receiver's clock.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Most nonces remembered: the traffic of one window of 6,500 nodes. Past
/// it the nonce closest to expiry is forgotten first.
const MAX_REMEMBERED: usize = 65_536;

/// Why a datagram with a valid tag is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// Sent more than [`WINDOW`] before (or after) the receiver's now.
    OutOfWindow,
    /// Its nonce was seen within the window.
    Replayed,
}

/// The nonces seen within the window.
#[derive(Default)]
pub struct Freshness {
    /// (time after which the nonce cannot pass the window check, nonce).
    by_expiry: BTreeSet<(u64, [u8; 16])>,
    seen: HashSet<[u8; 16]>,
}

impl Freshness {
    /// Accept a datagram sent at `sent_ms` with `nonce`, at `now_ms`, or
    /// say why not. An accepted nonce is remembered.
    pub fn check(&mut self, sent_ms: u64, nonce: [u8; 16], now_ms: u64) -> Result<(), Stale> {
        let window = WINDOW.as_millis() as u64;
        if sent_ms.abs_diff(now_ms) > window {
            return Err(Stale::OutOfWindow);
        }
        self.forget_expired(now_ms);
        if self.seen.contains(&nonce) {
            return Err(Stale::Replayed);
        }
        if self.seen.len() >= MAX_REMEMBERED {
            if let Some(first) = self.by_expiry.pop_first() {
                self.seen.remove(&first.1);
            }
        }
        self.by_expiry
            .insert((sent_ms.saturating_add(window), nonce));
        self.seen.insert(nonce);
        Ok(())
    }

    fn forget_expired(&mut self, now_ms: u64) {
        while let Some(first) = self.by_expiry.first().copied() {
            if first.0 >= now_ms {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&first.1);
        }
    }

    /// Nonces remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random datagram nonce.
pub fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    rand::rng().fill_bytes(&mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_datagrams_pass_once_and_stale_ones_never() {
        let mut f = Freshness::default();
        let now = 1_000_000;
        assert_eq!(f.check(now - 500, [1; 16], now), Ok(()));
        assert_eq!(f.check(now - 500, [1; 16], now + 100), Err(Stale::Replayed));
        assert_eq!(f.check(now - 10_001, [2; 16], now), Err(Stale::OutOfWindow));
        assert_eq!(f.check(now + 10_001, [3; 16], now), Err(Stale::OutOfWindow));
        // Once out of the window, a replay is refused by its time and the
        // nonce is forgotten: memory stays bounded by one window.
        assert_eq!(
            f.check(now - 500, [1; 16], now + 10_000),
            Err(Stale::OutOfWindow)
        );
        assert_eq!(f.check(now + 9_800, [4; 16], now + 10_000), Ok(()));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let mut f = Freshness::default();
        let now = 50_000;
        for i in 0..(MAX_REMEMBERED as u64 + 10) {
            let mut n = [0u8; 16];
            n[..8].copy_from_slice(&i.to_be_bytes());
            assert_eq!(f.check(now, n, now), Ok(()));
        }
        assert_eq!(f.len(), MAX_REMEMBERED);
    }
}
