//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`, off by
//! default; without it nothing here exists and nothing is measured).
//!
//! Services opened with [`crate::new`] report to whatever recorder the program installed
//! (a Prometheus exporter, StatsD, …); with no recorder installed the calls do nothing. Each
//! locker looks its metrics up once, when it is made (a lock operation allocates nothing for
//! them), so install the recorder before making lockers. Every metric is labelled `backend`
//! (the connection string's scheme). Lock ids are not labels —
//! they can be unbounded — unless [`label_ids`] turns them on.
//!
//! The metrics, their types and labels are listed in the guide: [`crate::guide`], "Metrics".
//!
//! A hold's end and a session's end are observed by a small task each (on the tokio runtime
//! the grant happened on), so that losses the backend reports — a lease that expired — are
//! counted as well as unlocks. An `unlock()` through the instrumented locker counts its hold as
//! `unlocked` at once.
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
//! let service = lock::new("local:").await?;
//! let session = service.new_session(lock::SessionConfig::new(std::time::Duration::from_secs(10))).await?;
//! let held = session.new_locker("jobs/report").lock().await?;
//! held.unlock().await?;
//! tokio::task::yield_now().await; // the hold's end is counted by a task
//! assert!(handle.render().contains("lock_acquisitions_total{backend=\"local\",op=\"lock\"} 1"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Label};
use lock_core::backend::{self, OpFuture};
use lock_core::{Done, Error, LossCause, Result, Service, SessionConfig};

static LABEL_IDS: AtomicBool = AtomicBool::new(false);

/// Adds the lock id as label `id` to the lock-level metrics from now on (default off: ids can
/// be unbounded, and every id is a time series of its own).
pub fn label_ids(on: bool) {
    LABEL_IDS.store(on, Relaxed);
}

/// Wraps `service` so that it reports metrics labelled `backend = scheme`. [`crate::new`]
/// does this; use it for a service opened another way (a backend's own constructor).
pub fn instrument(scheme: &str, service: Service) -> Service {
    Service::from_backend(MeteredService {
        inner: service,
        backend: Arc::from(scheme),
    })
}

/// The snake-case label of a loss cause.
fn reason(cause: Option<LossCause>) -> &'static str {
    match cause {
        Some(LossCause::Unlocked) => "unlocked",
        Some(LossCause::SessionEnded) => "session_ended",
        Some(LossCause::ServiceClosed) => "service_closed",
        Some(LossCause::DeadlinePassed) => "deadline_passed",
        Some(LossCause::SessionGone) => "session_gone",
        Some(LossCause::Removed) => "removed",
        _ => "unknown",
    }
}

/// Runs `fut` on the current tokio runtime, if there is one (without one, the end of a hold
/// or session is not observed).
fn watch(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        drop(runtime.spawn(fut));
    }
}

struct MeteredService {
    inner: Service,
    backend: Arc<str>,
}

impl fmt::Debug for MeteredService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl backend::Service for MeteredService {
    fn new_session(
        &self,
        config: SessionConfig,
    ) -> OpFuture<'_, Result<Arc<dyn backend::Session>>> {
        OpFuture::boxed(async move {
            let session = self.inner.backend().new_session(config).await?;
            let sessions = gauge!("lock_sessions", "backend" => self.backend.to_string());
            sessions.increment(1.0);
            let done = session.done();
            watch(async move {
                done.await;
                sessions.decrement(1.0);
            });
            Ok(Arc::new(MeteredSession {
                inner: session,
                backend: self.backend.clone(),
            }) as Arc<dyn backend::Session>)
        })
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        self.inner.backend().close()
    }
}

struct MeteredSession {
    inner: Arc<dyn backend::Session>,
    backend: Arc<str>,
}

impl fmt::Debug for MeteredSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl backend::Session for MeteredSession {
    fn new_locker(&self, id: &str, session: &lock_core::Session) -> Arc<dyn backend::Locker> {
        let mut labels = vec![Label::new("backend", self.backend.to_string())];
        if LABEL_IDS.load(Relaxed) {
            labels.push(Label::new("id", id.to_owned()));
        }
        Arc::new(MeteredLocker {
            inner: self.inner.new_locker(id, session),
            metrics: Handles::new(&labels),
            labels,
            hold: Mutex::new(None),
        })
    }

    fn done(&self) -> Done {
        self.inner.done()
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        self.inner.close()
    }
}

/// A locker's metrics, looked up once when the locker is made (so a lock operation allocates
/// nothing for them): they report to the recorder installed then.
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

struct MeteredLocker {
    inner: Arc<dyn backend::Locker>,
    metrics: Handles,
    /// For the metrics of a hold's end, whose `reason` label is known only then.
    labels: Vec<Label>,
    /// The current hold, counted when it ends.
    hold: Mutex<Option<Arc<HoldStats>>>,
}

impl fmt::Debug for MeteredLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// One hold, counted once when it ends: by this locker's `unlock()` (`unlocked`, even where the
/// backend records no cause on its fast path), or else by its watcher with the backend's cause.
struct HoldStats {
    held: backend::Hold,
    since: Instant,
    labels: Vec<Label>,
    holds: ::metrics::Gauge,
    /// Set when `unlock()` takes the hold: its end is counted there.
    unlocking: AtomicBool,
    counted: AtomicBool,
}

