//! The callback registry on its own: what reaches which mount, and that a
//! change waits for the acknowledgement (not for the grant to expire).

use std::sync::Arc;
use std::time::Duration;

use krg_proto::kdfs::{DirEntry, FileKind, Inval, KdfsRequest as Q, KdfsResponse as A};

use super::Callbacks;

const ME: u32 = 1;
/// Long enough that a change finishing within [`PATIENCE`] was acknowledged,
/// not waited out.
const TTL_MS: u64 = 60_000;
const PATIENCE: Duration = Duration::from_secs(30);

fn lookup(dir: u64) -> (Q, A) {
    (
        Q::Lookup {
            dir,
            name: b"f".to_vec(),
        },
        A::Entry {
            ino: 99,
            kind: FileKind::File,
            attr: None,
        },
    )
}

fn unlink(dir: u64) -> (Q, A) {
    (
        Q::Unlink {
            dir,
            name: b"f".to_vec(),
        },
        A::Unlinked {
            entry: DirEntry {
                name: b"f".to_vec(),
                ino: 99,
                kind: FileKind::File,
            },
            link_dropped: true,
        },
    )
}

fn dir_attr(ino: u64) -> krg_proto::kdfs::Attr {
    let t = krg_proto::kdfs::Time { sec: 0, nsec: 0 };
    krg_proto::kdfs::Attr {
        ino,
        kind: FileKind::Dir,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 0,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
    }
}

/// Poll as mount `client` until something comes (an empty answer is only
/// the poll's period passing).
async fn next(cb: &Callbacks, node: u32, client: u64, acked: u64) -> (u64, Vec<Inval>) {
    for _ in 0..60 {
        if let A::Invalidate { seq, items } = cb.watch(node, client, acked, TTL_MS).await {
            if !items.is_empty() {
                return (seq, items);
            }
        }
    }
    panic!("nothing came");
}

#[tokio::test]
async fn a_change_reaches_the_holder_and_returns_on_its_acknowledgement() {
    let cb = Arc::new(Callbacks::new(ME));
    // Mount 7 on node 2 registers, looks a name up in directory 5 and
    // gets the directory's attributes.
    assert!(matches!(
        cb.watch(2, 7, 0, TTL_MS).await,
        A::Invalidate { seq: 0, .. }
    ));
    let (q, a) = lookup(5);
    cb.granted(7, 2, &q, &a);
    cb.granted(7, 2, &Q::GetAttr { ino: 5 }, &A::Attr(dir_attr(5)));
    // Mount 8 on node 3 unlinks it.
    let change = {
        let cb = cb.clone();
        tokio::spawn(async move {
            let (q, a) = unlink(5);
            cb.changed(Some(8), 3, &q, &a, None).await
        })
    };
    let (seq, items) = next(&cb, 2, 7, 0).await;
    assert!(items.contains(&Inval::Entry {
        dir: 5,
        name: b"f".to_vec()
    }));
    assert!(items.contains(&Inval::Attr(5)));
    // The file's attributes: only its node's own mounts cache those.
    assert!(!items.contains(&Inval::Attr(99)));
    assert!(
        !change.is_finished(),
        "the change returned before mount 7 acknowledged"
    );
    // The acknowledgement rides on the next poll.
    let cb2 = cb.clone();
    let poll = tokio::spawn(async move { cb2.watch(2, 7, seq, TTL_MS).await });
    tokio::time::timeout(PATIENCE, change)
        .await
        .expect("the change waited for the grant to expire instead of the acknowledgement")
        .unwrap();
    poll.await.unwrap();
}

#[tokio::test]
async fn an_unmounted_mount_is_waited_for_no_more() {
    let cb = Arc::new(Callbacks::new(ME));
    cb.watch(2, 7, 0, TTL_MS).await;
    let (q, a) = lookup(5);
    cb.granted(7, 2, &q, &a);
    // A change waits for mount 7 ...
    let change = {
        let cb = cb.clone();
        tokio::spawn(async move {
            let (q, a) = unlink(5);
            cb.changed(Some(8), 3, &q, &a, None).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!change.is_finished(), "the change did not wait for mount 7");
    // ... until mount 7 says it unmounted.
    cb.unwatch(7);
    tokio::time::timeout(PATIENCE, change)
        .await
        .expect("the change still waited for the unmounted mount")
        .unwrap();
    // Its grants went with it: the next change waits for nobody.
    let (q, a) = unlink(5);
    tokio::time::timeout(PATIENCE, cb.changed(Some(8), 3, &q, &a, None))
        .await
        .expect("a change waited out the grants of an unmounted mount");
}

#[tokio::test]
async fn the_mount_that_made_a_change_is_not_told_of_it() {
    let cb = Callbacks::new(ME);
    cb.watch(2, 7, 0, TTL_MS).await;
    let (q, a) = lookup(5);
    cb.granted(7, 2, &q, &a);
    let (q, a) = unlink(5);
    tokio::time::timeout(PATIENCE, cb.changed(Some(7), 2, &q, &a, None))
        .await
        .expect("a change by the holder itself waited");
    // Nothing queued: the poll answers empty.
    assert!(matches!(
        cb.watch(2, 7, 0, TTL_MS).await,
        A::Invalidate { items, .. } if items.is_empty()
    ));
}

#[tokio::test]
async fn a_remote_writer_makes_a_file_volatile_for_the_owners_mounts() {
    let cb = Arc::new(Callbacks::new(ME));
    // Mount 4 runs on the owner's node (it reads the store in place).
    cb.watch(ME, 4, 0, TTL_MS).await;
    let open = (
        Q::Open {
            ino: 42,
            write: true,
        },
        A::Handle(3),
    );
    let change = {
        let cb = cb.clone();
        tokio::spawn(async move { cb.changed(Some(9), 2, &open.0, &open.1, None).await })
    };
    let (seq, items) = next(&cb, ME, 4, 0).await;
    assert_eq!(items, vec![Inval::Volatile(42)]);
    let cb2 = cb.clone();
    let poll = tokio::spawn(async move { cb2.watch(ME, 4, seq, TTL_MS).await });
    tokio::time::timeout(PATIENCE, change)
        .await
        .unwrap()
        .unwrap();
    poll.await.unwrap();
    // Its release makes it stable again (not waited for).
    let release = Q::Release { ino: 42, fh: 3 };
    tokio::time::timeout(PATIENCE, cb.changed(Some(9), 2, &release, &A::Done, None))
        .await
        .unwrap();
    let (_, items) = next(&cb, ME, 4, seq).await;
    assert_eq!(items, vec![Inval::Stable(42)]);
    // A read-only open through another node changes nothing.
    let ro = Q::Open {
        ino: 42,
        write: false,
    };
    cb.changed(Some(9), 2, &ro, &A::Handle(4), None).await;
    assert!(matches!(
        cb.watch(ME, 4, seq, TTL_MS).await,
        A::Invalidate { items, .. } if items.is_empty()
    ));
}
