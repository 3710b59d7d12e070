//! The three traits every backend implements. Their async methods return [`OpFuture`]: ready
//! (no allocation) when the backend can answer at once, pending on the backend object's own
//! state (no allocation) or boxed when it must wait.
//!
//! Applications do not call these: they hold the handles [`crate::Service`],
//! [`crate::Session`] and [`crate::Locker`], which wrap them.

use std::fmt::Debug;
use std::sync::Arc;

use crate::backend::{Hold, OpFuture};
use crate::{Done, Result, SessionConfig};

/// A backend's locking service: a connection to the backend, from which sessions are opened.
///
/// Wrapped by [`crate::Service`] ([`Service::from_backend`](crate::Service::from_backend)).
/// Sessions keep the service's resources alive: dropping the service ends nothing;
/// [`close`](Service::close) ends every session.
pub trait Service: Send + Sync + Debug + 'static {
    /// Opens a session with the given configuration.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a configuration the backend
    /// cannot honour; [`Error::AlreadyClosed`](crate::Error::AlreadyClosed) after `close`;
    /// [`Error::Backend`](crate::Error::Backend) when the backend cannot be reached.
    fn new_session(&self, config: SessionConfig) -> OpFuture<'_, Result<Arc<dyn Session>>>;

    /// Closes the service: every session ends and every lock is reported lost.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`](crate::Error::AlreadyClosed) on the second call.
    fn close(&self) -> OpFuture<'_, Result<()>>;
}

/// A backend's session: one party's identity towards the backend, with a TTL. Every lock taken
/// through the session's lockers lives at most as long as the session.
///
/// Dropping it ends it (in the background for remote backends). The [`crate::Session`] handle
/// drops it once the last handle of the session, its lockers and their holds are gone.
pub trait Session: Send + Sync + Debug + 'static {
    /// A locker for lock `id`. Lockers of the same id exclude each other, whether they belong
    /// to the same session or to different ones. An invalid id is reported by the locker's
    /// first `lock`/`try_lock` call as [`Error::InvalidId`](crate::Error::InvalidId).
    ///
    /// `session` is the application's handle of this session. The locker must keep the session
    /// open while it lives: keep a clone of the handle and drop it only after the locker's own
    /// clean-up (declare it as the locker's last field), or keep the backend's own session
    /// object alive if that is what ends the session. A session then lives as long as its
    /// lockers and their holds (`session.new_locker(id).lock()` through a temporary session
    /// holds the lock).
    fn new_locker(&self, id: &str, session: &crate::Session) -> Arc<dyn Locker>;

    /// A future that resolves once the session has ended: closed, dropped, its service closed,
    /// or (for remote backends) its lease lost.
    fn done(&self) -> Done;

    /// Ends the session: its locks are released (and reported lost), its waiters fail with
    /// [`Error::Canceled`](crate::Error::Canceled).
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`](crate::Error::AlreadyClosed) on the second call.
    fn close(&self) -> OpFuture<'_, Result<()>>;
}

/// A backend's locker: one party's handle on one lock id. At most one hold or attempt at a
/// time. Dropping it releases its hold (in the background for remote backends).
pub trait Locker: Send + Sync + Debug + 'static {
    /// Waits for the lock, in FIFO order with other waiters, up to the session's timeout.
    ///
    /// Cancel-safe: dropping the future withdraws from the queue and leaves nothing behind.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyLocked`](crate::Error::AlreadyLocked) if this locker holds or is already
    /// acquiring the lock; [`Error::Timeout`](crate::Error::Timeout);
    /// [`Error::Canceled`](crate::Error::Canceled) if the session ends while waiting;
    /// [`Error::AlreadyClosed`](crate::Error::AlreadyClosed) if it had ended before;
    /// [`Error::InvalidId`](crate::Error::InvalidId).
    fn lock(&self) -> OpFuture<'_, Result<Hold>>;

    /// Takes the lock if nobody holds it or waits for it; never waits.
    ///
    /// # Errors
    ///
    /// As [`lock`](Locker::lock), except that a held lock gives `Ok(None)`.
    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>>;

    /// Releases the current hold (`token: None`: whatever the locker holds), or only the hold whose
    /// fencing token is `token` (a [`crate::Held`] unlocking itself). Its lost signal fires.
    ///
    /// Cancel-safe once polled: a release that started completes in the background.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`](crate::Error::NotHeld) if the locker holds nothing (or another
    /// hold than `token`); [`Error::AlreadyClosed`](crate::Error::AlreadyClosed) after the
    /// session ended. An error from a remote backend is informative: the lock is released at
    /// the latest when the session's TTL runs out.
    fn unlock(&self, token: Option<u64>) -> OpFuture<'_, Result<()>>;

    /// [`unlock`](Locker::unlock)`(Some(token))` if the backend can complete it at once,
    /// without waiting; `None` if it must wait (the provided method). [`crate::Held::unlock`]
    /// tries this first, and otherwise awaits `unlock(Some(token))`.
    fn unlock_now(&self, token: u64) -> Option<Result<()>> {
        let _ = token;
        None
    }

    /// Releases the hold whose fencing token is `token`, if it is still the current one,
    /// without waiting: its lost signal fires now, and a remote backend removes its record in
    /// the background. Called when a [`crate::Held`] is dropped without `unlock()`.
    fn release(&self, token: u64);

    /// The lock id this locker was made for.
    fn id(&self) -> &str;

    /// The backend's own locker, for its own extensions (the `etcd:` backend's guarded writes
    /// find a hold's key through it): `Some(self)`. A wrapper (a metrics or retry layer)
    /// forwards the call to the locker it wraps. The provided method offers no extension.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}
