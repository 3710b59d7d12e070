//! The local service: one id table for the whole process (or for each service opened).

use std::fmt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use lock_core::backend::{self, OpFuture};
use lock_core::{Error, Result, SessionConfig};

use crate::permits::Groups;
use crate::session::LocalSession;
use crate::table::{ServiceShared, Wake};

/// The `local:` service: in-process locks, no I/O.
///
/// Each service is its own world: lockers of the same id exclude each other only within one
/// service. `lock::new("local:")` opens a new, independent service each time.
///
/// # Examples
///
/// ```
/// use lock_core::{Service, SessionConfig};
/// use lock_local::LocalService;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> lock_core::Result<()> {
/// let local = LocalService::new();
/// let service = lock_core::backend::service(local.clone()); // what `lock::new("local:")` returns
/// let session = service.new_session(SessionConfig::default()).await?;
/// let mut held = session.new_locker("reports/daily").lock().await?;
/// assert_eq!(local.active_ids(), 1);
/// let lost = held.lost();
/// held.unlock().await?;
/// assert!(lost.is_lost());
/// assert_eq!(local.active_ids(), 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LocalService {
    shared: Arc<ServiceShared>,
    /// Its semaphores and elections.
    groups: Arc<Groups>,
}

impl LocalService {
    /// A new, empty service.
    pub fn new() -> Self {
        LocalService {
            shared: Arc::new(ServiceShared::new()),
            groups: Arc::default(),
        }
    }

    /// How many ids are currently held or waited for.
    pub fn active_ids(&self) -> usize {
        self.shared.table().active()
    }

    /// How many ids the service keeps track of: those some live locker was made for, held or
    /// not. An id takes memory only while a locker of it lives, so this returns to 0 when
    /// every locker has been dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// # use lock_core::{Service, SessionConfig};
    /// # use lock_local::LocalService;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> lock_core::Result<()> {
    /// let local = LocalService::new();
    /// let session = lock_core::backend::service(local.clone())
    ///     .new_session(SessionConfig::default())
    ///     .await?;
    /// let mut locker = session.new_locker("jobs/nightly");
    /// assert_eq!((local.tracked_ids(), local.active_ids()), (1, 0));
    /// drop(locker);
    /// assert_eq!(local.tracked_ids(), 0);
    /// # Ok(()) }
    /// ```
    pub fn tracked_ids(&self) -> usize {
        self.shared.table().len()
    }
}

impl Default for LocalService {
    fn default() -> Self {
        LocalService::new()
    }
}

impl backend::Service for LocalService {
    /// The TTL is not used (see `LocalSession`); the handles apply the timeout.
    fn new_session(&self, _: SessionConfig) -> OpFuture<'_, Result<Arc<dyn backend::Session>>> {
        OpFuture::ready(self.open_session())
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.close_now())
    }
}

impl LocalService {
    fn open_session(&self) -> Result<Arc<dyn backend::Session>> {
        Ok(self.session()?)
    }

    /// Opens a session, as its own type (what `new_session` opens): for backends built on this
    /// one.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] once the service is closed.
    pub fn session(&self) -> Result<Arc<LocalSession>> {
        if self.shared.is_closed() {
            return Err(Error::AlreadyClosed("the service was closed"));
        }
        Ok(LocalSession::new(self.shared.clone(), self.groups.clone()))
    }

    /// Ends every hold and wait, then every watched session's `done()`. Sessions see the
    /// flag: no lock is granted after it is set.
    fn close_now(&self) -> Result<()> {
        if self.shared.closed.swap(true, SeqCst) {
            return Err(Error::AlreadyClosed("the service was already closed"));
        }
        // Lockers taken out of queues are dropped after the table mutex: dropping the last
        // handle of a locker takes it.
        let (wakes, lockers) = self.shared.table().close();
        self.groups.close();
        wakes.into_iter().for_each(Wake::wake);
        drop(lockers);
        let watchers = self.shared.watchers().take().unwrap_or_default();
        watchers.into_live().for_each(|session| session.end());
        Ok(())
    }
}

impl fmt::Debug for LocalService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalService")
            .field("active_ids", &self.active_ids())
            .finish()
    }
}
