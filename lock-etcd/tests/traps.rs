//! The application API's traps that show on etcd: a `with_lock` closure that finished under
//! the lock keeps its result when the release after it fails (the lock then ends with the
//! session's TTL, or the background removal once etcd answers again); a TTL etcd cannot grant
//! exactly is refused, not cut.

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
