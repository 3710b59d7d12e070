//! The lock-delay: a hold whose key vanished without a clean release (its lease revoked or
//! expired on the server, the key deleted by someone else) is granted to nobody else before its
//! holder must know it lost the lock; a clean release (unlock, a dropped guard, a closed session
//! or service) hands over at once.

mod common;

use std::time::{Duration, Instant};

use lock_core::{Lost, SessionConfig};
use lock_etcd::EtcdService;
use lock_testkit::proxy::Fault;

const TTL: Duration = Duration::from_secs(3);

/// The lease of the oldest key under `prefix` (the holder's).
async fn holder_lease(raw: &mut etcd_client::Client, prefix: &str) -> i64 {
    let options = etcd_client::GetOptions::new().with_prefix().with_sort(
        etcd_client::SortTarget::Create,
        etcd_client::SortOrder::Ascend,
    );
    let resp = raw.get(prefix, Some(options)).await.unwrap();
    resp.kvs()
        .iter()
        .find(|kv| kv.lease() != 0)
        .map(|kv| kv.lease())
        .expect("the holder's key")
}

/// A waiter on `service` for `id`: when granted, whether `holder` already knew it had lost the
/// lock, and how long after `since` the grant came.
fn waiter(
    service: EtcdService,
    id: &'static str,
    holder: Lost,
) -> tokio::task::JoinHandle<(bool, Duration, lock_core::Held)> {
    tokio::spawn(async move {
        let session = service.new_session(SessionConfig::new(TTL)).await.unwrap();
        let held = session.new_locker(id).lock().await.unwrap();
        let knew = holder.is_lost();
        (knew, Instant::now().elapsed(), held)
    })
}

/// The holder is cut off (its link blackholed, so it cannot hear of anything), and its lease is
/// revoked from outside by a direct client, as etcd does when it revokes a lease early. A
/// waiter of another service, on a healthy link, sees the key go at once: it must not be
/// granted before the holder's `is_lost()` is true (the holder's own deadline, up to TTL − TTL/10
/// after its last keep-alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_behind_a_cut_off_holder_is_not_granted_before_the_holder_knows() {
    common::log();
    let Some(endpoints) = common::shared("lease_revoked_behind_holder") else {
        return;
    };
    let prefix = common::unique_prefix("lock-delay");
    let proxy = common::first_member_proxy(&endpoints).await;
    let cut_off = common::service(&proxy.url(), &prefix, "").await;
    let healthy = common::service(&endpoints, &prefix, "").await;
    let mut raw = common::raw(&endpoints).await;

    let session = cut_off.new_session(SessionConfig::new(TTL)).await.unwrap();
    let held = session.new_locker("x").lock().await.unwrap();
    let lease = holder_lease(&mut raw, &prefix).await;
    let waiting = waiter(healthy.clone(), "x", held.lost());
    tokio::time::sleep(Duration::from_millis(300)).await; // the waiter has queued

    proxy.set(Fault::Blackhole);
    raw.lease_revoke(lease).await.unwrap();
    let revoked = Instant::now();
    let (knew, _, next) = tokio::time::timeout(TTL * 4, waiting)
        .await
        .expect("the waiter is granted within the holder's TTL and the lock-delay")
        .unwrap();
    let granted = revoked.elapsed();
    eprintln!(
        "lease revoked at 0: holder's is_lost() {} at the grant, {granted:?} later",
        knew
    );
    assert!(
        knew,
        "the waiter was granted {granted:?} after the lease was revoked, while the cut-off \
         holder's is_lost() was still false"
    );
    assert!(next.fencing_token() > held.fencing_token());
    assert!(
        granted <= TTL * 2 + Duration::from_secs(1),
        "granted {granted:?} after the revoke: later than the holder's TTL and the lock-delay"
    );
    proxy.set(Fault::None);
    next.unlock().await.unwrap();
    healthy.close().await.unwrap();
    drop(session);
}

