//! The application API's traps that show on etcd: a `with_lock` closure that finished under
//! the lock keeps its result when the release after it fails (the lock then ends with the
//! session's TTL, or the background removal once etcd answers again); a TTL etcd cannot grant
//! exactly is refused, not cut; a backend error says what went wrong once, and its chain
//! reaches the client library's own error.

mod common;

use std::time::Duration;

use lock_core::{Error, ErrorKind, SessionConfig};
use lock_testkit::proxy::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_keeps_the_result_when_the_release_after_it_fails() {
    let Some(endpoints) = common::shared("with_lock_release") else {
        return;
    };
    let prefix = common::unique_prefix("with-lock");
    let proxy = common::first_member_proxy(&endpoints).await;
    let service = common::service(&proxy.url(), &prefix, "").await;
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap();
    let result = session
        .new_locker("x")
        .with_lock(|_| async {
            // The work is done; etcd becomes unreachable before the release.
            proxy.set(Fault::Blackhole);
            Ok::<_, Error>("written")
        })
        .await;
    assert_eq!(result.unwrap(), "written");
    proxy.set(Fault::None);
    service.close().await.unwrap();
}

/// etcd leases have whole-second TTLs: 2.9 s was silently cut to 2 s.
#[tokio::test]
async fn a_ttl_that_is_not_whole_seconds_is_refused() {
    let Some(endpoints) = common::shared("fractional_ttl") else {
        return;
    };
    let service = common::service(&endpoints, &common::unique_prefix("ttl"), "").await;
    let err = service
        .new_session(SessionConfig::new(Duration::from_millis(2900)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    let text = err.to_string();
    assert!(text.contains("2.9s") && text.contains("2s or 3s"), "{text}");
    let whole = service
        .new_session(SessionConfig::new(Duration::from_secs(3)))
        .await
        .unwrap();
    whole.close().await.unwrap();
    service.close().await.unwrap();
}

/// `Error::Backend` printed its source in its own message and returned it from `source()`, so
/// a chain printer (anyhow's `{:#}`) showed it twice; and a private wrapper hid the client
/// library's error from `downcast_ref`.
#[tokio::test]
async fn a_backend_error_chain_says_it_once_and_reaches_the_client_error() {
    let Some(endpoints) = common::shared("error_chain") else {
        return;
    };
    // The shared cluster has no authentication: etcd refuses to authenticate anyone.
    let uri = format!("etcd:{endpoints}?username=nobody&password=secret-pw");
    let config = lock_etcd::EtcdConfig::from_uri(&uri).unwrap();
    let err = lock_etcd::EtcdService::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err:?}");
    let mut chain = vec![err.to_string()];
    let mut found = false;
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        chain.push(e.to_string());
        found |= e.downcast_ref::<etcd_client::Error>().is_some();
        source = e.source();
    }
    for (i, link) in chain.iter().enumerate() {
        for later in &chain[i + 1..] {
            assert!(
                !link.contains(later.as_str()),
                "{link:?} repeats its source {later:?}: {chain:?}"
            );
        }
    }
    assert!(found, "no etcd_client::Error in the chain {chain:?}");
}
