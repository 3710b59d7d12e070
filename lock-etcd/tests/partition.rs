//! Conservative loss under network faults, against the real cluster: a holder cut off from etcd
//! sees `lost()` before anyone else is granted its lock, and never silently gets it back; slow
//! but timely keep-alives are no loss, late ones are.

mod common;

use std::time::{Duration, Instant};

use lock_core::{Error, SessionConfig};
use lock_etcd::{EtcdConfig, EtcdService};
use lock_testkit::proxy::{Fault, FaultProxy};

const TTL: Duration = Duration::from_secs(3);

async fn service(endpoints: &str, prefix: &str) -> EtcdService {
    let uri = format!("etcd:{endpoints}?prefix={prefix}&request-timeout=2s");
    EtcdService::connect(EtcdConfig::from_uri(&uri).unwrap())
        .await
        .unwrap()
}

/// A proxy in front of the shared cluster's first member.
async fn proxy(endpoints: &str) -> FaultProxy {
    common::first_member_proxy(endpoints).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_holder_loses_the_lock_before_the_next_holder_gets_it() {
    let Some(endpoints) = common::shared("partitioned_holder") else {
        return;
    };
    let prefix = common::unique_prefix("partition");
    let proxy = proxy(&endpoints).await;
    let cut_off = service(&proxy.url(), &prefix).await;
    let direct = service(&endpoints, &prefix).await;

    let session = cut_off.new_session(SessionConfig::new(TTL)).await.unwrap();
    let mut locker = session.new_locker("x");
    let held = locker.lock().await.unwrap();
    let other = direct.new_session(SessionConfig::new(TTL)).await.unwrap();
    let waiter = tokio::spawn(async move {
        let mut locker = other.new_locker("x");
        let granted = locker.lock().await;
        (Instant::now(), granted, locker, other)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.set(Fault::Blackhole);
    let cut_at = Instant::now();
    tokio::time::timeout(TTL * 3, held.lost())
        .await
        .expect("lost() after the partition");
    let lost_at = Instant::now();
    let (granted_at, granted, next, _other) = tokio::time::timeout(TTL * 5, waiter)
        .await
        .unwrap()
        .unwrap();
    let next_held = granted.expect("the next holder is granted once the lease expires");
    eprintln!(
        "partition at 0: holder lost at {:?}, next holder granted at {:?}",
        lost_at - cut_at,
        granted_at - cut_at
    );
    assert!(
        lost_at < granted_at,
        "the next holder was granted before the partitioned holder saw lost()"
    );
    assert!(
        lost_at - cut_at <= TTL,
        "lost() came {:?} after the cut, later than the TTL",
        lost_at - cut_at
    );
    assert!(next_held.fencing_token() > held.fencing_token());

    // The partition heals: the old holder must not come back.
    proxy.set(Fault::None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(held.is_lost() && session.done().is_done());
    assert!(
        matches!(locker.lock().await, Err(Error::AlreadyClosed(_))),
        "no silent re-acquisition"
    );
    assert!(!next_held.is_lost());
    next.unlock().await.unwrap();
    direct.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_keep_alives_are_no_loss_until_they_come_too_late() {
    let Some(endpoints) = common::shared("slow_keep_alives") else {
        return;
    };
    let prefix = common::unique_prefix("slow");
    let proxy = proxy(&endpoints).await;
    let slow = service(&proxy.url(), &prefix).await;
    let session = slow.new_session(SessionConfig::new(TTL)).await.unwrap();
    let mut locker = session.new_locker("x");
    let held = locker.lock().await.unwrap();

    // TTL/3 each way: every acknowledgement arrives 2 s after its keep-alive, still within
    // TTL − margin = 2.7 s. Three TTLs without a false loss.
    proxy.set(Fault::Latency(TTL / 3));
    let lost_early = tokio::time::timeout(TTL * 3, held.lost()).await.is_ok();
    assert!(
        !lost_early && !held.is_lost(),
        "keep-alives arrived in time, yet the lock was reported lost"
    );

    // A full TTL each way: no acknowledgement can arrive in time any more.
    proxy.set(Fault::Latency(TTL));
    tokio::time::timeout(TTL * 3, held.lost())
        .await
        .expect("late keep-alives must end the session");
    assert!(session.done().is_done());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_returns_within_its_timeout_when_the_client_is_partitioned_while_waiting() {
    let Some(endpoints) = common::shared("timeout_partition") else {
        return;
    };
    let prefix = common::unique_prefix("timeout-partition");
    let proxy = proxy(&endpoints).await;
    let cut_off = service(&proxy.url(), &prefix).await;
    let direct = service(&endpoints, &prefix).await;
    let holder_session = direct.new_session(SessionConfig::new(TTL)).await.unwrap();
    let mut holder = holder_session.new_locker("x");
    let _held = holder.lock().await.unwrap();

    let timeout = Duration::from_secs(1);
    let session = cut_off
        .new_session(SessionConfig::new(TTL).with_timeout(timeout))
        .await
        .unwrap();
    let mut waiter = session.new_locker("x");
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let result = waiter.lock().await;
        (started.elapsed(), result.map(|_| ()), waiter, session)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set(Fault::Blackhole);
    let (took, result, _waiter, _session) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("lock() came back")
        .unwrap();
    eprintln!("lock() with a 1 s timeout, partitioned at 0.5 s: {result:?} after {took:?}");
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert!(
        took <= timeout + Duration::from_millis(100),
        "lock() took {took:?}, more than its timeout + 100 ms"
    );
    proxy.set(Fault::None);
    holder.unlock().await.unwrap();
    direct.close().await.unwrap();
}

/// A session whose keep-alives stall (here: its only link turns slow, an answer taking 1.2 s
/// where it took a millisecond) moves its keys to a fresh lease, same create revisions, and
/// outlives its first lease: revoking that one, as a leader that stopped and came back can make
/// the cluster do, takes neither its hold nor its waiter's place in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_moves_its_keys_and_outlives_its_first_lease() {
    // `RUST_LOG=lock_etcd=debug` shows the move.
    common::log();
    let Some(endpoints) = common::shared("stalled_session") else {
        return;
    };
    let prefix = common::unique_prefix("stalled");
    let proxy = proxy(&endpoints).await;
    // The default request timeout (5 s): a try may take 2.5 s, twice a slow round trip.
    let uri = format!("etcd:{}?prefix={prefix}", proxy.url());
    let slowed = EtcdService::connect(EtcdConfig::from_uri(&uri).unwrap())
        .await
        .unwrap();
    let etcd = std::sync::Arc::new(slowed.open_session(SessionConfig::new(TTL)).await.unwrap());
    let first = etcd.lease_id();
    let session = lock_core::backend::session(etcd.clone(), SessionConfig::new(TTL));
    let held = session.new_locker("x").lock().await.unwrap();
    let token = held.fencing_token();
    // A waiter of the same session, queued behind the hold.
    let mut waiter = session.new_locker("x");
    let waiting = tokio::spawn(async move { waiter.lock().await });
    let mut raw = common::raw(&endpoints).await;
    for _ in 0..100 {
        if common::lock_keys(&mut raw, &prefix).await.0.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // its view of the queue loaded
    assert!(!waiting.is_finished());

    proxy.set(Fault::Latency(Duration::from_millis(600)));
    let slowed_at = Instant::now();
    while etcd.lease_id() == first {
        assert!(
            slowed_at.elapsed() < Duration::from_secs(30),
            "the session did not move to a fresh lease"
        );
        assert!(!held.is_lost(), "lost while moving: {:?}", held.loss());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved_after = slowed_at.elapsed();
    proxy.set(Fault::None);
    let fresh = etcd.lease_id();

    // Both keys are on the fresh lease, created where they were.
    let (found, _) = common::lock_keys(&mut raw, &prefix).await;
    let mut on: Vec<(i64, i64)> = found
        .iter()
        .map(|kv| (kv.create_revision(), kv.lease()))
        .collect();
    on.sort_unstable();
    assert_eq!(on.len(), 2, "the hold's and the waiter's keys: {on:?}");
    assert_eq!(
        on[0],
        (token as i64, fresh),
        "the held key keeps its revision"
    );
    assert_eq!(on[1].1, fresh, "the waiting key moved too");

    // The first lease goes (the move revoked it, or we do now): nothing of the session goes
    // with it.
    match raw.lease_revoke(first).await {
        Ok(_) => {}
        Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => {}
        Err(e) => panic!("revoking the first lease: {e}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !held.is_lost(),
        "revoking the first lease took the hold: {:?}",
        held.loss()
    );
    held.unlock().await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter is granted once the hold is released")
        .unwrap()
        .expect("the waiter kept its place");
    assert!(next.fencing_token() > token);
    eprintln!("moved to a fresh lease {moved_after:?} after the link turned slow");
    next.unlock().await.unwrap();
    session.close().await.unwrap();
}
