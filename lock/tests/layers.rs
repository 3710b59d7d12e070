//! A `Layer` wraps what is opened through the layered service, and the handles keep their
//! promises around it: one attempt at a time, the session's timeout, a release per hold.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use lock::backend::{self, Hold, Layer, OpFuture, Party};
use lock::{Error, Result, SessionConfig};

/// Counts what passes through it, and fails every other `lock()` (fault injection).
#[derive(Debug, Default)]
struct Faulty {
    sessions: AtomicUsize,
    lockers: AtomicUsize,
    attempts: Arc<AtomicUsize>,
    releases: Arc<AtomicUsize>,
}

impl Layer for Faulty {
    fn session(&self, session: Arc<dyn backend::Session>) -> Arc<dyn backend::Session> {
        self.sessions.fetch_add(1, SeqCst);
        session
    }

    fn locker(&self, locker: Arc<dyn backend::Locker>) -> Arc<dyn backend::Locker> {
        self.lockers.fetch_add(1, SeqCst);
        Arc::new(FaultyLocker {
            inner: locker,
            attempts: self.attempts.clone(),
            releases: self.releases.clone(),
        })
    }
}

#[derive(Debug)]
struct FaultyLocker {
    inner: Arc<dyn backend::Locker>,
    attempts: Arc<AtomicUsize>,
    releases: Arc<AtomicUsize>,
}

impl backend::Locker for FaultyLocker {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        if self.attempts.fetch_add(1, SeqCst) % 2 == 1 {
            return OpFuture::ready(Err(Error::Canceled("injected".into())));
        }
        self.inner.lock()
    }
    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        self.inner.try_lock()
    }
    fn unlock(&self, token: u64) -> OpFuture<'_, Result<()>> {
        self.releases.fetch_add(1, SeqCst);
        self.inner.unlock(token)
    }
    fn unlock_now(&self, token: u64) -> Option<Result<()>> {
        let done = self.inner.unlock_now(token);
        if done.is_some() {
            self.releases.fetch_add(1, SeqCst);
        }
        done
    }
    fn release(&self, token: u64) {
        self.releases.fetch_add(1, SeqCst);
        self.inner.release(token);
    }
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn party(&self) -> &Party {
        self.inner.party()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_wraps_sessions_and_lockers_of_the_layered_service_only() {
    let plain = lock::new("local:").await.unwrap();
    let layer = Arc::new(Faulty::default());
    let layered = plain.layer(layer.clone());
    let config = SessionConfig::new(Duration::from_secs(10));

    let session = layered.new_session(config).await.unwrap();
    let mut locker = session.new_locker("layers/a");
    let held = locker.lock().await.unwrap();
    let failed = locker.lock().await; // the second attempt: injected
    assert!(
        matches!(failed, Err(Error::Canceled(ref why)) if why == "injected"),
        "{failed:?}"
    );
    held.unlock().await.unwrap();
    let held = locker.lock().await.unwrap(); // the third: through
    drop(held);
    assert_eq!(layer.releases.load(SeqCst), 2, "an unlock and a release");

    // Not through the plain handle, which is the same service.
    let other = plain.new_session(config).await.unwrap();
    let _ = other.new_locker("layers/a");
    assert_eq!(layer.sessions.load(SeqCst), 1);
    assert_eq!(layer.lockers.load(SeqCst), 1);
    layered.close().await.unwrap();
    assert!(
        matches!(plain.close().await, Err(Error::AlreadyClosed(_))),
        "the layered and the plain handle are one service"
    );
}

/// A layer whose lockers forward everything to the backend's, except that their `lock()` or
/// their `unlock()` never completes (and an `unlock()` that hangs releases nothing).
#[derive(Debug, Clone, Copy)]
struct Stuck {
    lock: bool,
    unlock: bool,
}

impl Layer for Stuck {
    fn locker(&self, locker: Arc<dyn backend::Locker>) -> Arc<dyn backend::Locker> {
        Arc::new(StuckLocker(locker, *self))
    }
}

#[derive(Debug)]
struct StuckLocker(Arc<dyn backend::Locker>, Stuck);

impl backend::Locker for StuckLocker {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        match self.1.lock {
            true => OpFuture::boxed(std::future::pending()),
            false => self.0.lock(),
        }
    }
    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        self.0.try_lock()
    }
    fn unlock(&self, token: u64) -> OpFuture<'_, Result<()>> {
        match self.1.unlock {
            true => OpFuture::boxed(std::future::pending()),
            false => self.0.unlock(token),
        }
    }
    fn release(&self, token: u64) {
        self.0.release(token);
    }
    fn id(&self) -> &str {
        self.0.id()
    }
    fn party(&self) -> &Party {
        self.0.party()
    }
}

/// The handles apply the session's timeout around the outermost layer: a layer that hangs is
/// cut off, and the locker can lock again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_holds_around_a_layer_that_hangs() {
    let hang = Stuck {
        lock: true,
        unlock: false,
    };
    let service = lock::new("local:").await.unwrap().layer(hang);
    let limit = Duration::from_millis(100);
    let config = SessionConfig::new(Duration::from_secs(10)).with_timeout(limit);
    let session = service.new_session(config).await.unwrap();
    let mut locker = session.new_locker("layers/hang");
    let started = std::time::Instant::now();
    let outcome = locker.lock().await;
    assert!(
        matches!(outcome, Err(Error::Timeout(d)) if d == limit),
        "{outcome:?}"
    );
    assert!(started.elapsed() < limit * 5, "{:?}", started.elapsed());
    // The attempt is over: the locker can try again (and the layer lets try_lock through).
    assert!(locker.try_lock().await.unwrap().is_some());
    service.close().await.unwrap();
}

/// A backend's `unlock` need not be cancel-safe: when the application drops an `unlock()` whose
/// backend release has not completed, the handles call `release` for the hold, so the lock is
/// freed all the same — through the guard's `Held::unlock` and through `Locker::unlock`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_unlock_releases_even_if_the_backend_unlock_never_completes() {
    let stuck = Stuck {
        lock: false,
        unlock: true,
    };
    let service = lock::new("local:").await.unwrap().layer(stuck);
    let session = service.new_session(SessionConfig::default()).await.unwrap();
    let id = "layers/stuck-unlock";
    let (mut a, mut b) = (session.new_locker(id), session.new_locker(id));
    let short = Duration::from_millis(50);

    // The guard's unlock, polled and then dropped.
    let held = a.lock().await.unwrap();
    let lost = held.lost();
    assert!(tokio::time::timeout(short, held.unlock()).await.is_err());
    assert!(lost.is_lost(), "a dropped Held::unlock left the hold");
    let next = b.try_lock().await.unwrap();
    assert!(next.is_some(), "a dropped Held::unlock left the lock held");
    drop(next);

    // The locker's unlock, polled and then dropped, while the guard lives.
    let held = a.lock().await.unwrap();
    assert!(tokio::time::timeout(short, a.unlock()).await.is_err());
    assert!(held.is_lost(), "a dropped Locker::unlock left the hold");
    let next = b.try_lock().await.unwrap();
    assert!(
        next.is_some(),
        "a dropped Locker::unlock left the lock held"
    );
    drop((next, held));
    service.close().await.unwrap();
}
