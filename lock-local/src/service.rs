//! The local service: one id table for the whole process (or for each service opened).

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::DefaultHashBuilder;
use lock_core::{Error, OpFuture, Result, Service, Session, SessionConfig};

use crate::session::{LocalSession, SessionShared};
use crate::table::Table;
use crate::weak_list::WeakList;

#[derive(Debug, Default)]
pub(crate) struct ServiceShared {
    table: Mutex<Table>,
    /// Open sessions; `None` once the service is closed.
    sessions: Mutex<Option<WeakList<SessionShared>>>,
    next_key: AtomicU64,
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
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sessions(&self) -> MutexGuard<'_, Option<WeakList<SessionShared>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Relaxed)
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
/// let service = LocalService::new();
/// let session = service.new_session(&SessionConfig::default()).await?;
/// let locker = session.new_locker("reports/daily");
/// let held = locker.lock().await?;
/// assert!(!held.is_lost());
/// locker.unlock().await?;
/// assert!(held.is_lost());
/// assert_eq!(service.active_ids(), 0);
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
                sessions: Mutex::new(Some(WeakList::default())),
                ..ServiceShared::default()
            }),
        }
    }

    /// How many ids are currently held or waited for. An id nobody holds or waits for takes no
    /// memory, so this returns to 0 when all locks are released.
    pub fn active_ids(&self) -> usize {
        self.shared.table().len()
    }
}

impl Default for LocalService {
    fn default() -> Self {
        LocalService::new()
    }
}

impl Service for LocalService {
    fn new_session<'a>(
        &'a self,
        config: &'a SessionConfig,
    ) -> OpFuture<'a, Result<Box<dyn Session>>> {
        OpFuture::ready(self.open_session(config))
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.close_now())
    }
}

impl LocalService {
    fn open_session(&self, config: &SessionConfig) -> Result<Box<dyn Session>> {
        config.validate()?;
        let session = Arc::new(SessionShared::new(self.shared.clone(), config.timeout));
        match self.shared.sessions().as_mut() {
            Some(sessions) => sessions.push(Arc::downgrade(&session)),
            None => return Err(Error::AlreadyClosed("the service was closed")),
        };
        Ok(Box::new(LocalSession::new(session)))
    }

    fn close_now(&self) -> Result<()> {
        let Some(sessions) = self.shared.sessions().take() else {
            return Err(Error::AlreadyClosed("the service was already closed"));
        };
        for session in sessions.into_live() {
            let _ = session.close();
        }
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
