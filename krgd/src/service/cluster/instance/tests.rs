//! Welcome against eviction on one node's Raft instance: a welcome's epoch
//! is known as soon as its instance can be seen, so an eviction sent
//! before the welcome (delayed, or waiting for the lock while the instance
//! started) does not end the membership the welcome began.

use std::sync::Arc;

use super::*;
use crate::config::Settings;

/// A cluster service of node 1 with its data in `dir`, without discovery
/// (nothing is broadcast; the Raft instance starts and stops for real).
fn service(dir: &std::path::Path) -> Arc<ClusterService> {
    let config = Settings {
        node_id: Some(1),
        session_id: Some(1),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.to_path_buf()),
        no_http: true,
        no_krg_mount: true,
        no_scheduler_mount: true,
        ..Settings::default()
    }
    .resolve("")
    .unwrap();
    let key = krg_proto::auth::ClusterKey::new(vec![7; 32]).unwrap();
    let ctx = Arc::new(NodeContext::new(config, key, None));
    Arc::new(ClusterService {
        ctx,
        discovery: std::sync::OnceLock::new(),
        joined: tokio::sync::RwLock::new(None),
        joined_uid: AtomicU64::new(0),
        leader_contact: Mutex::new(None),
        no_majority_since: Mutex::new(None),
        change_lock: tokio::sync::Mutex::new(()),
        view_task: Mutex::new(None),
        handovers: std::sync::RwLock::default(),
    })
}

const UID: u64 = 0x2508_fbe5_a43a_fc83;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_older_than_the_welcome_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    // Welcomed by a leader at epoch 355: a member from epoch 356 on.
    let j = svc.join(UID, Some((355, 4))).await.unwrap();
    assert_eq!(
        j.stale_eviction(355, 4),
        Some(Staleness::Welcomed(356)),
        "the welcome is recorded with the instance"
    );
    // Evictions the leader sent at epochs 354 and 355, before it welcomed
    // this node (the fault campaign's node 2 got them together with the
    // welcome after a pause): ignored, the Raft state stays.
    for epoch in [355, 354, 355] {
        svc.evicted(3, UID, epoch, 4).await;
    }
    let still = svc
        .joined()
        .await
        .expect("a stale eviction ended the membership");
    assert!(Arc::ptr_eq(&still, &j));
    assert!(
        dir.path().join(disk::DIR).exists(),
        "the Raft state is kept"
    );
    // Another cluster's eviction does nothing either.
    svc.evicted(3, UID + 1, u64::MAX, u64::MAX).await;
    assert!(svc.joined().await.is_some());
    // A welcome repeated for the same instance at a later epoch moves it on.
    svc.join(UID, Some((360, 4))).await.unwrap();
    svc.evicted(3, UID, 358, 4).await;
    assert!(
        svc.joined().await.is_some(),
        "welcome at 360 outlives an eviction at 358"
    );
    // An eviction as of the welcome's epoch or later is obeyed: the node
    // leaves and its Raft state is deleted.
    svc.evicted(3, UID, 361, 4).await;
    assert!(svc.joined().await.is_none(), "a current eviction is obeyed");
    assert!(
        !dir.path().join(disk::DIR).exists(),
        "leaving deletes the Raft state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_racing_a_welcome_never_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    // The eviction (sent at epoch 355, before the welcome at 355) and the
    // welcome are handled at once, in either order: whichever takes the
    // instance's lock first, the node ends up in the cluster.
    for round in 0..20u64 {
        let (a, b) = (svc.clone(), svc.clone());
        let welcome = tokio::spawn(async move { a.join(UID, Some((355 + round, 4))).await });
        let evict = tokio::spawn(async move { b.evicted(3, UID, 355 + round, 4).await });
        welcome.await.unwrap().unwrap();
        evict.await.unwrap();
        let j = svc.joined().await;
        assert!(j.is_some(), "round {round}: the welcomed node was evicted");
        // Leave for the next round (an eviction at the welcome's epoch + 1).
        svc.evicted(3, UID, 356 + round, 4).await;
        assert!(svc.joined().await.is_none(), "round {round}");
    }
}

/// The fault campaign's seed 20697470 (CI): a leader of term 8 welcomed
/// node 1 at epoch 58 and was deposed before it could commit the add; the
/// leader of term 9, at epoch 58 and not listing node 1, evicted it every
/// heartbeat, and node 1 ignored every eviction (58 < 59) and claimed the
/// cluster forever. A later term's eviction is obeyed whatever the epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_of_a_later_term_ends_a_lost_welcome() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    svc.join(UID, Some((58, 8))).await.unwrap();
    svc.evicted(3, UID, 58, 8).await;
    assert!(svc.joined().await.is_some(), "same term: the welcome holds");
    svc.evicted(3, UID, 58, 9).await;
    assert!(
        svc.joined().await.is_none(),
        "the term 9 leader's eviction was ignored"
    );
    assert!(!dir.path().join(disk::DIR).exists());
}

