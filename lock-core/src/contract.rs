//! The contract between the handles and a backend: the three traits every backend implements,
//! the [`Layer`] that wraps them, and the [`Party`] the handles keep in every backend locker.
//!
//! What the handles do for every backend, and what is left to the backend, is listed in
//! [`crate::backend`] ("What the handles do").

use std::fmt::{self, Debug};
use std::sync::atomic::Ordering::{Acquire, Release, SeqCst};
use std::sync::atomic::{fence, AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::config::SessionConfig;
use crate::error::{Error, Result};
use crate::hold::{Done, Hold};
use crate::observe::{Leader, Observer};
use crate::op::OpFuture;
use crate::signal::Signal;

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

    /// Closes the service: every session ends and every lock is reported lost. Called once,
    /// after the handles ended the sessions they end (see [`Session::done`]).
    ///
    /// The provided method does nothing more: enough for a backend whose sessions the handles
    /// end.
    ///
    /// # Errors
    ///
    /// What the backend could not do ([`Error::Backend`]); the service is closed regardless.
    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(Ok(()))
    }
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

    /// A locker for one permit of semaphore `id` (a valid id), which up to `limit` (at least 1)
    /// lockers hold at once. Each permit is a hold with the whole [`Locker`] contract: its lost
    /// signal fires before the permit can be granted to anybody else, its fencing token is
    /// unique among the permits of `id` and ordered as their parties queued (a party that
    /// asked later gets a greater one), waiters are served in FIFO order,
    /// `lock()` is cancel-safe. A `lock()` while parties of `id` that hold or wait use
    /// another limit fails with [`Error::LimitMismatch`]: never more than the smallest limit
    /// in use is granted at once.
    ///
    /// The provided method offers no semaphores.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] if the backend offers no semaphores.
    fn new_semaphore(&self, id: &str, limit: u32, party: Party) -> Result<Arc<dyn Locker>> {
        let _ = (id, limit, party);
        Err(unsupported::<Self>("semaphores"))
    }

    /// A party of election `name` (a valid id): see [`Election`]. The provided method offers no
    /// elections.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] if the backend offers no elections.
    fn new_election(&self, name: &str, party: Party) -> Result<Arc<dyn Election>> {
        let _ = (name, party);
        Err(unsupported::<Self>("elections"))
    }

    /// A future that resolves once the session has ended: closed, dropped, its service closed,
    /// or (for remote backends) its lease lost. `Some` for a backend that ends its sessions
    /// itself; it then also implements [`close`](Session::close) and [`Service::close`].
    ///
    /// `None` (the provided method): the session is not a lease and ends only when it is
    /// closed, its service is closed, or it is dropped, and **the handles end it**. They then
    /// resolve its `done()`, call [`Locker::release`] for the latest hold of each of its
    /// lockers, fail its waiting `lock()`s with [`Error::Canceled`] (dropping the backend's
    /// future), and fail later attempts with [`Error::AlreadyClosed`] before the backend sees
    /// them; a grant that races with the end is released at once. An in-process backend then
    /// keeps no session state at all.
    fn done(&self) -> Option<Done> {
        None
    }

    /// Ends the session: its locks are released (and reported lost), its waiters fail with
    /// [`Error::Canceled`]. Called once; for a session the handles end, after they ended it.
    ///
    /// The provided method does nothing more: enough for a session the handles end.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] if the session had already ended otherwise (its service
    /// closed); what the backend could not do.
    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(Ok(()))
    }
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
    /// It need not be cancel-safe: if the handles' future is dropped before this one completes,
    /// they call [`release`](Locker::release)`(token)`, which must finish the job.
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

/// A party of one election: a [`Locker`] whose hold is leadership (its `lock()` campaigns with
/// the value last [`propose`](Election::propose)d, and waits in FIFO order until it leads), with
/// the election's value and its history.
///
/// The leader of an election is its holder; the leader's value is what it campaigned with or
/// last proclaimed; its term's fencing token is its hold's. Every observer of the election sees
/// every change of leader or value, in the order they happened.
pub trait Election: Locker {
    /// The value the next `lock()` campaigns with. The handles call it before every `lock()`.
    fn propose(&self, value: Vec<u8>);

    /// Replaces the value of this party's term with fencing token `token` (the latest it was
    /// granted): observers see the new value.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if that term has ended; [`Error::AlreadyClosed`] after the session
    /// ended; what the backend could not do.
    fn proclaim(&self, token: u64, value: Vec<u8>) -> OpFuture<'_, Result<()>>;

    /// The leader now, if any.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] after the session ended; what the backend could not do.
    fn leader(&self) -> OpFuture<'_, Result<Option<Leader>>>;

    /// Starts observing the election: the observer's first item is the leader now (or none),
    /// then every change, in order (see [`Observer`]). It ends with the session.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] after the session ended; what the backend could not do.
    fn observe(&self) -> OpFuture<'_, Result<Observer>>;

    /// This party as a plain [`Locker`] (return `self`), for the handles' attempts and layers.
    fn into_locker(self: Arc<Self>) -> Arc<dyn Locker>;
}

