//! The etcd backend's keep-alive metrics, on the cluster `cargo xtask test` starts.
#![cfg(all(feature = "metrics", feature = "etcd"))]

use std::time::Duration;

use lock::SessionConfig;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_round_trips_are_measured() {
    let Some(endpoints) = lock_tools::etcd::shared_endpoints("keep_alive_round_trips_are_measured")
    else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    let service = lock::new(&format!("etcd:{endpoints}?prefix=metrics-test/"))
        .await
        .unwrap()
        .layer(lock::metrics::Metrics::new("etcd"));
    // A 2 s TTL: keep-alives go out several times a second.
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(2)))
        .await
        .unwrap();
    let mut locker = session.new_locker("x");
    let _held = locker.lock().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    locker.unlock().await.unwrap();
    service.close().await.unwrap();
    let mut rtts = 0;
    let mut grants = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let etcd = key
            .key()
            .labels()
            .any(|l| l.key() == "backend" && l.value() == "etcd");
        match (key.key().name(), value) {
            ("lock_keepalive_rtt_seconds", DebugValue::Histogram(samples)) if etcd => {
                assert!(samples.iter().all(|s| s.into_inner() < 2.0), "{samples:?}");
                rtts += samples.len();
            }
            ("lock_acquisitions_total", DebugValue::Counter(n)) if etcd => grants += n,
            _ => {}
        }
    }
    assert!(rtts >= 2, "keep-alive round trips measured: {rtts}");
    assert_eq!(grants, 1);
}
