//! The handles applications hold: [`Service`], [`Session`] and [`Locker`]. Each is one `Arc`
//! around a backend object, `Send + Sync + 'static`; services and sessions are `Clone` (clone
//! them into tasks freely), a locker is one party and is not.
//!
//! Lifetimes follow the handles, as with `Arc`: a locker keeps its session open, and a
//! [`Held`] keeps its locker; a session ends when it is closed, its service is closed, or the
//! last handle of it (its lockers and holds included) is dropped.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::backend::{self, Hold, OpFuture};
use crate::{Done, Error, Fence, Held, Result, SessionConfig};

/// A locking service: a connection to a backend, from which sessions are opened. Open one with
/// [`crate::new`] from a connection string (`local:`, `etcd:http://127.0.0.1:2379`, …).
///
/// Cheap to clone; every clone is the same service. Sessions keep the service's resources
/// alive: dropping the handles ends nothing; [`close`](Service::close) ends every session.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> lock_core::Result<()> {
/// use std::time::Duration;
/// use lock_core::SessionConfig;
///
/// let service = lock_core::new("local:").await?;
/// let session = service.new_session(SessionConfig::new(Duration::from_secs(10))).await?;
/// let held = session.new_locker("jobs/nightly").lock().await?;
/// println!("token {}", held.fencing_token());
/// held.unlock().await?;
/// service.close().await
/// # }
/// ```
#[derive(Clone)]
pub struct Service {
    backend: Arc<dyn backend::Service>,
}

impl Service {
    /// Wraps a backend's service. For backends (in their `open` function) and tests.
    pub fn from_backend(service: impl backend::Service) -> Self {
        Service {
            backend: Arc::new(service),
        }
    }

    /// The backend's service, for a wrapper that adds to it (metrics, tracing).
    pub fn backend(&self) -> &dyn backend::Service {
        &*self.backend
    }

    /// Opens a session: the TTL its locks live by without a keep-alive, and how long `lock()`
    /// may wait (see [`SessionConfig`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a configuration the backend cannot honour;
    /// [`Error::AlreadyClosed`] after `close`; [`Error::Backend`] when the backend cannot be
    /// reached.
    pub fn new_session(
        &self,
        config: SessionConfig,
    ) -> impl Future<Output = Result<Session>> + Send + '_ {
        let opening = self.backend.new_session(config);
        async move { Ok(Session::from_backend(opening.await?)) }
    }

    /// Closes the service: every session ends and every lock is reported lost.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] on the second call.
    pub async fn close(&self) -> Result<()> {
        self.backend.close().await
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.backend, f)
    }
}

/// A session: one party's identity towards the backend, with a TTL. Every lock taken through
/// its lockers lives at most as long as the session.
///
/// Cheap to clone. The session ends when [`close`](Session::close)d, when its service is
/// closed, when (on a remote backend) its lease is lost, or when the last handle of it — its
/// lockers and their holds included — is dropped (then in the background).
#[derive(Clone)]
pub struct Session {
    backend: Arc<dyn backend::Session>,
}

impl Session {
    /// Wraps a backend's session. For backends and wrappers.
    pub fn from_backend(session: Arc<dyn backend::Session>) -> Self {
        Session { backend: session }
    }

    /// The backend's session, for a wrapper that adds to it.
    pub fn backend(&self) -> &Arc<dyn backend::Session> {
        &self.backend
    }

    /// A locker for lock `id`. Lockers of the same id exclude each other, whether they belong
    /// to the same session or to different ones. An invalid id is reported by the locker's
    /// first `lock`/`try_lock` call as [`Error::InvalidId`].
    ///
    /// The locker keeps this session open while it (or a [`Held`] of it) lives.
    pub fn new_locker(&self, id: &str) -> Locker {
        Locker {
            backend: self.backend.new_locker(id, self),
        }
    }

    /// A future that resolves once the session has ended: closed, its service closed, or (for
    /// remote backends) its lease lost. `'static`.
    pub fn done(&self) -> Done {
        self.backend.done()
    }

    /// Ends the session: its locks are released (and reported lost), its waiters fail with
    /// [`Error::Canceled`]. Handles of it that remain fail with [`Error::AlreadyClosed`].
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] on the second call.
    pub async fn close(&self) -> Result<()> {
        self.backend.close().await
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.backend, f)
    }
}

/// One party's handle on one lock id, made by [`Session::new_locker`]: one hold or attempt at
/// a time (a second `lock()` while one is pending or held fails with
/// [`Error::AlreadyLocked`]).
///
/// Not `Clone`: a clone would be the same party, so tasks sharing one would fail each other's
/// `lock()` instead of taking turns. Give each task its own locker — lockers of one id exclude
/// each other, also within one session:
///
/// ```compile_fail
/// # async fn demo(session: lock_core::Session) {
/// let locker = session.new_locker("jobs/nightly");
/// let for_task = locker.clone(); // error: `Locker` is not `Clone`
/// # }
/// ```
///
/// ```no_run
/// # async fn demo(session: lock_core::Session) -> lock_core::Result<()> {
/// for _ in 0..4 {
///     let locker = session.new_locker("jobs/nightly"); // one party per task
///     tokio::spawn(async move {
///         let held = locker.lock().await?;
///         // … work under the lock …
///         held.unlock().await
///     });
/// }
/// # Ok(()) }
/// ```
///
/// Dropping the locker (its [`Held`], which keeps it, included) releases its lock.
pub struct Locker {
    /// The backend's locker, which keeps its session's handle (see
    /// [`backend::Session::new_locker`]).
    backend: Arc<dyn backend::Locker>,
}

