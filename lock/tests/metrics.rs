//! The metrics a known sequence of operations reports, read back through `metrics-util`'s
//! `DebuggingRecorder` (a recorder from the `metrics` ecosystem, installed as a program would).
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::time::Duration;

use lock::metrics::Metrics;
use lock::SessionConfig;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// `name{label=value,…}` → value (counters and gauges) or sample count (histograms).
fn snapshot(recorder: &metrics_util::debugging::Snapshotter) -> HashMap<String, f64> {
    recorder
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let mut labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.key().name(), labels.join(","));
            let value = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(samples) => samples.len() as f64,
            };
            (name, value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_sequence_gives_known_numbers() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let config = SessionConfig::new(Duration::from_secs(10));
    // The feature alone measures nothing: the application chooses the layer.
    let plain = lock::new("local:").await.unwrap();
    let session = plain.new_session(config).await.unwrap();
    let held = session.new_locker("plain").lock().await.unwrap();
    held.unlock().await.unwrap();
    plain.close().await.unwrap();
    let got = snapshot(&snapshotter);
    assert!(
        got.is_empty(),
        "a service without the layer was measured: {got:#?}"
    );

    let local = lock::new("local:").await.unwrap();
    let service = local.layer(Metrics::new("local"));
    let (one, two) = (
        service.new_session(config).await.unwrap(),
        service
            .new_session(config.with_timeout(Duration::from_millis(50)))
            .await
            .unwrap(),
    );
    let (mut a, mut b) = (one.new_locker("x"), two.new_locker("x"));
    // Two locks and one try_lock granted, each unlocked.
    for _ in 0..2 {
        let _held = a.lock().await.unwrap();
        a.unlock().await.unwrap();
    }
    let held = b.try_lock().await.unwrap().unwrap();
    held.unlock().await.unwrap();
    // While a holds: b's try_lock is busy, b's lock times out.
    let _held = a.lock().await.unwrap();
    assert!(b.try_lock().await.unwrap().is_none());
    assert!(matches!(b.lock().await, Err(lock::Error::Timeout(_))));
    // a's hold ends with its session, and is counted when its guard goes.
    one.close().await.unwrap();
    drop(_held);
    // An unlock of nothing is an error.
    assert!(b.unlock().await.is_err());
    drop((b, two)); // the last handles of the session

    let got = snapshot(&snapshotter);
    let expect = [
        ("lock_acquisitions_total{backend=local,op=lock}", 3.0),
        ("lock_acquisitions_total{backend=local,op=try_lock}", 1.0),
        ("lock_try_lock_busy_total{backend=local}", 1.0),
        ("lock_timeouts_total{backend=local}", 1.0),
        ("lock_errors_total{backend=local,op=unlock}", 1.0),
        ("lock_wait_seconds{backend=local}", 3.0),
        ("lock_losses_total{backend=local,reason=unlocked}", 3.0),
        ("lock_losses_total{backend=local,reason=session_ended}", 1.0),
        ("lock_hold_seconds{backend=local,reason=unlocked}", 3.0),
        ("lock_hold_seconds{backend=local,reason=session_ended}", 1.0),
        ("lock_holds{backend=local}", 0.0),
        ("lock_waiters{backend=local}", 0.0),
        ("lock_sessions{backend=local}", 0.0),
    ];
    for (name, value) in expect {
        assert_eq!(got.get(name), Some(&value), "{name}; all: {got:#?}");
    }
    assert!(
        got.keys().all(|k| !k.contains("id=")),
        "lock ids are labels only when asked: {got:#?}"
    );

    // Asked for, the id is a label.
    let labelled = local.layer(Metrics::new("local").with_id_labels(true));
    let session = labelled.new_session(config).await.unwrap();
    let mut c = session.new_locker("jobs/report");
    let _held = c.lock().await.unwrap();
    let got = snapshot(&snapshotter);
    assert_eq!(
        got.get("lock_acquisitions_total{backend=local,id=jobs/report,op=lock}"),
        Some(&1.0),
        "{got:#?}"
    );
    assert_eq!(
        got.get("lock_sessions{backend=local}"),
        Some(&1.0),
        "{got:#?}"
    );
    service.close().await.unwrap();
}
