//! Losing a lock from outside: the lease revoked, or the lock key deleted.

mod common;

use std::time::Duration;

use etcd_client::GetOptions;
use lock_core::{Error, SessionConfig};
use lock_etcd::{EtcdConfig, EtcdService};

async fn service(endpoints: &str, prefix: &str) -> EtcdService {
    let config = EtcdConfig::from_uri(&format!("etcd:{endpoints}?prefix={prefix}")).unwrap();
    EtcdService::connect(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_lease_from_outside_fires_lost_and_done() {
    let Some(endpoints) = common::shared("revoking_the_lease_from_outside_fires_lost_and_done")
    else {
        return;
    };
    let prefix = common::unique_prefix("revoke");
    let service = service(&endpoints, &prefix).await;
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap();
    let done = session.done();
    let (mut a, mut b) = (session.new_locker("a"), session.new_locker("b"));
    let (held_a, held_b) = (a.lock().await.unwrap(), b.lock().await.unwrap());

    let mut raw = common::raw(&endpoints).await;
    let (keys, records) = common::lock_keys(&mut raw, &prefix).await;
    let lease = keys[0].lease();
    assert!(
        keys.len() == 2 && keys.iter().all(|kv| kv.lease() == lease),
        "all keys of a session share its lease"
    );
    assert_eq!(records.len(), 2, "a lock-delay record beside each key");
    raw.lease_revoke(lease).await.unwrap();

    for held in [&held_a, &held_b] {
        tokio::time::timeout(Duration::from_secs(5), held.lost())
            .await
            .expect("lost() after the lease was revoked");
        assert!(held.is_lost());
    }
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("done() after the lease was revoked");
    assert!(matches!(a.unlock().await, Err(Error::AlreadyClosed(_))));
    // The holder knows now: its records go, and with them the lock-delay of others.
    assert!(
        keys_become(&mut raw, &prefix, 0, Duration::from_secs(2)).await,
        "the records of the lost holds stayed"
    );
    service.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_lock_key_from_outside_fires_lost_for_that_lock_only() {
    let Some(endpoints) =
        common::shared("deleting_the_lock_key_from_outside_fires_lost_for_that_lock_only")
    else {
        return;
    };
    let prefix = common::unique_prefix("delete");
    let service = service(&endpoints, &prefix).await;
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap();
    let (mut a, mut b) = (
        session.new_locker("victim"),
        session.new_locker("bystander"),
    );
    let (held_a, held_b) = (a.lock().await.unwrap(), b.lock().await.unwrap());

    let mut raw = common::raw(&endpoints).await;
    let victim = format!("{prefix}victim/");
    raw.delete(
        victim.as_str(),
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();

    tokio::time::timeout(Duration::from_secs(5), held_a.lost())
        .await
        .expect("lost() after the key was deleted");
    assert!(
        !held_b.is_lost(),
        "another lock of the same session was reported lost"
    );
    assert!(!session.done().is_done(), "the session ended");
    assert!(matches!(a.unlock().await, Err(Error::NotHeld)));
    // The lock can be taken again, with a higher token.
    let again = a.lock().await.unwrap();
    assert!(again.fencing_token() > held_a.fencing_token());
    a.unlock().await.unwrap();
    b.unlock().await.unwrap();
    service.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_and_close_leave_no_keys_or_leases() {
    let Some(endpoints) = common::shared("unlock_and_close_leave_no_keys_or_leases") else {
        return;
    };
    let prefix = common::unique_prefix("clean");
    let service = service(&endpoints, &prefix).await;
    let mut raw = common::raw(&endpoints).await;
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut holder = session.new_locker("x");
    let first = holder.lock().await.unwrap();
    let other = service
        .new_session(
            SessionConfig::new(Duration::from_secs(10)).with_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let mut waiter = other.new_locker("x");
    assert!(matches!(waiter.lock().await, Err(Error::Timeout(_))));
    // The timed-out attempt hands its key and record to a background removal (the call does
    // not wait for it): gone within a second; the holder's key and record stay.
    assert!(
        keys_become(&mut raw, &prefix, 2, Duration::from_secs(1)).await,
        "the timed-out waiter's key was not removed within 1 s"
    );
    holder.unlock().await.unwrap();
    assert_eq!(
        keys_under(&mut raw, &prefix).await,
        0,
        "unlock left the key or its record behind"
    );
    let guard = holder.lock().await.unwrap();
    let lease = common::lock_keys(&mut raw, &prefix).await.0[0].lease();
    // The last handles of the session (an unlocked `Held` is one too): revoked in the background.
    drop((first, guard, holder, session));
    assert!(
        keys_become(&mut raw, &prefix, 0, Duration::from_secs(5)).await,
        "a dropped session's keys were not removed"
    );
    // The keys go with the hold's own removal; the lease with the session's revoke, another
    // background task that may finish a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut ttl = raw.lease_time_to_live(lease, None).await.unwrap().ttl();
    while ttl != -1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ttl = raw.lease_time_to_live(lease, None).await.unwrap().ttl();
    }
    assert_eq!(
        ttl, -1,
        "a dropped session's lease was not revoked within 5 s"
    );
    service.close().await.unwrap();
}

/// Whether etcd holds `count` keys under `prefix` (lock keys and records) within `limit`
/// (polled every 20 ms).
async fn keys_become(
    raw: &mut etcd_client::Client,
    prefix: &str,
    count: i64,
    limit: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if keys_under(raw, prefix).await == count {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many keys etcd holds under `prefix`.
async fn keys_under(raw: &mut etcd_client::Client, prefix: &str) -> i64 {
    raw.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .unwrap()
    .count()
}

/// A `lock()` made right after the session's lease was revoked on the server — before any
/// keep-alive or watch event told the session — fails as a call of an ended session does
/// (`AlreadyClosed`), and the session ends: etcd's refusal ("requested lease not found") is
/// not passed on as a backend error that retrying would repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_a_lease_revoked_behind_the_sessions_back_says_the_session_ended() {
    let Some(endpoints) = common::shared("lock_on_a_revoked_lease") else {
        return;
    };
    let prefix = common::unique_prefix("revoked-lock");
    let service = service(&endpoints, &prefix).await;
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut raw = common::raw(&endpoints).await;
    // The session's lease, read from the key a first lock binds to it.
    let held = session.new_locker("a").lock().await.unwrap();
    let (keys, _) = common::lock_keys(&mut raw, &prefix).await;
    let lease = keys[0].lease();
    held.unlock().await.unwrap();
    raw.lease_revoke(lease).await.unwrap();
    let got = session.new_locker("b").lock().await;
    assert!(
        matches!(got, Err(Error::AlreadyClosed(_) | Error::Canceled(_))),
        "a lock() on a revoked lease gave {got:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), session.done())
        .await
        .expect("the session ended");
}
