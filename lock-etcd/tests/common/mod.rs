//! Helpers shared by the etcd integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use lock_testkit::etcd::{binaries, Cluster, ClusterSpec};

/// Logs what the backend does, as `RUST_LOG` says (`RUST_LOG=lock_etcd=debug`), into the
/// test's output.
pub fn log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The shared cluster's endpoints (skip or fail as `lock_testkit::etcd` says).
pub fn shared(test: &str) -> Option<String> {
    lock_testkit::etcd::shared_endpoints(test)
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
