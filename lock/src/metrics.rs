//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`, off by
//! default): a [`Layer`] the application applies to the services it
//! wants measured. Enabling the feature changes nothing by itself — a library deep in a
//! dependency graph that enables it does not instrument anybody's services.
//!
//! The layer reports to whatever recorder the program installed (a Prometheus exporter,
//! StatsD, …); with no recorder installed the calls do nothing. Each locker looks its metrics
//! up once, when it is made (a lock operation allocates nothing for them), so install the
//! recorder before making lockers. Every metric is labelled `backend` (the name given to
//! [`Metrics::new`], usually the connection string's scheme). Lock ids are not labels — they
//! can be unbounded — unless [`Metrics::with_id_labels`] turns them on.
//!
//! A hold is counted once, when it ends for the application: by `unlock()` (`unlocked`), or
//! when the guard is dropped, with the cause the backend recorded if the hold was lost before
//! (`lock_losses_total{reason="session_gone"}`, …). No task is spawned per hold.
//!
//! The metrics, their types and labels are listed in the guide: [`crate::guide`], "Metrics".
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> lock::Result<()> {
//! // Install a recorder first (here the Prometheus exporter's, rendered as text).
//! let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
//! let handle = recorder.handle();
//! metrics::set_global_recorder(recorder).expect("no recorder installed yet");
//!
//! let service = lock::new("local:").await?.layer(lock::metrics::Metrics::new("local"));
//! let session = service.new_session(lock::SessionConfig::new(std::time::Duration::from_secs(10))).await?;
//! let mut held = session.new_locker("jobs/report").lock().await?;
//! held.unlock().await?;
//! assert!(handle.render().contains("lock_acquisitions_total{backend=\"local\",op=\"lock\"} 1"));
//! assert!(handle.render().contains("lock_losses_total{backend=\"local\",reason=\"unlocked\"} 1"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Label};
use lock_core::backend::{self, Hold, Layer, OpFuture, Party};
use lock_core::{Done, Error, LossCause, Result};

/// The metrics layer: apply it with [`Service::layer`](crate::Service::layer).
#[derive(Debug, Clone)]
pub struct Metrics {
    backend: Arc<str>,
    id_labels: bool,
}

impl Metrics {
    /// A layer whose metrics are labelled `backend = name` (e.g. `"etcd"`).
    pub fn new(name: &str) -> Self {
        Metrics {
            backend: Arc::from(name),
            id_labels: false,
        }
    }

    /// Adds the lock id as label `id` to the lock-level metrics (default off: ids can be
    /// unbounded, and every id is a time series of its own).
    #[must_use]
    pub fn with_id_labels(mut self, on: bool) -> Self {
        self.id_labels = on;
        self
    }
}

impl Layer for Metrics {
    fn session(&self, session: Arc<dyn backend::Session>) -> Arc<dyn backend::Session> {
        let open = gauge!("lock_sessions", "backend" => self.backend.to_string());
        open.increment(1.0);
        Arc::new(MeteredSession {
            inner: session,
            open,
            ended: AtomicBool::new(false),
        })
    }

    fn locker(&self, locker: Arc<dyn backend::Locker>) -> Arc<dyn backend::Locker> {
        let mut labels = vec![Label::new("backend", self.backend.to_string())];
        if self.id_labels {
            labels.push(Label::new("id", locker.id().to_owned()));
        }
        Arc::new(MeteredLocker {
            metrics: Handles::new(&labels),
            inner: locker,
            labels,
            ends: Default::default(),
            hold: Mutex::new(None),
        })
    }
}

/// A session, counted in `lock_sessions` until it is closed or dropped.
struct MeteredSession {
    inner: Arc<dyn backend::Session>,
    open: Gauge,
    ended: AtomicBool,
}

impl MeteredSession {
    fn ended(&self) {
        if !self.ended.swap(true, Relaxed) {
            self.open.decrement(1.0);
        }
    }
}

impl fmt::Debug for MeteredSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl backend::Session for MeteredSession {
    fn new_locker(&self, id: &str, party: Party) -> Arc<dyn backend::Locker> {
        self.inner.new_locker(id, party)
    }

    fn done(&self) -> Option<Done> {
        self.inner.done()
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        self.ended();
        self.inner.close()
    }
}

impl Drop for MeteredSession {
    fn drop(&mut self) {
        self.ended();
    }
}

/// A locker's metrics, looked up once when the locker is made.
struct Handles {
    acquired_lock: Counter,
    acquired_try_lock: Counter,
    try_lock_busy: Counter,
    timeouts: Counter,
    errors_lock: Counter,
    errors_try_lock: Counter,
    errors_unlock: Counter,
    wait: Histogram,
    holds: Gauge,
    waiters: Gauge,
}

impl Handles {
    fn new(labels: &[Label]) -> Self {
        let with = |key: &'static str, value: &'static str| {
            let mut labels = labels.to_vec();
            labels.push(Label::new(key, value));
            labels
        };
        Handles {
            acquired_lock: counter!("lock_acquisitions_total", with("op", "lock")),
            acquired_try_lock: counter!("lock_acquisitions_total", with("op", "try_lock")),
            try_lock_busy: counter!("lock_try_lock_busy_total", labels.to_vec()),
            timeouts: counter!("lock_timeouts_total", labels.to_vec()),
            errors_lock: counter!("lock_errors_total", with("op", "lock")),
            errors_try_lock: counter!("lock_errors_total", with("op", "try_lock")),
            errors_unlock: counter!("lock_errors_total", with("op", "unlock")),
            wait: histogram!("lock_wait_seconds", labels.to_vec()),
            holds: gauge!("lock_holds", labels.to_vec()),
            waiters: gauge!("lock_waiters", labels.to_vec()),
        }
    }
}

/// The reasons a hold ends, as labels, in the order of [`reason`].
const REASONS: [&str; 7] = [
    "unlocked",
    "session_ended",
    "service_closed",
    "deadline_passed",
    "session_gone",
    "removed",
    "unknown",
];

/// The index in [`REASONS`] of a loss cause.
fn reason(cause: LossCause) -> usize {
    match cause {
        LossCause::Unlocked => 0,
        LossCause::SessionEnded => 1,
        LossCause::ServiceClosed => 2,
        LossCause::DeadlinePassed => 3,
        LossCause::SessionGone => 4,
        LossCause::Removed => 5,
        _ => 6,
    }
}

struct MeteredLocker {
    inner: Arc<dyn backend::Locker>,
    metrics: Handles,
    labels: Vec<Label>,
    /// Per reason: `lock_losses_total` and `lock_hold_seconds`, looked up at its first use.
    ends: [OnceLock<(Counter, Histogram)>; 7],
    /// The hold the application has, and since when.
    hold: Mutex<Option<(Hold, Instant)>>,
}

impl fmt::Debug for MeteredLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl MeteredLocker {
    fn hold(&self) -> std::sync::MutexGuard<'_, Option<(Hold, Instant)>> {
        self.hold.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn granted(&self, acquisitions: &Counter, hold: &Hold) {
        acquisitions.increment(1);
        self.metrics.holds.increment(1.0);
        *self.hold() = Some((hold.clone(), Instant::now()));
    }

    /// How the hold with `token` ends if it is released now: lost before (the backend's
    /// cause), or unlocked.
    fn cause(&self, token: u64) -> LossCause {
        let hold = self.hold();
        let lost = hold.as_ref().filter(|(h, _)| h.fencing_token() == token);
        lost.and_then(|(h, _)| h.loss())
            .map_or(LossCause::Unlocked, |l| l.cause())
    }

    /// Counts the end of the hold with `token`, for `cause`.
    fn ended(&self, token: u64, cause: LossCause) {
        let mut hold = self.hold();
        let Some((_, since)) = hold.take_if(|(h, _)| h.fencing_token() == token) else {
            return;
        };
        drop(hold);
        self.metrics.holds.decrement(1.0);
        let at = reason(cause);
        let (losses, held_for) = self.ends[at].get_or_init(|| {
            let mut labels = self.labels.clone();
            labels.push(Label::new("reason", REASONS[at]));
            let losses = counter!("lock_losses_total", labels.clone());
            (losses, histogram!("lock_hold_seconds", labels))
        });
        losses.increment(1);
        held_for.record(since.elapsed().as_secs_f64());
    }

    fn failed(&self, errors: &Counter, e: &Error) {
        match e {
            Error::Timeout(_) => self.metrics.timeouts.increment(1),
            _ => errors.increment(1),
        }
    }
}

/// Takes one waiter off the gauge however `lock()` ends (granted, failed or dropped), and
/// counts a timeout when the handles dropped the attempt because the session's timeout passed.
struct Waiting<'a> {
    locker: &'a MeteredLocker,
    since: Instant,
    finished: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let metrics = &self.locker.metrics;
        metrics.waiters.decrement(1.0);
        let limit = self.locker.inner.party().timeout();
        if !self.finished && limit.is_some_and(|limit| self.since.elapsed() >= limit) {
            metrics.timeouts.increment(1);
        }
    }
}