/// Every clean release hands over at once, with no lock-delay: `unlock()`, a dropped `Held`,
/// `Session::close()`, `Service::close()`, a dropped locker. A long TTL makes a delay obvious.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_release_hands_over_at_once() {
    let Some(endpoints) = common::shared("clean_release_hands_over_at_once") else {
        return;
    };
    let prefix = common::unique_prefix("clean-handover");
    let long = SessionConfig::new(Duration::from_secs(30));
    let waiting = common::service(&endpoints, &prefix, "").await;
    let mut raw = common::raw(&endpoints).await;
    for how in [
        "unlock",
        "drop the Held",
        "close the session",
        "close the service",
        "drop the locker",
    ] {
        let holding = common::service(&endpoints, &prefix, "").await;
        let session = holding.new_session(long).await.unwrap();
        let mut locker = session.new_locker("x");
        let held = locker.lock().await.unwrap();
        let (waiter_service, lost) = (waiting.clone(), held.lost());
        let waiter = tokio::spawn(async move {
            let session = waiter_service.new_session(long).await.unwrap();
            let mut locker = session.new_locker("x");
            let next = locker.lock().await.unwrap();
            (Instant::now(), lost.is_lost(), next, locker, session)
        });
        tokio::time::sleep(Duration::from_millis(300)).await; // queued
        let released = Instant::now();
        match how {
            "unlock" => held.unlock().await.unwrap(),
            "drop the Held" => drop(held),
            "close the session" => session.close().await.unwrap(),
            "close the service" => holding.close().await.unwrap(),
            _ => {
                drop(held);
                drop(locker);
            }
        }
        let (at, knew, next, locker, session) =
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap_or_else(|_| panic!("{how}: the next waiter was not granted within 5 s"))
                .unwrap();
        let took = at.saturating_duration_since(released);
        eprintln!("{how}: the next holder was granted {took:?} later");
        assert!(knew, "{how}: granted before the holder's lost() fired");
        assert!(
            took < Duration::from_secs(1),
            "{how}: the next holder waited {took:?}: a clean release must hand over at once"
        );
        drop(next);
        drop(locker);
        session.close().await.unwrap();
    }
    // Nothing is left behind: no key, no record.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (keys, records) = common::lock_keys(&mut raw, &prefix).await;
    assert_eq!((keys.len(), records.len()), (0, 0), "left behind");
    waiting.close().await.unwrap();
}

/// A holder that hears of its loss (its key deleted by someone else, its link healthy) says
/// so by removing its record: the next holder is granted then, not a lock-delay later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_hears_of_its_loss_ends_the_lock_delay() {
    let Some(endpoints) = common::shared("holder_hears_of_its_loss") else {
        return;
    };
    let prefix = common::unique_prefix("heard");
    let long = SessionConfig::new(Duration::from_secs(30));
    let (a, b) = (
        common::service(&endpoints, &prefix, "").await,
        common::service(&endpoints, &prefix, "").await,
    );
    let mut raw = common::raw(&endpoints).await;
    let session = a.new_session(long).await.unwrap();
    let held = session.new_locker("x").lock().await.unwrap();
    let waiting = waiter(b.clone(), "x", held.lost());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (keys, _) = common::lock_keys(&mut raw, &prefix).await;
    let holder_key = keys
        .iter()
        .min_by_key(|kv| kv.create_revision())
        .unwrap()
        .key()
        .to_vec();
    raw.delete(holder_key, None).await.unwrap();
    let deleted = Instant::now();
    let (knew, _, next) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("granted")
        .unwrap();
    let took = deleted.elapsed();
    eprintln!("key deleted from outside: next holder granted {took:?} later");
    assert!(knew);
    assert!(
        took < Duration::from_secs(2),
        "the holder heard of its loss at once, yet the next waited {took:?} (its TTL is 30 s)"
    );
    drop(next);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A party that arrives after the key vanished, when nobody waited, must wait out the delay
