//! The local service: one id table for the whole process (or for each service opened).

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::DefaultHashBuilder;
use lock_core::backend::{self, OpFuture};
use lock_core::{Error, Result, SessionConfig};

use crate::session::LocalSession;
use crate::table::{CacheLine, Table, Wake};
use crate::weak_list::WeakList;

#[derive(Debug, Default)]
pub(crate) struct ServiceShared {
    /// On cache lines of its own: every session clones and drops the `Arc` around this struct,
    /// and those count updates must not take the mutex's line away from a locker on another
    /// core (measured: the counter example's ratio to its baseline dropped ~6 % on two workers).
    table: CacheLine<Mutex<Table>>,
    /// Set once, by `close`, before it ends the holds and waits in the table; every attempt
    /// reads it after it took its id or claimed its locker (see `LocalSession::check_open`).
    closed: AtomicBool,
    /// Open sessions whose `done()` was asked for, to fire when the service closes; `None`
    /// once it closed. Other sessions learn of the close from `closed`, and their holds and
    /// waits are in the table.
    watchers: Mutex<Option<WeakList<LocalSession>>>,
    hasher: DefaultHashBuilder,
}

impl ServiceShared {
    /// The table hash of `id`; lockers compute it once.
    pub(crate) fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        // The table is consistent at every unlock point (no code panics while holding it
        // mid-update), so a poisoned mutex is safe to keep using.
        self.table.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watchers(&self) -> MutexGuard<'_, Option<WeakList<LocalSession>>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Fire `session`'s `done()` when the service closes (at once if it has).
    pub(crate) fn watch(&self, session: &Arc<LocalSession>) {
        match self.watchers().as_mut() {
            Some(watchers) => watchers.push(Arc::downgrade(session)),
            None => session.end(),
        }
    }
}

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
/// let service = Service::from_backend(local.clone()); // what `lock::new("local:")` returns
/// let session = service.new_session(SessionConfig::default()).await?;
/// let held = session.new_locker("reports/daily").lock().await?;
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
}

impl LocalService {
    /// A new, empty service.
    pub fn new() -> Self {
        LocalService {
            shared: Arc::new(ServiceShared {
                watchers: Mutex::new(Some(WeakList::default())),
                ..ServiceShared::default()
            }),
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
    /// let session = Service::from_backend(local.clone())
    ///     .new_session(SessionConfig::default())
    ///     .await?;
    /// let locker = session.new_locker("jobs/nightly");
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
    fn new_session(
        &self,
        config: SessionConfig,
    ) -> OpFuture<'_, Result<Arc<dyn backend::Session>>> {
        OpFuture::ready(self.open_session(&config))
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.close_now())
    }
}

impl LocalService {
    fn open_session(&self, config: &SessionConfig) -> Result<Arc<dyn backend::Session>> {
        config.validate()?;
        if self.shared.is_closed() {
            return Err(Error::AlreadyClosed("the service was closed"));
        }
        Ok(LocalSession::new(self.shared.clone(), config.timeout))
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
