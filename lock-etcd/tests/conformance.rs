//! The `lock` conformance suite against `etcd:` on the cluster `cargo xtask test` starts —
//! the same functions `local:` runs, unchanged.

use std::time::Duration;

use lock_etcd as _; // links the backend, so `etcd:` is registered
use lock_testkit::Harness;

fn etcd() -> Option<Harness> {
    let endpoints = lock_testkit::etcd::shared_endpoints("etcd conformance")?;
    Some(Harness::from_uri(format!("etcd:{endpoints}")).with_settle(Duration::from_millis(300)))
}

lock_testkit::conformance_tests!(etcd());
