//! The contract between the handles and a backend: the three traits every backend implements,
//! the [`Layer`] that wraps them, and the [`Party`] the handles keep in every backend locker.
//!
//! What the handles do for every backend, and what is left to the backend, is listed in
//! [`crate::backend`] ("What the handles do").

use std::fmt::{self, Debug};
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use crate::config::SessionConfig;
use crate::error::{Error, Result};
use crate::hold::{Done, Hold};
use crate::op::OpFuture;

/// A backend's locking service: a connection to the backend, from which sessions are opened.
///
/// Wrapped by [`crate::Service`] ([`backend::service`](crate::backend::service)). Sessions keep
/// the service's resources alive: dropping the service ends nothing;
/// [`close`](Service::close) ends every session.
pub trait Service: Send + Sync + Debug + 'static {
    /// Opens a session with the given configuration (already validated: a non-zero TTL and
    /// timeout).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a configuration the backend cannot honour;
    /// [`Error::AlreadyClosed`] if the service ended; [`Error::Backend`] when the backend
    /// cannot be reached.
    fn new_session(&self, config: SessionConfig) -> OpFuture<'_, Result<Arc<dyn Session>>>;

    /// Closes the service: every session ends and every lock is reported lost. Called once.
    ///
    /// # Errors
    ///
    /// What the backend could not do ([`Error::Backend`]); the service is closed regardless.
    fn close(&self) -> OpFuture<'_, Result<()>>;
}

/// A backend's session: one party's identity towards the backend, with a TTL. Every lock taken
/// through the session's lockers lives at most as long as the session.
///
/// Dropping it ends it (in the background for remote backends). The [`crate::Session`] handle
/// drops it once the last handle of the session, its lockers and their holds are gone.
pub trait Session: Send + Sync + Debug + 'static {
    /// A locker for lock `id` (a valid id). Lockers of the same id exclude each other, whether
    /// they belong to the same session or to different ones.
    ///
    /// Keep `party` in the locker and return it from [`Locker::party`]: it keeps the session
    /// open while the locker lives, and its fields drop after the locker's own `Drop`.
    fn new_locker(&self, id: &str, party: Party) -> Arc<dyn Locker>;

    /// A future that resolves once the session has ended: closed, dropped, its service closed,
    /// or (for remote backends) its lease lost.
    fn done(&self) -> Done;

    /// Ends the session: its locks are released (and reported lost), its waiters fail with
    /// [`Error::Canceled`]. Called once.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] if the session had already ended otherwise (its service
    /// closed); what the backend could not do.
    fn close(&self) -> OpFuture<'_, Result<()>>;
}

/// A backend's locker: one party's handle on one lock id. Dropping it releases its hold (in the
/// background for remote backends).
pub trait Locker: Send + Sync + Debug + 'static {
    /// Waits for the lock, in FIFO order with other waiters.
    ///
    /// Cancel-safe: dropping the future (the handles do, when the session's timeout passes)
    /// withdraws from the queue and leaves nothing behind.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyLocked`] if this locker still holds the lock (the application keeps a
    /// guard of it); [`Error::Canceled`] if the session ends while waiting;
    /// [`Error::AlreadyClosed`] if it had ended before.
    fn lock(&self) -> OpFuture<'_, Result<Hold>>;

    /// Takes the lock if nobody holds it or waits for it; never waits for a holder.
    ///
    /// # Errors
    ///
    /// As [`lock`](Locker::lock), except that a held lock gives `Ok(None)`.
    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>>;

    /// Releases the hold with fencing token `token` (the latest this locker was granted) and
    /// waits until it is released; its lost signal fires.
    ///
    /// Cancel-safe once polled: a release that started completes in the background.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if that hold had already ended (released, or lost);
    /// [`Error::AlreadyClosed`] after the session ended. An error from a remote backend is
    /// informative: the lock is released at the latest when the session's TTL runs out.
    fn unlock(&self, token: u64) -> OpFuture<'_, Result<()>>;

    /// [`unlock`](Locker::unlock)`(token)` if the backend can complete it at once, without
    /// waiting; `None` if it must wait (the provided method). The handles try this first.
    fn unlock_now(&self, token: u64) -> Option<Result<()>> {
        let _ = token;
        None
    }

    /// Releases the hold with fencing token `token` (the latest this locker was granted) without
    /// waiting: its lost signal fires now, and a remote backend removes its record in the
    /// background. Called when the application drops its guard without `unlock()`, also after
    /// the hold ended (then there is nothing left to do).
    fn release(&self, token: u64);

    /// The lock id this locker was made for.
    fn id(&self) -> &str;

    /// The [`Party`] given to [`Session::new_locker`]. A wrapper returns its inner locker's.
    fn party(&self) -> &Party;

    /// The backend's own locker, for its own extensions (the `etcd:` backend's guarded writes
    /// find a hold's key through it): `Some(self)`. A wrapper forwards the call to the locker
    /// it wraps. The provided method offers no extension.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// A wrapper around a service, its sessions and their lockers: metrics, tracing, retries,
