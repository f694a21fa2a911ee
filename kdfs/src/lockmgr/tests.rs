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
