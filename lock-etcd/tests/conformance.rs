//! The `lock` conformance suite against `etcd:` on the cluster `cargo xtask test` starts —
//! the same functions `local:` runs, unchanged. The harness declares what a distributed lock
//! promises (the defaults: shared across processes, FIFO, leases) and lets the suite put a
//! service behind fault proxies, one per member.

use std::net::SocketAddr;
use std::time::Duration;

mod common;

use lock_etcd as _; // links the backend, so `etcd:` is registered
use lock_testkit::Harness;

fn etcd() -> Option<Harness> {
    let endpoints = lock_tools::etcd::shared_endpoints("etcd conformance")?;
    let members: Vec<SocketAddr> = endpoints
        .split(',')
        .map(|url| {
            let addr = url.trim_start_matches("http://");
            addr.parse()
                .unwrap_or_else(|e| panic!("endpoint `{url}` is not http://IP:PORT: {e}"))
        })
        .collect();
    // A 5 s TTL: the whole suite runs at once next to a 3-member cluster on two cores, and a
    // keep-alive answered later than TTL − margin rightly ends the session.
    let ttl = Duration::from_secs(5);
    let direct = endpoints.clone();
    let harness = Harness::from_uri(format!("etcd:{endpoints}"))
        .with_ttl(ttl)
        .with_lock_delay(ttl) // `lock-delay=auto`: the holder's TTL
        .with_settle(Duration::from_millis(300))
        .with_faults(members, |proxies| {
            let uri = format!("etcd:{}", proxies.join(","));
            Box::pin(async move { lock_core::new(&uri).await })
        })
        .with_lease_ending(move |id| Box::pin(common::revoke_holders_lease(direct.clone(), id)));
    Some(harness)
}

lock_testkit::conformance_tests!(etcd());
