//! Guarded writes: a transaction guarded by `lock_etcd::guard(&held)` lands only while that
//! hold exists on the server.

mod common;

use std::time::Duration;

use etcd_client::{Client, Txn, TxnOp};
use lock_core::{Held, SessionConfig};
use lock_testkit::proxy::Fault;

const TTL: Duration = Duration::from_secs(3);

/// Writes `value` to `key` under `held`'s guard; whether etcd applied it.
async fn guarded_put(raw: &mut Client, held: &Held, key: &str, value: &str) -> bool {
    let guard = lock_etcd::guard(held).expect("an etcd: hold");
    let txn = Txn::new()
        .when([guard])
        .and_then([TxnOp::put(key, value, None)]);
    raw.txn(txn).await.unwrap().succeeded()
}

async fn value(raw: &mut Client, key: &str) -> Option<String> {
    let resp = raw.get(key, None).await.unwrap();
    resp.kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_owned())
}

/// The stale holder is cut off (it still believes it holds: its deadline has not passed) and
/// its lease is revoked from outside; once another party holds the lock, the stale holder's
/// guarded write — sent over a healthy client — is refused and changes nothing, while the new
/// holder's lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holders_guarded_txn_is_refused_once_another_holds_the_lock() {
    common::log();
    let Some(endpoints) = common::shared("stale_guarded_txn") else {
        return;
    };
    let prefix = common::unique_prefix("guarded");
    let data = format!("{prefix}data");
    let proxy = common::first_member_proxy(&endpoints).await;
    let cut_off = common::service(&proxy.url(), &prefix, "").await;
    let healthy = common::service(&endpoints, &prefix, "").await;
    let mut raw = common::raw(&endpoints).await;

    let session = cut_off.new_session(SessionConfig::new(TTL)).await.unwrap();
    let stale = session.new_locker("x").lock().await.unwrap();
    assert!(guarded_put(&mut raw, &stale, &data, "first holder").await);
    assert_eq!(
        value(&mut raw, &data).await.as_deref(),
        Some("first holder")
    );

    proxy.set(Fault::Blackhole);
    let lease = raw
        .get(
            lock_etcd::queue_prefix(&prefix, "x"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap()
        .kvs()
        .iter()
        .find(|kv| kv.lease() != 0)
        .expect("the holder's key")
        .lease();
    raw.lease_revoke(lease).await.unwrap();
    // The hold is gone on the server at once: the guard refuses even before anyone else holds.
    assert!(!guarded_put(&mut raw, &stale, &data, "too early").await);

    let next_session = healthy.new_session(SessionConfig::new(TTL)).await.unwrap();
    let mut locker = next_session.new_locker("x");
    let next = tokio::time::timeout(TTL * 4, locker.lock())
        .await
        .expect("granted after the lock-delay")
        .unwrap();
    assert!(!guarded_put(&mut raw, &stale, &data, "stale holder").await);
    assert!(guarded_put(&mut raw, &next, &data, "next holder").await);
    assert_eq!(value(&mut raw, &data).await.as_deref(), Some("next holder"));

    // A released hold's guard refuses too, and so does a later hold's guard of the same
    // locker once that hold ended.
    next.unlock().await.unwrap();
    let again = locker.lock().await.unwrap();
    assert!(guarded_put(&mut raw, &again, &data, "again").await);
    let token = again.fencing_token();
    drop(again);
    let third = locker.lock().await.unwrap();
    assert!(third.fencing_token() > token);
    assert!(guarded_put(&mut raw, &third, &data, "third").await);
    third.unlock().await.unwrap();
    assert_eq!(value(&mut raw, &data).await.as_deref(), Some("third"));

    proxy.set(Fault::None);
    raw.delete(data.as_str(), None).await.unwrap();
    healthy.close().await.unwrap();
    drop(stale);
    drop(session);
}

/// A hold that is not an etcd: hold has no guard.
#[tokio::test]
async fn a_hold_of_another_backend_has_no_guard() {
    let service = lock_core::backend::service(lock_local::LocalService::new());
    let session = service.new_session(SessionConfig::default()).await.unwrap();
    let held = session.new_locker("x").lock().await.unwrap();
    assert!(lock_etcd::guard(&held).is_none());
}