/// [`Error::Unsupported`] for a backend that does not offer `what`.
fn unsupported<S: ?Sized>(what: &str) -> Error {
    Error::Unsupported(format!(
        "this backend (`{}`) offers no {what}; use a backend that does (`local:`, `etcd:`)",
        std::any::type_name::<S>()
    ))
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

/// What the handles keep of a service: the layers applied to it, and what its layered
/// handles share.
pub(crate) struct ServiceState {
    pub(crate) backend: Arc<dyn Service>,
    /// Shared by the service and its layered services: one service.
    pub(crate) shared: Arc<ServiceShared>,
    pub(crate) layers: Vec<Arc<dyn Layer>>,
}

/// What a service's handles share, layered or not.
#[derive(Default)]
pub(crate) struct ServiceShared {
    pub(crate) closed: AtomicBool,
    /// The sessions the handles end (see [`Session::done`]), opened through the service.
    sessions: Mutex<Vec<Weak<SessionState>>>,
}

impl ServiceShared {
    /// Ends the sessions the handles end, once the service is marked closed.
    pub(crate) fn end_sessions(&self) {
        let sessions = std::mem::take(&mut *lock(&self.sessions));
        sessions
            .iter()
            .filter_map(Weak::upgrade)
            .for_each(|s| s.end());
    }
}

/// What the handles keep of a session.
pub(crate) struct SessionState {
    pub(crate) backend: Arc<dyn Session>,
    pub(crate) closed: AtomicBool,
    pub(crate) timeout: Option<Duration>,
    /// The service it was opened from (`None`: made by a backend's own constructor).
    pub(crate) service: Option<Arc<ServiceState>>,
    /// For a session the handles end (its backend's `done()` is `None`); `None` otherwise, at
    /// no cost.
    ends: Option<Ends>,
}

/// What the handles keep of a session they end.
struct Ends {
    /// Fired when the session ends: its `done()`.
    signal: Arc<Signal>,
    /// Its lockers, whose latest holds the end releases.
    lockers: Mutex<Vec<Weak<dyn Locker>>>,
}

impl SessionState {
    pub(crate) fn new(
        backend: Arc<dyn Session>,
        timeout: Option<Duration>,
        service: Option<Arc<ServiceState>>,
    ) -> Arc<Self> {
        let ends_here = backend.done().is_none();
        let state = Arc::new(SessionState {
            backend,
            closed: AtomicBool::new(false),
            timeout,
            service,
            ends: ends_here.then(|| Ends {
                signal: Arc::new(Signal::new()),
                lockers: Mutex::default(),
            }),
        });
        if let (true, Some(service)) = (ends_here, &state.service) {
            let mut sessions = lock(&service.shared.sessions);
            prune(&mut sessions);
            sessions.push(Arc::downgrade(&state));
        }
        state
    }

    /// [`Error::AlreadyClosed`] if the session or its service was closed through the handles.
    #[inline]
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Acquire) {
            return Err(Error::AlreadyClosed("session"));
        }
        if self
            .service
            .as_ref()
            .is_some_and(|s| s.shared.closed.load(Acquire))
        {
            return Err(Error::AlreadyClosed("service"));
        }
        Ok(())
    }

    /// Whether the handles end this session (see [`Session::done`]).
    pub(crate) fn ends_here(&self) -> bool {
        self.ends.is_some()
    }

    /// A `done()` of a session the handles end; `None` for one its backend ends.
    pub(crate) fn done(&self) -> Option<Done> {
        let ends = self.ends.as_ref()?;
        Some(Done::new(ends.signal.clone(), 0, None))
    }

    /// Notes a new locker of a session the handles end.
    pub(crate) fn joined(&self, locker: &Arc<dyn Locker>) {
        if let Some(ends) = &self.ends {
            let mut lockers = lock(&ends.lockers);
            prune(&mut lockers);
            lockers.push(Arc::downgrade(locker));
        }
    }

    /// Ends a session the handles end, once it (or its service) is marked closed: `done()`
    /// resolves and the latest hold of each of its lockers is released. Only the first call
    /// does anything.
    pub(crate) fn end(&self) {
        let Some(ends) = &self.ends else {
            return;
        };
        if !ends.signal.fire_if(0) {
            return;
        }
        // Pairs with the fence in `Party::granted_while_closed`: either the grant sees the
        // closed flag and releases, or this sees the grant.
        fence(SeqCst);
        let lockers = std::mem::take(&mut *lock(&ends.lockers));
        for locker in lockers.iter().filter_map(Weak::upgrade) {
            if let Some(token) = locker.party().latest() {
                locker.release(token);
            }
        }
    }
}

impl Drop for SessionState {
    fn drop(&mut self) {
        // The last handle is gone (its lockers and holds too): `done()` resolves.
        if let Some(ends) = &self.ends {
            ends.signal.fire_if(0);
        }
    }
}

/// Locks a mutex of the handles' own bookkeeping, which a panic cannot leave inconsistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops the entries of handles that are gone, once the list is full (amortised).
fn prune<T: ?Sized>(list: &mut Vec<Weak<T>>) {
    if list.len() == list.capacity() {
        list.retain(|w| w.strong_count() > 0);
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
    /// Whether the handles end the session (see [`Session::done`]).
    ends_here: bool,
}

impl Party {
    pub(crate) fn new(session: Arc<SessionState>) -> Self {
        Party {
            timeout: session.timeout,
            ends_here: session.ends_here(),
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

    /// Whether the handles end the session (see [`Session::done`]).
    #[inline]
    pub(crate) fn ends_here(&self) -> bool {
        self.ends_here
    }

    /// A `done()` of a session the handles end (see [`Session::done`]).
    pub(crate) fn session_done(&self) -> Option<Done> {
        self.session.done()
    }

    /// Notes the hold with fencing token `token`, just granted.
    #[inline]
    pub(crate) fn granted(&self, token: u64) {
        self.latest.store(token.saturating_add(1), Release);
    }

    /// For a session the handles end, after [`granted`](Party::granted): whether the session
    /// was closed meanwhile, so that its end may not have seen the grant.
    #[cold]
    pub(crate) fn granted_while_closed(&self) -> bool {
        // Pairs with the fence in `SessionState::end`.
        fence(SeqCst);
        self.check_open().is_err()
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
