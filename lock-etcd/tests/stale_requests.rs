//! Requests the client gave up on can still land at etcd later, after newer ones. A locker
//! reuses its key name across attempts, so a late delete of an earlier incarnation of its key
//! must not remove the incarnation it holds now (docs/RELIABILITY.md, "two holders under
//! load").
//!
//! Made deterministic with the fault proxy: the client's connection is slowed, so the unlock's
//! delete sits in the proxy's delay line; then the connection is cut, but what it carried is
//! still delivered, late ([`Fault::CutLate`]); meanwhile the locker retries on a new connection
//! and takes the lock again.

mod common;

use std::time::Duration;

use lock_core::SessionConfig;
use lock_etcd::{EtcdConfig, EtcdService};
use lock_testkit::proxy::{Fault, FaultProxy};

const TTL: Duration = Duration::from_secs(10);
/// How long the slow connection holds each request: long enough that every request sent on it
/// lands after the locker has taken the lock again on a new connection.
const DELAY: Duration = Duration::from_secs(4);

/// A service whose only endpoint is a fault proxy in front of the shared cluster's first member
/// (with `request-timeout` as given), the proxy, and a service connected directly.
async fn behind_a_proxy(
    endpoints: &str,
    name: &str,
    request_timeout: &str,
) -> (EtcdService, FaultProxy, EtcdService) {
    let prefix = common::unique_prefix(name);
    let proxy = common::first_member_proxy(endpoints).await;
    let uri = format!(
        "etcd:{}?prefix={prefix}&request-timeout={request_timeout}",
        proxy.url()
    );
    let proxied = EtcdService::connect(EtcdConfig::from_uri(&uri).unwrap())
        .await
        .unwrap();
    let direct = EtcdService::connect(
        EtcdConfig::from_uri(&format!("etcd:{endpoints}?prefix={prefix}")).unwrap(),
    )
    .await
    .unwrap();
    (proxied, proxy, direct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_delete_of_an_earlier_attempt_never_removes_the_key_held_now() {
    let Some(endpoints) = common::shared("late_delete") else {
        return;
    };
    let (slow, proxy, direct) = behind_a_proxy(&endpoints, "late-delete", "1s").await;
    let session = slow.new_session(SessionConfig::new(TTL)).await.unwrap();
    let mut locker = session.new_locker("x");
    let first_hold = locker.lock().await.unwrap();

    // The unlock's delete goes into the delay line; the client gives up on it after its
    // request timeout (1 s), and the locker's cleanup sends another on the same connection.
    proxy.set(Fault::Latency(DELAY));
    let started = std::time::Instant::now();
    let unlocked = tokio::time::timeout(Duration::from_secs(3), locker.unlock()).await;
    eprintln!("{:?}: unlock() -> {unlocked:?}", started.elapsed());
    assert!(first_hold.is_lost());
    // The connection breaks, but what it carried still reaches etcd, late.
    proxy.set(Fault::CutLate);
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.set(Fault::None);

    // The locker takes the lock again on a new connection, before the stale deletes land.
    let second_hold = tokio::time::timeout(Duration::from_secs(5), locker.lock())
        .await
        .expect("lock() again within 5 s")
        .expect("lock() again");
    let relocked = started.elapsed();
    eprintln!(
        "{relocked:?}: locked again, token {} (first {})",
        second_hold.fencing_token(),
        first_hold.fencing_token()
    );
    assert!(
        relocked < DELAY,
        "the test needs the new hold before the stale requests land ({relocked:?})"
    );
    assert!(
        second_hold.fencing_token() > first_hold.fencing_token(),
        "fencing token reused: {} after {}",
        second_hold.fencing_token(),
        first_hold.fencing_token()
    );
    let other = direct.new_session(SessionConfig::new(TTL)).await.unwrap();
    let waiter = tokio::spawn(async move {
        let mut locker = other.new_locker("x");
        let granted = locker.lock().await;
        (granted, locker, other)
    });

    // Every request sent on the slow connection has landed by now.
    tokio::time::sleep((DELAY + Duration::from_secs(2)).saturating_sub(started.elapsed())).await;
    let (lost, other_granted) = (second_hold.is_lost(), waiter.is_finished());
    assert!(
        !lost && !other_granted,
        "a late delete of the earlier attempt removed the key of the hold taken since \
         (second hold lost: {lost}; another service granted the lock: {other_granted})"
    );
    locker.unlock().await.unwrap();
    let (granted, _other_locker, _other) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter is granted after the unlock")
        .unwrap();
    let granted = granted.expect("the waiter is granted the lock after the unlock");
    assert!(granted.fencing_token() > second_hold.fencing_token());
    let _ = slow.close().await;
    let _ = direct.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_unlock_still_frees_the_lock_and_never_reuses_a_token() {
    let Some(endpoints) = common::shared("cancelled_unlock") else {
        return;
    };
    let (client, proxy, direct) = behind_a_proxy(&endpoints, "cancelled-unlock", "2s").await;
    let session = client.new_session(SessionConfig::new(TTL)).await.unwrap();
    let mut locker = session.new_locker("x");
    let first_hold = locker.lock().await.unwrap();

    // unlock() is dropped while its delete cannot get through.
    proxy.set(Fault::Blackhole);
    let cancelled = tokio::time::timeout(Duration::from_millis(300), locker.unlock()).await;
    assert!(cancelled.is_err(), "unlock() should still be waiting");
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Fault::Cut); // the blackholed connection is useless now; new ones work
    proxy.set(Fault::None);

    // Once the cluster answers, the id is free for another service within a second or so.
    let other = direct.new_session(SessionConfig::new(TTL)).await.unwrap();
    let mut other_locker = other.new_locker("x");
    let started = std::time::Instant::now();
    let other_hold = tokio::time::timeout(Duration::from_secs(3), other_locker.lock())
        .await
        .expect("the lock is free after a cancelled unlock")
        .unwrap();
    eprintln!("free {:?} after the network healed", started.elapsed());
    assert!(other_hold.fencing_token() > first_hold.fencing_token());
    other_locker.unlock().await.unwrap();

    // The same locker's next hold has a new token.
    let again = tokio::time::timeout(Duration::from_secs(5), locker.lock())
        .await
        .expect("lock() again")
        .unwrap();
    assert!(
        again.fencing_token() > other_hold.fencing_token(),
        "token {} reused or out of order (first {}, other {})",
        again.fencing_token(),
        first_hold.fencing_token(),
        other_hold.fencing_token()
    );
    locker.unlock().await.unwrap();
    let _ = client.close().await;
    let _ = direct.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_wait_for_an_earlier_removal_does_not_let_it_delete_a_later_hold() {
    let Some(endpoints) = common::shared("dropped_wait") else {
        return;
    };
    // request-timeout 5 s: requests on the slow connection take 2 s but do not time out.
    let (slow, proxy, _direct) = behind_a_proxy(&endpoints, "dropped-wait", "5s").await;
    let session = slow.new_session(SessionConfig::new(TTL)).await.unwrap();
    let mut locker = session.new_locker("x");
    proxy.set(Fault::Latency(Duration::from_secs(1)));

    // An attempt dropped before its put was answered: its removal must first read which
    // incarnation exists (on the slow connection), then delete it.
    let dropped = tokio::time::timeout(Duration::from_millis(300), locker.lock()).await;
    assert!(dropped.is_err(), "the first lock() should still be waiting");
    // The next attempt waits for that removal; it is dropped while waiting.
    let dropped = tokio::time::timeout(Duration::from_millis(300), locker.lock()).await;
    assert!(
        dropped.is_err(),
        "the second lock() should still be waiting"
    );

    // The third attempt must wait for the removal too, or the removal deletes its hold.
    let held = tokio::time::timeout(Duration::from_secs(20), locker.lock())
        .await
        .expect("lock() within 20 s")
        .expect("lock()");
    tokio::time::sleep(Duration::from_secs(5)).await; // every earlier request has landed
    assert!(
        !held.is_lost(),
        "the hold was lost: {}",
        held.loss().map_or(String::new(), |l| l.to_string())
    );
    proxy.set(Fault::None);
    locker.unlock().await.unwrap();
    let _ = slow.close().await;
}