/// too: `lock()` is not granted, and `try_lock()` finds the lock taken, until the holder must
/// know; then both get it. The record is gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomers_wait_out_a_lock_delay_too() {
    let Some(endpoints) = common::shared("newcomers_wait_out_a_lock_delay") else {
        return;
    };
    let prefix = common::unique_prefix("newcomer");
    let proxy = common::first_member_proxy(&endpoints).await;
    let cut_off = common::service(&proxy.url(), &prefix, "").await;
    let mut raw = common::raw(&endpoints).await;
    let session = cut_off.new_session(SessionConfig::new(TTL)).await.unwrap();
    let held = session.new_locker("x").lock().await.unwrap();
    let lease = holder_lease(&mut raw, &prefix).await;
    proxy.set(Fault::Blackhole);
    raw.lease_revoke(lease).await.unwrap();
    let revoked = Instant::now();

    // try_lock, from a fresh service, while the delay runs: taken.
    let trying = common::service(&endpoints, &prefix, "").await;
    let try_session = trying.new_session(SessionConfig::new(TTL)).await.unwrap();
    let mut try_locker = try_session.new_locker("x");
    assert!(
        try_locker.try_lock().await.unwrap().is_none(),
        "try_lock took a lock whose holder had not heard of its loss"
    );
    // lock(), from another fresh service: granted only once the holder knows.
    let fresh = common::service(&endpoints, &prefix, "").await;
    let (knew, _, next) = tokio::time::timeout(TTL * 4, waiter(fresh.clone(), "x", held.lost()))
        .await
        .expect("granted after the delay")
        .unwrap();
    let took = revoked.elapsed();
    eprintln!("newcomer granted {took:?} after the revoke");
    assert!(
        knew,
        "a newcomer was granted while the cut-off holder believed it held"
    );
    drop(next);
    // try_lock gets it now.
    let again = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(held) = try_locker.try_lock().await.unwrap() {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("try_lock succeeds once the delay has passed");
    again.unlock().await.unwrap();
    proxy.set(Fault::None);
    drop(session);
    for s in [cut_off, trying, fresh] {
        let _ = s.close().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (keys, records) = common::lock_keys(&mut raw, &prefix).await;
    assert_eq!((keys.len(), records.len()), (0, 0), "left behind");
}

/// `try_lock` alone (nobody ever calls `lock()`) still gets the lock once the delay has
/// passed — someone must end it — and not before the cut-off holder knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_alone_gets_the_lock_after_a_lock_delay() {
    let Some(endpoints) = common::shared("try_lock_alone_after_a_lock_delay") else {
        return;
    };
    let prefix = common::unique_prefix("try-alone");
    let proxy = common::first_member_proxy(&endpoints).await;
    let cut_off = common::service(&proxy.url(), &prefix, "").await;
    let mut raw = common::raw(&endpoints).await;
    let session = cut_off.new_session(SessionConfig::new(TTL)).await.unwrap();
    let held = session.new_locker("x").lock().await.unwrap();
    let (keys, _) = common::lock_keys(&mut raw, &prefix).await;
    proxy.set(Fault::Blackhole);
    raw.delete(keys[0].key().to_vec(), None).await.unwrap();
    let deleted = Instant::now();
    let trying = common::service(&endpoints, &prefix, "").await;
    let session_b = trying.new_session(SessionConfig::new(TTL)).await.unwrap();
    let mut locker = session_b.new_locker("x");
    let got = tokio::time::timeout(TTL * 3, async {
        loop {
            if let Some(next) = locker.try_lock().await.unwrap() {
                return next;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("try_lock gets the lock after the delay");
    let took = deleted.elapsed();
    eprintln!("try_lock got it {took:?} after the key went");
    assert!(
        held.is_lost(),
        "try_lock got the lock while the cut-off holder believed it held"
    );
    got.unlock().await.unwrap();
    proxy.set(Fault::None);
    drop(session);
    let _ = cut_off.close().await;
    trying.close().await.unwrap();
}

/// The conformance check of this property fails on a service without a lock-delay: proof that
/// it can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_check_fails_without_a_lock_delay() {
    let Some(endpoints) = common::shared("conformance_check_fails_without_a_lock_delay") else {
        return;
    };
    let members: Vec<std::net::SocketAddr> = endpoints
        .split(',')
        .map(|url| url.trim_start_matches("http://").parse().unwrap())
        .collect();
    let direct = endpoints.clone();
    let harness = lock_testkit::Harness::from_uri(format!("etcd:{endpoints}?lock-delay=0"))
        .with_ttl(TTL)
        .with_settle(Duration::from_millis(300))
        .with_faults(members, |proxies| {
            let uri = format!("etcd:{}?lock-delay=0", proxies.join(","));
            Box::pin(async move { lock_core::new(&uri).await })
        })
        .with_lease_ending(move |id| Box::pin(common::revoke_holders_lease(direct.clone(), id)));
    let outcome =
        lock_testkit::conformance::a_lost_lease_is_not_granted_before_its_holder_knows(&harness)
            .await;
    let failure = outcome.expect_err("the check passed on a service with lock-delay=0");
    assert!(
        failure.to_string().contains("is_lost() was still false"),
        "{failure}"
    );
}
