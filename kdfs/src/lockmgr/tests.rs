//! The lock manager's waits, leases and membership.

use std::sync::Arc;

use krg_proto::kdfs::{inode_id, KdfsRequest as Q, KdfsResponse as A, LockKind, LockSpec};

use super::LockManager;

fn set(client: u64, kind: LockKind, start: u64, end: u64, wait: bool) -> Q {
    Q::SetLock {
        ino: inode_id(1, 5),
        fh: 1,
        lock: LockSpec {
            client,
            owner: 1,
            start,
            end,
            kind,
            pid: 42,
        },
        wait,
    }
}

#[tokio::test]
async fn a_waiter_gets_the_lock_when_the_holder_releases_it() {
    let m = Arc::new(LockManager::new(1));
    assert!(matches!(
        m.handle(2, set(7, LockKind::Write, 0, 9, false)).await,
        A::Done
    ));
    assert!(matches!(
        m.handle(3, set(8, LockKind::Write, 5, 5, false)).await,
        A::Errno(libc::EAGAIN)
    ));
    // Another range: no conflict.
    assert!(matches!(
        m.handle(3, set(8, LockKind::Write, 10, 19, false)).await,
        A::Done
    ));
    let waiter = {
        let m = m.clone();
        tokio::spawn(async move { m.handle(3, set(8, LockKind::Write, 0, 9, true)).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    let q = Q::GetLock {
        ino: inode_id(1, 5),
        lock: LockSpec {
            client: 8,
            owner: 1,
            start: 0,
            end: 0,
            kind: LockKind::Read,
            pid: 1,
        },
    };
    match m.handle(3, q).await {
        A::LockHeld(Some(h)) => assert_eq!((h.start, h.end, h.pid, h.client), (0, 9, 42, 7)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        m.handle(2, set(7, LockKind::Unlock, 0, 9, false)).await,
        A::Done
    ));
    assert!(matches!(waiter.await.unwrap(), A::Done));
    // Not a file of this node, or a reversed range: EINVAL.
    let bad = Q::SetLock {
        ino: inode_id(2, 5),
        fh: 1,
        lock: LockSpec {
            client: 8,
            owner: 1,
            start: 0,
            end: 0,
            kind: LockKind::Read,
            pid: 1,
        },
        wait: false,
    };
    assert!(matches!(m.handle(3, bad).await, A::Errno(libc::EINVAL)));
    assert!(matches!(
        m.handle(3, set(8, LockKind::Read, 9, 3, false)).await,
        A::Errno(libc::EINVAL)
    ));
}

#[tokio::test]
async fn locks_of_a_node_that_left_go() {
    let m = LockManager::new(1);
    assert!(matches!(
        m.handle(2, set(7, LockKind::Write, 0, 9, false)).await,
        A::Done
    ));
    assert_eq!(m.expire(|_| true), 0);
    assert_eq!(m.expire(|n| n != 2), 1);
    assert!(matches!(
        m.handle(3, set(8, LockKind::Write, 0, 9, false)).await,
        A::Done
    ));
}

fn reclaim(client: u64, start: u64, end: u64) -> Q {
    let Q::SetLock { ino, fh, lock, .. } = set(client, LockKind::Write, start, end, false) else {
        unreachable!()
    };
    Q::ReclaimLock { ino, fh, lock }
}

fn epoch(a: A) -> u64 {
    match a {
        A::LockEpoch(e) => e,
        other => panic!("not an epoch: {other:?}"),
    }
}

#[tokio::test]
async fn a_restart_after_locks_were_held_leaves_them_to_their_holders_first() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("kdfs.locks");
    let m = LockManager::with_marker(1, marker.clone());
    assert!(!marker.exists());
    assert!(matches!(
        m.handle(2, set(7, LockKind::Write, 0, 9, false)).await,
        A::Done
    ));
    assert!(marker.exists(), "locks held: marked");
    let before = epoch(m.handle(2, Q::LockLease { client: 7 }).await);
    // krgd restarted: a new manager, a new epoch, a grace period
    let m = LockManager::with_marker(1, marker.clone());
    assert_ne!(epoch(m.handle(2, Q::LockLease { client: 7 }).await), before);
    assert!(
        matches!(
            m.handle(3, set(8, LockKind::Write, 50, 59, false)).await,
            A::Errno(libc::EAGAIN)
        ),
        "only reclaims take locks in the grace period"
    );
    assert!(matches!(m.handle(2, reclaim(7, 0, 9)).await, A::Done));
    assert!(
        matches!(m.handle(3, reclaim(8, 5, 5)).await, A::Errno(libc::ENOLCK)),
        "a reclaim that conflicts is refused"
    );
    // released in the grace: the marker stays (a second restart waits too)
    let release = Q::ReleaseLocks {
        client: 7,
        ino: None,
        owner: None,
        fh: None,
    };
    assert!(matches!(m.handle(2, release.clone()).await, A::Done));
    m.expire(|_| true);
    assert!(marker.exists(), "kept through the grace");
    // outside a grace: released, the marker goes at the next sweep (not
    // at the unlock), and the next start has no grace
    let marker = dir.path().join("other.locks");
    let m = LockManager::with_marker(1, marker.clone());
    assert!(matches!(
        m.handle(2, set(7, LockKind::Write, 0, 9, false)).await,
        A::Done
    ));
    assert!(matches!(m.handle(2, release).await, A::Done));
    assert!(marker.exists(), "removed by the sweep, not at each unlock");
    m.expire(|_| true);
    assert!(!marker.exists());
    let m = LockManager::with_marker(1, marker);
    assert!(matches!(
        m.handle(3, set(8, LockKind::Write, 50, 59, false)).await,
        A::Done
    ));
}

#[tokio::test]
async fn a_manager_that_takes_up_moved_files_leaves_their_locks_to_their_holders() {
    // The mirror that took node 1's store over: nothing held, a grace.
    let mirror = LockManager::taking_over(1);
    assert!(
        matches!(
            mirror.handle(3, set(8, LockKind::Write, 0, 9, false)).await,
            A::Errno(libc::EAGAIN)
        ),
        "a new lock waits for the reclaims"
    );
    assert!(matches!(mirror.handle(2, reclaim(7, 0, 9)).await, A::Done));

    // Node 1 takes its store back: what it held before is stale.
    let owner = LockManager::new(1);
    assert!(matches!(
        owner.handle(3, set(8, LockKind::Write, 0, 9, false)).await,
        A::Done
    ));
    let before = epoch(owner.handle(3, Q::LockLease { client: 8 }).await);
    owner.start_over();
    assert_ne!(
        epoch(owner.handle(2, Q::LockLease { client: 7 }).await),
        before,
        "its mounts see a new epoch and take their locks again"
    );
    assert!(
        matches!(owner.handle(2, reclaim(7, 0, 9)).await, A::Done),
        "the lock it held before the move is forgotten"
    );
    assert!(matches!(
        owner
            .handle(3, set(8, LockKind::Write, 20, 29, false))
            .await,
        A::Errno(libc::EAGAIN)
    ));
}