impl Locker {
    /// Wraps a backend's locker. For wrappers.
    pub fn from_backend(locker: Arc<dyn backend::Locker>) -> Self {
        Locker { backend: locker }
    }

    /// The backend's locker, for a wrapper that adds to it.
    #[inline]
    pub fn backend(&self) -> &Arc<dyn backend::Locker> {
        &self.backend
    }

    /// Another handle of this same locker, for the [`Held`] it grants (which keeps it).
    #[inline]
    fn share(&self) -> Locker {
        Locker {
            backend: Arc::clone(&self.backend),
        }
    }

    /// The lock id this locker was made for.
    #[inline]
    pub fn id(&self) -> &str {
        self.backend.id()
    }

    /// Waits for the lock, in FIFO order with other waiters, up to the session's timeout, and
    /// returns the guard of the hold.
    ///
    /// Cancel-safe: dropping the future withdraws from the queue and leaves nothing behind.
    /// A session timeout needs a tokio runtime with timers (`#[tokio::main]`, or a runtime
    /// built with `enable_time()`).
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyLocked`] if this locker holds or is already acquiring the lock;
    /// [`Error::Timeout`]; [`Error::Canceled`] if the session ends while waiting;
    /// [`Error::AlreadyClosed`] if it had ended before; [`Error::InvalidId`].
    #[inline]
    pub fn lock(&self) -> Lock<'_> {
        Lock {
            locking: self.backend.lock(),
            locker: self,
        }
    }

    /// [`lock`](Locker::lock), waiting at most `timeout` (or the session's timeout, if that is
    /// shorter). Needs a tokio runtime with timers.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] with `timeout` when it passed; otherwise as [`lock`](Locker::lock).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locker: lock_core::Locker) -> lock_core::Result<()> {
    /// use std::time::Duration;
    /// use lock_core::ErrorKind;
    ///
    /// match locker.lock_timeout(Duration::from_millis(200)).await {
    ///     Ok(held) => held.unlock().await?,
    ///     Err(e) if e.kind() == ErrorKind::Timeout => println!("busy; try later"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<Held> {
        match tokio::time::timeout(timeout, self.lock()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Takes the lock if nobody holds it or waits for it; never waits for a holder.
    ///
    /// # Errors
    ///
    /// As [`lock`](Locker::lock), except that a held lock gives `Ok(None)`.
    #[inline]
    pub fn try_lock(&self) -> TryLock<'_> {
        TryLock {
            trying: self.backend.try_lock(),
            locker: self,
        }
    }

    /// Releases whatever this locker holds (Go's `Locker.Unlock`); the hold's
    /// [`lost`](Held::lost) fires. [`Held::unlock`] does the same for one guard.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if this locker does not hold the lock; [`Error::AlreadyClosed`] after
    /// the session ended. An error from a remote backend is informative: the lock is released
    /// at the latest when the session's TTL runs out.
    pub async fn unlock(&self) -> Result<()> {
        self.backend.unlock(None).await
    }

    /// Takes the lock, runs `f` with the hold's [`Fence`] (its fencing token, and `is_lost()`
    /// to check before a side effect), and unlocks — also when `f` fails. `f` is raced against
    /// the loss of the lock: if the lock is lost first, `f` is dropped (cancelled at its next
    /// await) and the result is [`Error::Lost`].
    ///
    /// Returns what `f` returned; `f`'s error type only needs `From<lock::Error>`. A closure
    /// that finished while the lock was held keeps its result: a release that fails after it
    /// (a remote backend unreachable) is not reported, since the lock then ends at the latest
    /// when the session's TTL runs out, and a loss after the closure finished came too late to
    /// matter to it.
    ///
    /// # Errors
    ///
    /// What [`lock`](Locker::lock) returns; [`Error::Lost`] if the lock was lost before `f`
    /// finished; `f`'s error.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locker: lock_core::Locker) -> lock_core::Result<()> {
    /// let written = locker
    ///     .with_lock(|fence| async move { write_report(fence.fencing_token()).await })
    ///     .await?;
    /// # Ok(()) }
    /// # async fn write_report(_token: u64) -> lock_core::Result<usize> { Ok(1) }
    /// ```
    pub async fn with_lock<T, E, F, Fut>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(Fence) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let held = self.lock().await?;
        let lost = |held: &Held| held.lost_error(crate::LossCause::Unknown, "");
        let out = tokio::select! {
            biased;
            () = held.lost() => return Err(lost(&held).into()),
            out = f(held.fence()) => out,
        };
        if out.is_ok() && held.is_lost() {
            // Lost before the closure finished (it did not await after the loss).
            return Err(lost(&held).into());
        }
        let _ = held.unlock().await;
        out
    }
}

/// The future of [`Locker::lock`]: the backend's, turned into a [`Held`] of the locker.
/// Cancel-safe, as the backend's is.
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct Lock<'a> {
    locking: OpFuture<'a, Result<Hold>>,
    locker: &'a Locker,
}

impl Future for Lock<'_> {
    type Output = Result<Held>;
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Held>> {
        let this = &mut *self;
        let hold = std::task::ready!(Pin::new(&mut this.locking).poll(cx))?;
        Poll::Ready(Ok(Held::new(hold, this.locker.share())))
    }
}

/// The future of [`Locker::try_lock`].
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct TryLock<'a> {
    trying: OpFuture<'a, Result<Option<Hold>>>,
    locker: &'a Locker,
}

impl Future for TryLock<'_> {
    type Output = Result<Option<Held>>;
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Option<Held>>> {
        let this = &mut *self;
        let hold = std::task::ready!(Pin::new(&mut this.trying).poll(cx))?;
        Poll::Ready(Ok(hold.map(|hold| Held::new(hold, this.locker.share()))))
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.backend, f)
    }
}
