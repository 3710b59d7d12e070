//! A waiter's view of its lock's queue comes from a watch, and a watch can lag behind the
//! cluster (served by a member that is behind, or over a slow link): etcd may already have
//! deleted its key (its lease revoked or expired on the server) and be about to grant the lock
//! to the next key. The two must never hold the lock at once.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{Lost, SessionConfig};
use lock_etcd::{EtcdConfig, EtcdService};
use lock_testkit::proxy::Fault;

async fn service(endpoints: &str, prefix: &str, options: &str) -> EtcdService {
    let uri = format!("etcd:{endpoints}?prefix={prefix}&request-timeout=5s{options}");
    EtcdService::connect(EtcdConfig::from_uri(&uri).unwrap())
        .await
        .unwrap()
}

/// The lock keys under `prefix` (not the lock-delay records), oldest first: (key, create
/// revision).
async fn keys(raw: &mut etcd_client::Client, prefix: &str) -> Vec<(String, i64)> {
    let (mut keys, _) = common::lock_keys(raw, prefix).await;
    keys.sort_by_key(|kv| kv.create_revision());
    keys.iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.create_revision()))
        .collect()
}

/// A holds; B queues behind it over a link that then lags by 150 ms (less than what its health
/// probes call a stalled member); A unlocks, and 50 ms later B's key is deleted behind its back
/// (as etcd does when it revokes a lease); C asks for the lock. B learns of A's release before
/// it learns that its own key is gone.
///
/// With the lock-delay (the default), B may be granted on its lagging view, but its record
/// keeps C waiting until B must know: no two holders. Without it (`lock-delay=0`), B confirms
/// with etcd that its key still exists before it takes the lock: B is not granted at all.
async fn a_waiter_whose_view_lags(options: &str) {
    let Some(endpoints) = common::shared("waiter_whose_view_lags") else {
        return;
    };
    let prefix = common::unique_prefix("stale-view");
    let proxy = common::first_member_proxy(&endpoints).await;
    let direct = service(&endpoints, &prefix, options).await;
    let lagging = service(&proxy.url(), &prefix, options).await;
    let mut raw = common::raw(&endpoints).await;
    let config = SessionConfig::new(Duration::from_secs(10));

    // A holds; B queues behind it through the link that will lag.
    let a = direct.new_session(config).await.unwrap();
    let held = a.new_locker("x").lock().await.unwrap();
    let b = lagging.new_session(config).await.unwrap();
    let mut waiter = b.new_locker("x");
    let b_hold: Arc<Mutex<Option<Lost>>> = Arc::default();
    let slot = b_hold.clone();
    let waiting = tokio::spawn(async move {
        let held = waiter.lock().await?;
        *slot.lock().unwrap() = Some(held.lost());
        Ok::<_, lock_core::Error>((held.fencing_token(), held, waiter))
    });
    let mut queued = Vec::new();
    for _ in 0..100 {
        queued = keys(&mut raw, &prefix).await;
        if queued.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queued.len(), 2, "B did not queue: {queued:?}");
    let (b_key, b_rev) = queued[1].clone();
    tokio::time::sleep(Duration::from_millis(300)).await; // B has read its queue

    proxy.set(Fault::Latency(Duration::from_millis(150)));
    held.unlock().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let deleted = raw.delete(b_key.as_str(), None).await.unwrap();
    assert_eq!(
        deleted.deleted(),
        1,
        "B's key {b_key} was not there to delete"
    );
    let c = direct.new_session(config).await.unwrap();
    let c_held = tokio::time::timeout(Duration::from_secs(5), c.new_locker("x").lock())
        .await
        .expect("C is granted the lock once B's key is gone and B knows")
        .unwrap();
    // Whatever B was granted, it knew it had lost it before C was granted.
    let b_knew = b_hold.lock().unwrap().as_ref().map(Lost::is_lost);
    assert!(c_held.fencing_token() as i64 > b_rev);
    assert_ne!(
        b_knew,
        Some(false),
        "C was granted (token {}) while B, granted on a lagging view, still believed it held \
         the lock",
        c_held.fencing_token()
    );

    let outcome = tokio::time::timeout(Duration::from_secs(8), waiting)
        .await
        .expect("B's lock() neither returned nor failed")
        .unwrap();
    if options.contains("lock-delay=0") {
        if let Ok((token, ..)) = outcome {
            panic!(
                "B was granted the lock (token {token}) on a lagging view, although etcd had \
                 deleted its key and C held the lock (token {})",
                c_held.fencing_token()
            );
        }
    }
    proxy.set(Fault::None);
    c_held.unlock().await.unwrap();
    direct.close().await.unwrap();
    lagging.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_view_lags_never_holds_beside_the_next_holder() {
    common::log();
    a_waiter_whose_view_lags("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_lock_delay_a_waiter_whose_view_lags_is_not_granted_a_key_etcd_deleted() {
    common::log();
    a_waiter_whose_view_lags("&lock-delay=0").await;
}
