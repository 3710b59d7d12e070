//! Helpers shared by the etcd integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use lock_tools::etcd::{binaries, Cluster, ClusterSpec};

/// Logs what the backend does, as `RUST_LOG` says (`RUST_LOG=lock_etcd=debug`), into the
/// test's output.
pub fn log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The shared cluster's endpoints (skip or fail as `lock_tools::etcd` says).
pub fn shared(test: &str) -> Option<String> {
    lock_tools::etcd::shared_endpoints(test)
}

/// A private cluster for tests that break or reconfigure it.
pub fn own_cluster(test: &str, spec: ClusterSpec) -> Option<Cluster> {
    let bins = binaries(test)?;
    Some(Cluster::start(&bins, &spec).unwrap_or_else(|e| panic!("{test}: starting etcd: {e}")))
}

/// A raw etcd client, to act "from outside" on the keys and leases the backend made.
pub async fn raw(endpoints: &str) -> etcd_client::Client {
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    etcd_client::Client::connect(endpoints, None)
        .await
        .expect("raw etcd client")
}

/// A fault proxy in front of the first member of `endpoints`.
pub async fn first_member_proxy(endpoints: &str) -> lock_testkit::proxy::FaultProxy {
    lock_testkit::proxy::FaultProxy::in_front_of_first(endpoints)
        .await
        .unwrap()
}

/// The keys under `prefix`: the lock keys (bound to a session's lease) and the lock-delay
/// records beside them (bound to no lease), each in key order.
pub async fn lock_keys(
    raw: &mut etcd_client::Client,
    prefix: &str,
) -> (Vec<etcd_client::KeyValue>, Vec<etcd_client::KeyValue>) {
    let all = raw
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("reading the keys");
    all.kvs().iter().cloned().partition(|kv| kv.lease() != 0)
}

/// A prefix no other test run uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-{name}-{}-{nanos:x}/", std::process::id())
}

/// Waits until `f` returns true, polling every 20 ms, at most `limit`.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// Revokes, with a client of its own, the lease of the oldest key of `id`'s queue under the
/// default prefix: the holder's session lease, ended as etcd ends it when it expires or
/// revokes it early.
pub async fn revoke_holders_lease(endpoints: String, id: String) -> Result<(), String> {
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    let mut raw = etcd_client::Client::connect(endpoints, None)
        .await
        .map_err(|e| e.to_string())?;
    let queue = lock_etcd::queue_prefix(lock_etcd::DEFAULT_PREFIX, &id);
    let first = etcd_client::GetOptions::new()
        .with_prefix()
        .with_sort(
            etcd_client::SortTarget::Create,
            etcd_client::SortOrder::Ascend,
        )
        .with_limit(1);
    let keys = raw
        .get(queue, Some(first))
        .await
        .map_err(|e| e.to_string())?;
    let holder = keys.kvs().first().ok_or("nobody holds the lock")?;
    raw.lease_revoke(holder.lease())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// An `etcd:` service on `endpoints` with its own key `prefix`, a 2 s request timeout and
/// extra connection-string `options` (`&lock-delay=0`, or empty).
pub async fn service(endpoints: &str, prefix: &str, options: &str) -> lock_etcd::EtcdService {
    let uri = format!("etcd:{endpoints}?prefix={prefix}&request-timeout=2s{options}");
    lock_etcd::EtcdService::connect(lock_etcd::EtcdConfig::from_uri(&uri).unwrap())
        .await
        .unwrap()
}
