//! Sessions are leases: TTL rules, one keep-alive stream for all sessions of a service.

mod common;

use std::time::Duration;

use lock_core::{Error, Service, SessionConfig};
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
    for ttl in [Duration::from_millis(500), Duration::from_secs(1)] {
        let err = service
            .new_session(&SessionConfig::new(ttl))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{ttl:?}: {err:?}");
    }
    // Fractional seconds are cut to whole seconds (never lengthened).
    let session = service
        .new_session(&SessionConfig::new(Duration::from_millis(2700)))
        .await
        .unwrap();
    session.close().await.unwrap();
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
            .new_session(&SessionConfig::new(Duration::from_secs(2)))
            .await
            .unwrap();
        let locker = session.new_locker(&format!("{prefix}{n}"));
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
