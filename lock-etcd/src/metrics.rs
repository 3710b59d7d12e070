//! The etcd backend's own metrics (feature `metrics`; see `lock::metrics` for the table):
//! keep-alive round trips and failures. Without the feature these are empty functions.

use std::time::Duration;

/// A keep-alive answered `rtt` after it was sent.
#[cfg(feature = "metrics")]
pub(crate) fn keepalive_rtt(rtt: Duration) {
    metrics::histogram!("lock_keepalive_rtt_seconds", "backend" => "etcd")
        .record(rtt.as_secs_f64());
}

/// The keep-alive stream failed: `stream_lost`, `open_failed` or `member_silent`.
#[cfg(feature = "metrics")]
pub(crate) fn keepalive_failure(kind: &'static str) {
    metrics::counter!("lock_keepalive_failures_total", "backend" => "etcd", "kind" => kind)
        .increment(1);
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn keepalive_rtt(_rtt: Duration) {}

#[cfg(not(feature = "metrics"))]
pub(crate) fn keepalive_failure(_kind: &'static str) {}
