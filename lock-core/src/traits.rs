//! The three traits every backend implements. Their async methods return [`OpFuture`]: ready
//! (no allocation) when the backend can answer at once, pending on the backend object's own
//! state (no allocation) or boxed when it must wait.

use std::fmt::Debug;

use crate::{Done, Held, OpFuture, Result, SessionConfig};

/// A locking service: a connection to a backend, from which sessions are opened.
///
/// Open one with [`crate::new`] from a connection string such as `local:` or
/// `etcd:http://127.0.0.1:2379`. Sessions keep the service's resources alive: dropping the
/// service handle ends nothing; [`close`](Service::close) ends every session.
pub trait Service: Send + Sync + Debug {
    /// Opens a session with the given configuration.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a configuration the backend
    /// cannot honour; [`Error::AlreadyClosed`](crate::Error::AlreadyClosed) after `close`;
    /// [`Error::Backend`](crate::Error::Backend) when the backend cannot be reached.
    fn new_session<'a>(
        &'a self,
        config: &'a SessionConfig,
    ) -> OpFuture<'a, Result<Box<dyn Session>>>;

    /// Closes the service: every session ends and every lock is reported lost.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`](crate::Error::AlreadyClosed) on the second call.
    fn close(&self) -> OpFuture<'_, Result<()>>;
}

/// A session: one party's identity towards the backend, with a TTL. Every lock taken through
/// the session's lockers lives at most as long as the session.
///
/// Dropping a session ends it (in the background for remote backends); [`close`](Session::close)
/// is the clean path.
pub trait Session: Send + Sync + Debug {
    /// A locker for lock `id`. Lockers of the same id exclude each other, whether they belong
    /// to the same session or to different ones. An invalid id is reported by the locker's
    /// first `lock`/`try_lock` call as [`Error::InvalidId`](crate::Error::InvalidId).
    fn new_locker(&self, id: &str) -> Box<dyn Locker>;

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

/// One party's handle on one lock id.
pub trait Locker: Send + Sync + Debug {
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
    fn lock(&self) -> OpFuture<'_, Result<Held>>;

    /// Takes the lock if nobody holds it or waits for it; never waits.
    ///
    /// # Errors
    ///
    /// As [`lock`](Locker::lock), except that a held lock gives `Ok(None)`.
    fn try_lock(&self) -> OpFuture<'_, Result<Option<Held>>>;

    /// Releases the lock; its [`Held::lost`] fires.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`](crate::Error::NotHeld) if this locker does not hold the lock;
    /// [`Error::AlreadyClosed`](crate::Error::AlreadyClosed) after the session ended. An error
    /// from a remote backend is informative: the lock is released at the latest when the
    /// session's TTL runs out.
    fn unlock(&self) -> OpFuture<'_, Result<()>>;

    /// The lock id this locker was made for.
    fn id(&self) -> &str;
}
