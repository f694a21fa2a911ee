//! krgd's one lock-poisoning policy: a std lock whose holder panicked is
//! taken over with `into_inner`, never skipped and never turned into an
//! error. Every std `Mutex` and `RwLock` of krgd is locked through these.
//!
//! Why the data is still sound after a panic: each critical section in krgd
//! changes what its lock guards in steps that each leave it valid (one
//! assignment, one insert, remove or `take` on a collection; the Raft log
//! and state machine apply entry by entry, recording each with its log id),
//! and none calls out to code that could panic halfway through an update.
//! Refusing a poisoned lock would only drop work (a peer address not
//! recorded, a task never aborted, a sighting lost, Raft stopped) for no
//! gain. tokio's locks do not poison; kdfs and plugpropol follow the same
//! policy.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Lock `m`, taking it over if a thread panicked while holding it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-lock `l`, taking it over if a writer panicked while holding it.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-lock `l`, taking it over if a writer panicked while holding it.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_over_with_its_data() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let l = std::sync::Arc::new(RwLock::new(7));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            let _w = l2.write();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        lock(&m).push(2);
        assert_eq!(*lock(&m), vec![1, 2]);
        *write(&l) += 1;
        assert_eq!(*read(&l), 8);
    }
}