/// fault injection. Applied with [`crate::Service::layer`]; each method wraps one object
/// and may return it as it is (the provided methods do).
///
/// The handles apply the layer to everything opened through the layered service: a session
/// once, when it is opened; a locker once, when it is made. A wrapper forwards what it does not
/// change to the object it wraps — a locker wrapper forwards [`Locker::party`] and
/// [`Locker::as_any`] too — and keeps the contract above: it may fail an attempt, delay it or
/// count it, and passes every `unlock`/`release` on. The session's timeout is applied around the
/// outermost layer: a layer sees a timed-out attempt as its future dropped
/// ([`Party::timeout`] tells it the limit).
///
/// # Examples
///
/// A layer that counts the lockers made:
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use lock_core::backend::{Layer, Locker};
///
/// #[derive(Debug, Default)]
/// struct CountLockers(AtomicUsize);
///
/// impl Layer for CountLockers {
///     fn locker(&self, locker: Arc<dyn Locker>) -> Arc<dyn Locker> {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         locker
///     }
/// }
///
/// # async fn demo(service: lock_core::Service) -> lock_core::Result<()> {
/// let layer = Arc::new(CountLockers::default());
/// let service = service.layer(layer.clone());
/// let session = service.new_session(lock_core::SessionConfig::default()).await?;
/// let mut _locker = session.new_locker("jobs/report");
/// assert_eq!(layer.0.load(Ordering::Relaxed), 1);
/// # Ok(()) }
/// ```
pub trait Layer: Send + Sync + Debug + 'static {
    /// Wraps the service, once, when the layer is applied.
    fn service(&self, service: Arc<dyn Service>) -> Arc<dyn Service> {
        service
    }

    /// Wraps a session opened through the layered service.
    fn session(&self, session: Arc<dyn Session>) -> Arc<dyn Session> {
        session
    }

    /// Wraps a locker made through a session of the layered service.
    fn locker(&self, locker: Arc<dyn Locker>) -> Arc<dyn Locker> {
        locker
    }
}

impl<L: Layer + ?Sized> Layer for Arc<L> {
    fn service(&self, service: Arc<dyn Service>) -> Arc<dyn Service> {
        (**self).service(service)
    }
    fn session(&self, session: Arc<dyn Session>) -> Arc<dyn Session> {
        (**self).session(session)
    }
    fn locker(&self, locker: Arc<dyn Locker>) -> Arc<dyn Locker> {
        (**self).locker(locker)
    }
}

/// What the handles keep of a service: the layers applied to it and whether it was closed.
pub(crate) struct ServiceState {
    pub(crate) backend: Arc<dyn Service>,
    /// Shared by the service and its layered services: one service.
    pub(crate) closed: Arc<AtomicBool>,
    pub(crate) layers: Vec<Arc<dyn Layer>>,
}

/// What the handles keep of a session.
pub(crate) struct SessionState {
    pub(crate) backend: Arc<dyn Session>,
    pub(crate) closed: AtomicBool,
    pub(crate) timeout: Option<Duration>,
    /// The service it was opened from (`None`: made by a backend's own constructor).
    pub(crate) service: Option<Arc<ServiceState>>,
}

impl SessionState {
    /// [`Error::AlreadyClosed`] if the session or its service was closed through the handles.
    #[inline]
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Acquire) {
            return Err(Error::AlreadyClosed("session"));
        }
        if self
            .service
            .as_ref()
            .is_some_and(|s| s.closed.load(Acquire))
        {
            return Err(Error::AlreadyClosed("service"));
        }
        Ok(())
    }
}

/// The part of a backend locker the handles own: the session it keeps open, and the fencing
/// token of the latest hold granted to it. Made by the handles and given to
/// [`Session::new_locker`]; the backend keeps it in its locker and returns it from
/// [`Locker::party`]. Keeping it is all a backend does for the guarantees listed in
/// [`crate::backend`] ("What the handles do").
pub struct Party {
    session: Arc<SessionState>,
    /// The session's timeout, kept here so that a waiting `lock()` reads it from its own
    /// locker's memory.
    timeout: Option<Duration>,
    /// The fencing token of the latest hold granted to this locker, plus one; 0: none.
    latest: AtomicU64,
}

impl Party {
    pub(crate) fn new(session: Arc<SessionState>) -> Self {
        Party {
            timeout: session.timeout,
            session,
            latest: AtomicU64::new(0),
        }
    }

    /// The session's timeout for `lock()`, which the handles apply: they drop the backend's
    /// (or a layer's) attempt when it passes.
    #[inline]
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    #[inline]
    pub(crate) fn check_open(&self) -> Result<()> {
        self.session.check_open()
    }

    /// Notes the hold with fencing token `token`, just granted.
    #[inline]
    pub(crate) fn granted(&self, token: u64) {
        self.latest.store(token.saturating_add(1), Release);
    }

    /// The fencing token of the latest hold granted to this locker, if any.
    #[inline]
    pub(crate) fn latest(&self) -> Option<u64> {
        self.latest.load(Acquire).checked_sub(1)
    }
}

impl fmt::Debug for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Party")
            .field("latest", &self.latest())
            .finish_non_exhaustive()
    }
}
