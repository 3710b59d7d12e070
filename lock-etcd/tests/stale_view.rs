//! A waiter's view of its lock's queue comes from a watch, and a watch can lag behind the
//! cluster (served by a member that is behind, or over a slow link). A waiter must not be
//! granted on that view alone: etcd may already have deleted its key (its lease revoked or
//! expired on the server) and granted the lock to the next key.

mod common;

use std::time::Duration;

use etcd_client::GetOptions;
use lock_core::SessionConfig;
use lock_etcd::{EtcdConfig, EtcdService};
use lock_testkit::proxy::Fault;

async fn service(endpoints: &str, prefix: &str) -> EtcdService {
    let uri = format!("etcd:{endpoints}?prefix={prefix}&request-timeout=5s");
    EtcdService::connect(EtcdConfig::from_uri(&uri).unwrap())
        .await
        .unwrap()
}

/// The keys under `prefix`, oldest first: (key, create revision).
async fn keys(raw: &mut etcd_client::Client, prefix: &str) -> Vec<(String, i64)> {
    let options = GetOptions::new().with_prefix().with_sort(
        etcd_client::SortTarget::Create,
        etcd_client::SortOrder::Ascend,
    );
    let resp = raw.get(prefix, Some(options)).await.unwrap();
    resp.kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.create_revision()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_view_lags_is_not_granted_a_key_etcd_deleted() {
    common::log();
    let Some(endpoints) = common::shared("waiter_whose_view_lags") else {
        return;
    };
    let prefix = common::unique_prefix("stale-view");
    let proxy = common::first_member_proxy(&endpoints).await;
    let direct = service(&endpoints, &prefix).await;
    let lagging = service(&proxy.url(), &prefix).await;
    let mut raw = common::raw(&endpoints).await;
    let config = SessionConfig::new(Duration::from_secs(10));

    // A holds; B queues behind it through the link that will lag.
    let a = direct.new_session(config).await.unwrap();
    let held = a.new_locker("x").lock().await.unwrap();
    let b = lagging.new_session(config).await.unwrap();
    let waiter = b.new_locker("x");
    let waiting = tokio::spawn(async move { waiter.lock().await.map(|h| h.fencing_token()) });
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

    // B's view now lags by 150 ms (less than what its health probes call a stalled member).
    // A unlocks; 50 ms later B's key is deleted behind its back (as etcd does when it revokes
    // a lease), and C takes the lock: etcd says C holds it.
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
        .expect("C is granted the lock once B's key is gone")
        .unwrap();
    assert!(c_held.fencing_token() as i64 > b_rev);

    // B learns of A's release before it learns its own key is gone. It must not be granted.
    let outcome = tokio::time::timeout(Duration::from_secs(8), waiting)
        .await
        .expect("B's lock() neither returned nor failed")
        .unwrap();
    if let Ok(token) = outcome {
        panic!(
            "B was granted the lock (token {token}) on a lagging view, although etcd had deleted \
             its key and C held the lock (token {})",
            c_held.fencing_token()
        );
    }
    proxy.set(Fault::None);
    c_held.unlock().await.unwrap();
    direct.close().await.unwrap();
    lagging.close().await.unwrap();
}
