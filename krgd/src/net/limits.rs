//! How many connections may be held at once by whom: the bookkeeping behind
//! the pre-authentication limits of the peer port (per source address and in
//! total) and the connection caps of the admin socket (per uid and in total).
//!
//! A connection holds a [`Slot`] while it counts; dropping the slot frees it.
//! When a limit is reached, [`Limits::admit_evicting`] makes room by evicting
//! the oldest slot (of the same source first): a peer whose handshake takes
//! milliseconds gets through a flood unless the flood opens more connections
//! than the limit within those milliseconds, while a connection that only
//! sits there (slowloris) is the first to go. [`Limits::try_admit`] refuses
//! instead, for callers that must not lose an established connection.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::sync;

/// Caps on the connections that count at once.
pub struct Limits<K> {
    per_key: usize,
    total: usize,
    state: Mutex<State<K>>,
}

struct State<K> {
    next_id: u64,
    /// Slot id (in order of admission) → its key, whether it counts in the
    /// total, and the sender whose drop tells its connection to go.
    open: BTreeMap<u64, (K, bool, oneshot::Sender<()>)>,
    per_key: HashMap<K, usize>,
    in_total: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The source (address or uid) already holds `per_key` connections.
    PerKey(usize),
    /// `total` connections are held.
    Total(usize),
}

/// A connection's place under a [`Limits`]; freed on drop.
pub struct Slot<K: Eq + Hash + Clone> {
    id: u64,
    limits: Arc<Limits<K>>,
    evicted: Option<oneshot::Receiver<()>>,
}

impl<K: Eq + Hash + Clone> Limits<K> {
    pub fn new(per_key: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_key: per_key.max(1),
            total: total.max(1),
            state: Mutex::new(State {
                next_id: 0,
                open: BTreeMap::new(),
                per_key: HashMap::new(),
                in_total: 0,
            }),
        })
    }

    /// Admit a connection from `key`, evicting the oldest of that key's
    /// connections when it holds `per_key`, else the oldest of all when
    /// `total` are held. Returns the slot and how many were evicted.
    pub fn admit_evicting(self: &Arc<Self>, key: K) -> (Slot<K>, usize) {
        let mut st = sync::lock(&self.state);
        let mut evicted = 0;
        if st.per_key.get(&key).copied().unwrap_or(0) >= self.per_key {
            let oldest = st
                .open
                .iter()
                .find(|(_, (k, _, _))| *k == key)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                st.remove(id);
                evicted += 1;
            }
        }
        if st.in_total >= self.total {
            let oldest = st
                .open
                .iter()
                .find(|(_, (_, counts, _))| *counts)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                st.remove(id);
                evicted += 1;
            }
        }
        let slot = st.insert(key, true, self);
        (slot, evicted)
    }

    /// Admit a connection from `key` if it holds fewer than `per_key`
    /// and (when `in_total`) fewer than `total` are held.
    pub fn try_admit(self: &Arc<Self>, key: K, in_total: bool) -> Result<Slot<K>, Full> {
        let mut st = sync::lock(&self.state);
        if st.per_key.get(&key).copied().unwrap_or(0) >= self.per_key {
            return Err(Full::PerKey(self.per_key));
        }
        if in_total && st.in_total >= self.total {
            return Err(Full::Total(self.total));
        }
        Ok(st.insert(key, in_total, self))
    }

    /// Connections held now (for tests and logs).
    pub fn held(&self) -> usize {
        sync::lock(&self.state).open.len()
    }
}

impl<K: Eq + Hash + Clone> State<K> {
    fn insert(&mut self, key: K, in_total: bool, limits: &Arc<Limits<K>>) -> Slot<K> {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        *self.per_key.entry(key.clone()).or_insert(0) += 1;
        if in_total {
            self.in_total += 1;
        }
        self.open.insert(id, (key, in_total, tx));
        Slot {
            id,
            limits: limits.clone(),
            evicted: Some(rx),
        }
    }

    /// Forget slot `id`; dropping its sender wakes its connection if it
    /// still runs (eviction).
    fn remove(&mut self, id: u64) {
        let Some((key, in_total, _tx)) = self.open.remove(&id) else {
            return;
        };
        if in_total {
            self.in_total -= 1;
        }
        if let Some(n) = self.per_key.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(&key);
            }
        }
    }
}