impl backend::Locker for MeteredLocker {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        OpFuture::boxed(async move {
            self.metrics.waiters.increment(1.0);
            let mut waiting = Waiting {
                locker: self,
                since: Instant::now(),
                finished: false,
            };
            let result = self.inner.lock().await;
            waiting.finished = true;
            match &result {
                Ok(hold) => {
                    let waited = waiting.since.elapsed().as_secs_f64();
                    self.metrics.wait.record(waited);
                    self.granted(&self.metrics.acquired_lock, hold);
                }
                Err(e) => self.failed(&self.metrics.errors_lock, e),
            }
            result
        })
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        OpFuture::boxed(async move {
            let result = self.inner.try_lock().await;
            match &result {
                Ok(Some(hold)) => self.granted(&self.metrics.acquired_try_lock, hold),
                Ok(None) => self.metrics.try_lock_busy.increment(1),
                Err(e) => self.failed(&self.metrics.errors_try_lock, e),
            }
            result
        })
    }

    fn unlock(&self, token: u64) -> OpFuture<'_, Result<()>> {
        self.ended(token, self.cause(token));
        OpFuture::boxed(async move {
            let result = self.inner.unlock(token).await;
            if let Err(e) = &result {
                self.failed(&self.metrics.errors_unlock, e);
            }
            result
        })
    }

    fn unlock_now(&self, token: u64) -> Option<Result<()>> {
        let cause = self.cause(token);
        let result = self.inner.unlock_now(token)?;
        self.ended(token, cause);
        if let Err(e) = &result {
            self.failed(&self.metrics.errors_unlock, e);
        }
        Some(result)
    }

    fn release(&self, token: u64) {
        self.ended(token, self.cause(token));
        self.inner.release(token);
    }

    fn id(&self) -> &str {
        self.inner.id()
    }

    fn party(&self) -> &Party {
        self.inner.party()
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.inner.as_any()
    }
}