/// The fault campaign's seed 256349191 (CI): node 4, leading, removed
/// itself; while that removal waited for the others, a new leader evicted
/// it and `nodes add -n4` welcomed it back. The removal's last step, its
/// leave, then ended the new membership. A leave is of one instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_leave_of_an_earlier_instance_keeps_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let led = svc.join(UID, Some((76, 9))).await.unwrap();
    svc.evicted(5, UID, 77, 10).await;
    assert!(svc.joined().await.is_none(), "the eviction is obeyed");
    let again = svc.join(UID, Some((78, 10))).await.unwrap();
    // the removal begun as leader finishes now
    svc.leave_instance(&led).await;
    let kept = svc
        .joined()
        .await
        .expect("the earlier instance's leave ended the new membership");
    assert!(Arc::ptr_eq(&kept, &again));
    assert!(
        dir.path().join(disk::DIR).exists(),
        "its Raft state is kept"
    );
    svc.leave_instance(&again).await;
    assert!(svc.joined().await.is_none(), "its own leave is obeyed");
}

/// A welcome shields a node from its own term's evictions for a moment
/// only: after `nodes add -n2:3` gave up because node 3 refused its
/// welcome, node 2 (welcomed, never added) must leave when the leader,
/// still at the same epoch and term, evicts it.
#[test]
fn an_old_welcome_no_longer_shields() {
    let welcome = |age| {
        Some(Welcome {
            epoch: 59,
            term: 9,
            age,
        })
    };
    let fresh = welcome(Duration::from_millis(50));
    let old = welcome(WELCOME_SHIELD + Duration::from_millis(1));
    assert_eq!(
        eviction_staleness(0, fresh, 58, 9),
        Some(Staleness::Welcomed(59))
    );
    assert_eq!(eviction_staleness(0, old, 58, 9), None);
    assert_eq!(eviction_staleness(0, fresh, 58, 10), None, "later term");
    assert_eq!(
        eviction_staleness(0, fresh, 58, 8),
        Some(Staleness::Welcomed(59)),
        "an earlier term's eviction was sent before this welcome"
    );
    assert_eq!(eviction_staleness(0, fresh, 59, 9), None, "as of the add");
    // A membership this node applied outlives any older eviction, however
    // old the welcome and whatever the term.
    assert_eq!(
        eviction_staleness(60, old, 59, 12),
        Some(Staleness::Applied(60))
    );
    assert_eq!(eviction_staleness(60, None, 60, 12), None);
}

/// The fault campaign in CI (seed 567992719): node 1's Raft core panicked
/// (an openraft assertion) and the node went on answering `healthy` from
/// its last view, forever. A core that ends on its own makes the node say
/// `no quorum` at once, and is started again from disk, as a krgd restart
/// would, with the cluster it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_core_that_stops_on_its_own_is_started_again_from_disk() {
    use krg_proto::cluster::Health;
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    svc.start_cluster().await.unwrap();
    let healthy = |svc: Arc<ClusterService>| async move {
        for _ in 0..100 {
            if svc.status().await.health == Health::Healthy {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(
        healthy(svc.clone()).await,
        "a one-node cluster never became healthy"
    );
    let before = svc.joined().await.unwrap();
    let (uid, epoch) = (before.uid, before.state().epoch);
    // What a panic in the core does to the handle: the core task is gone,
    // the instance stays in place.
    before.raft.shutdown().await.unwrap();
    assert_eq!(
        svc.status().await.health,
        Health::NoQuorum,
        "a dead core said healthy"
    );
    assert!(healthy(svc.clone()).await, "the core was not started again");
    let after = svc.joined().await.unwrap();
    assert!(!Arc::ptr_eq(&before, &after), "still the dead instance");
    assert_eq!(
        (after.uid, after.state().epoch),
        (uid, epoch),
        "not the same cluster"
    );
    assert!(svc.status().await.members.contains(&1));
    // Leaving on purpose is not a death: nothing comes back.
    svc.leave_instance(&after).await;
    tokio::time::sleep(CORE_RESTART_DELAY * 2).await;
    assert!(svc.joined().await.is_none(), "a left cluster came back");
}
