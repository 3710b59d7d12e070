//! Sessions are leases: TTL rules, one keep-alive stream for all sessions of a service.

mod common;

use std::time::Duration;

use lock_core::{Error, SessionConfig};
use lock_etcd::{EtcdConfig, EtcdService};

async fn service(endpoints: &str) -> EtcdService {
    EtcdService::connect(EtcdConfig::from_uri(&format!("etcd:{endpoints}")).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_below_a_second_or_the_server_minimum_are_invalid() {
    let Some(endpoints) = common::shared("ttls_below_the_server_minimum_are_invalid") else {
        return;
    };
    let service = service(&endpoints).await;
    // A fraction of a second is refused too (`tests/traps.rs`), never cut.
    for ttl in [
        Duration::from_millis(500),
        Duration::from_secs(1),
        Duration::from_millis(2700),
    ] {
        let err = service
            .new_session(SessionConfig::new(ttl))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{ttl:?}: {err:?}");
    }
    service.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_share_one_keep_alive_stream() {
    let Some(endpoints) = common::shared("many_sessions_share_one_keep_alive_stream") else {
        return;
    };
    let service = service(&endpoints).await;
    let prefix = common::unique_prefix("streams");
    let mut held = Vec::new();
    let mut sessions = Vec::new();
    for n in 0..50 {
        let session = service
            .new_session(SessionConfig::new(Duration::from_secs(2)))
            .await
            .unwrap();
        let mut locker = session.new_locker(&format!("{prefix}{n}"));
        held.push((locker.lock().await.unwrap(), locker));
        sessions.push(session);
    }
    tokio::time::sleep(Duration::from_secs(5)).await; // 2.5 TTLs
    assert!(
        held.iter().all(|(h, _)| !h.is_lost()),
        "a lock was lost although its session was kept alive"
    );
    assert_eq!(
        service.keep_alive_streams_opened(),
        1,
        "every session must share one keep-alive stream"
    );
    service.close().await.unwrap();
    assert!(held.iter().all(|(h, _)| h.is_lost()));
}

/// etcd before 3.5.3 can answer the first keep-alive of a lease granted moments ago with TTL 0
/// when the member serving the keep-alive stream has not applied the grant yet (etcd issue
/// 13675). A fresh service opens its keep-alive stream right after its first grant, so this is
/// where it shows: one such answer must not end the session (the cluster is asked again).
/// `LOCK_FRESH_SESSIONS` sets how many fresh services to try (default 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_sessions_are_not_falsely_lost() {
    let Some(endpoints) = common::shared("fresh_sessions_are_not_falsely_lost") else {
        return;
    };
    let total: usize = std::env::var("LOCK_FRESH_SESSIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400);
    const PARALLEL: usize = 8;
    let mut tasks = Vec::new();
    for worker in 0..PARALLEL {
        let endpoints = endpoints.clone();
        tasks.push(tokio::spawn(async move {
            let mut lost = Vec::new();
            for n in (worker..total).step_by(PARALLEL) {
                let service = service(&endpoints).await;
                let session = service
                    .new_session(SessionConfig::new(Duration::from_secs(10)))
                    .await
                    .unwrap();
                // The keep-alive stream opens, and its first answer arrives, within this.
                tokio::time::sleep(Duration::from_millis(150)).await;
                if session.done().is_done() {
                    lost.push(n);
                }
                let _ = service.close().await;
            }
            lost
        }));
    }
    let mut lost = Vec::new();
    for task in tasks {
        lost.extend(task.await.unwrap());
    }
    assert!(
        lost.is_empty(),
        "{} of {total} fresh sessions (TTL 10 s) ended within 150 ms of starting: {lost:?}",
        lost.len()
    );
}