impl HoldStats {
    fn count(&self, cause: Option<LossCause>) {
        if self.counted.swap(true, Relaxed) {
            return;
        }
        self.holds.decrement(1.0);
        let mut labels = self.labels.clone();
        labels.push(Label::new("reason", reason(cause)));
        counter!("lock_losses_total", labels.clone()).increment(1);
        histogram!("lock_hold_seconds", labels).record(self.since.elapsed().as_secs_f64());
    }

    /// The cause the backend recorded, if any.
    fn recorded(&self) -> Option<LossCause> {
        self.held
            .loss()
            .map(|l| l.cause())
            .filter(|c| *c != LossCause::Unknown)
    }
}

/// Counts the hold `unlock()` took when the call ends, however it ends (dropped too: an
/// `unlock()` that was polled has released).
struct Unlocking(Option<Arc<HoldStats>>, bool);

impl Unlocking {
    /// The release did not happen after all: the hold is current again, counted when it ends.
    fn undo(mut self, locker: &MeteredLocker) {
        if let Some(hold) = self.0.take() {
            hold.unlocking.store(false, Relaxed);
            *locker.hold() = Some(hold);
        }
    }
}

impl Drop for Unlocking {
    fn drop(&mut self) {
        if let Some(hold) = self.0.take() {
            let cause = match self.1 {
                true => Some(LossCause::Unlocked),
                false => hold.recorded(),
            };
            hold.count(cause);
        }
    }
}

/// Takes one waiter off the gauge however `lock()` ends (granted, failed or dropped).
struct Waiting(::metrics::Gauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl MeteredLocker {
    fn hold(&self) -> std::sync::MutexGuard<'_, Option<Arc<HoldStats>>> {
        self.hold.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The statistics of the hold with `token` (the current one, for `None`), taken out for
    /// its release.
    fn releasing(&self, token: Option<u64>) -> Option<Unlocking> {
        let mut hold = self.hold();
        let matches = hold
            .as_ref()
            .is_some_and(|h| token.is_none_or(|t| t == h.held.fencing_token()));
        let taken = if matches { hold.take() } else { None };
        taken.map(|hold| {
            hold.unlocking.store(true, Relaxed);
            Unlocking(Some(hold), true)
        })
    }

    /// Counts a grant and watches the hold until it ends.
    fn granted(&self, acquisitions: &Counter, held: &backend::Hold) {
        acquisitions.increment(1);
        let holds = self.metrics.holds.clone();
        holds.increment(1.0);
        let hold = Arc::new(HoldStats {
            held: held.clone(),
            since: Instant::now(),
            labels: self.labels.clone(),
            holds,
            unlocking: AtomicBool::new(false),
            counted: AtomicBool::new(false),
        });
        *self.hold() = Some(hold.clone());
        watch(async move {
            hold.held.lost().await;
            if !hold.unlocking.load(Relaxed) {
                hold.count(hold.recorded());
            }
        });
    }

    fn failed(&self, errors: &Counter, e: &Error) {
        match e {
            Error::Timeout(_) => self.metrics.timeouts.increment(1),
            _ => errors.increment(1),
        }
    }
}

impl backend::Locker for MeteredLocker {
    fn lock(&self) -> OpFuture<'_, Result<backend::Hold>> {
        OpFuture::boxed(async move {
            let waiters = self.metrics.waiters.clone();
            waiters.increment(1.0);
            let _waiting = Waiting(waiters);
            let start = Instant::now();
            let result = self.inner.lock().await;
            match &result {
                Ok(held) => {
                    self.metrics.wait.record(start.elapsed().as_secs_f64());
                    self.granted(&self.metrics.acquired_lock, held);
                }
                Err(e) => self.failed(&self.metrics.errors_lock, e),
            }
            result
        })
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<backend::Hold>>> {
        OpFuture::boxed(async move {
            let result = self.inner.try_lock().await;
            match &result {
                Ok(Some(held)) => self.granted(&self.metrics.acquired_try_lock, held),
                Ok(None) => self.metrics.try_lock_busy.increment(1),
                Err(e) => self.failed(&self.metrics.errors_try_lock, e),
            }
            result
        })
    }

    fn unlock(&self, token: Option<u64>) -> OpFuture<'_, Result<()>> {
        OpFuture::boxed(async move {
            let taken = self.releasing(token);
            let result = self.inner.unlock(token).await;
            if let Err(e) = &result {
                self.failed(&self.metrics.errors_unlock, e);
                if let Some(mut taken) = taken {
                    taken.1 = false; // ended otherwise, before: the backend's cause
                }
            }
            result
        })
    }

    fn unlock_now(&self, token: u64) -> Option<Result<()>> {
        let taken = self.releasing(Some(token));
        let Some(result) = self.inner.unlock_now(token) else {
            if let Some(taken) = taken {
                taken.undo(self); // it must wait: `unlock` counts it
            }
            return None;
        };
        if let Err(e) = &result {
            self.failed(&self.metrics.errors_unlock, e);
            if let Some(mut taken) = taken {
                taken.1 = false;
            }
        }
        Some(result)
    }

    fn release(&self, token: u64) {
        let _released = self.releasing(Some(token));
        self.inner.release(token);
    }

    fn id(&self) -> &str {
        self.inner.id()
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.inner.as_any()
    }
}