impl<K: Eq + Hash + Clone> Slot<K> {
    /// Resolves when this slot was evicted to make room for another
    /// connection; never resolves otherwise.
    pub async fn evicted(&mut self) {
        match self.evicted.as_mut() {
            Some(rx) => {
                let _ = rx.await;
                self.evicted = None;
            }
            None => std::future::pending().await,
        }
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        sync::lock(&self.limits.state).remove(self.id);
    }
}

/// A bound on how many lines a flood can write into the log: `burst` lines
/// per `period`; the first line of the next period also says how many
/// events went unlogged.
pub struct LogBudget {
    burst: u32,
    period: Duration,
    state: Mutex<(Instant, u32, u64)>,
}

/// What a caller of [`LogBudget::take`] should log.
#[derive(Debug, PartialEq, Eq)]
pub enum LogTurn {
    /// Log this event.
    Line,
    /// Log this event, adding that this many similar ones went unlogged
    /// in the last period.
    Summary(u64),
    /// Log nothing.
    Quiet,
}

impl LogBudget {
    pub fn new(burst: u32, period: Duration) -> Self {
        Self {
            burst,
            period,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    pub fn take(&self) -> LogTurn {
        let mut st = sync::lock(&self.state);
        let (start, logged, dropped) = &mut *st;
        if start.elapsed() >= self.period {
            let summary = *dropped;
            *start = Instant::now();
            *logged = 1;
            *dropped = 0;
            return if summary > 0 {
                LogTurn::Summary(summary)
            } else {
                LogTurn::Line
            };
        }
        if *logged < self.burst {
            *logged += 1;
            LogTurn::Line
        } else {
            *dropped += 1;
            LogTurn::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_source_loses_its_oldest_and_others_are_untouched() {
        let l = Limits::new(2, 10);
        let (mut a1, _) = l.admit_evicting("a");
        let (_a2, _) = l.admit_evicting("a");
        let (mut b1, _) = l.admit_evicting("b");
        let (_a3, evicted) = l.admit_evicting("a");
        assert_eq!(evicted, 1);
        tokio::time::timeout(Duration::from_secs(1), a1.evicted())
            .await
            .expect("the oldest slot of a is evicted");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b1.evicted())
                .await
                .is_err()
        );
        assert_eq!(l.held(), 3);
    }

    #[tokio::test]
    async fn a_full_table_loses_its_oldest_and_dropped_slots_free_room() {
        let l = Limits::new(10, 3);
        let (mut s1, _) = l.admit_evicting(1);
        let (s2, _) = l.admit_evicting(2);
        let (_s3, _) = l.admit_evicting(3);
        let (_s4, evicted) = l.admit_evicting(4);
        assert_eq!(evicted, 1);
        tokio::time::timeout(Duration::from_secs(1), s1.evicted())
            .await
            .expect("the oldest slot is evicted");
        drop(s2);
        assert_eq!(l.held(), 2);
        let (_s5, evicted) = l.admit_evicting(5);
        assert_eq!(evicted, 0);
    }

    #[test]
    fn log_budget_bounds_a_flood_to_a_burst_and_summaries() {
        let b = LogBudget::new(3, Duration::from_millis(100));
        let turns: Vec<LogTurn> = (0..10).map(|_| b.take()).collect();
        assert_eq!(turns.iter().filter(|t| **t == LogTurn::Line).count(), 3);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(b.take(), LogTurn::Summary(7));
        assert_eq!(b.take(), LogTurn::Line);
    }

    #[test]
    fn try_admit_refuses_and_slots_outside_the_total_do_not_count() {
        let l = Limits::new(2, 2);
        let _u1 = l.try_admit(1000, true).unwrap();
        let _u2 = l.try_admit(1000, true).unwrap();
        assert_eq!(l.try_admit(1000, true).err(), Some(Full::PerKey(2)));
        assert_eq!(l.try_admit(1001, true).err(), Some(Full::Total(2)));
        // root is kept out of the total: a user's flood never locks it out.
        let _r = l.try_admit(0, false).unwrap();
        assert_eq!(l.held(), 3);
    }
}
