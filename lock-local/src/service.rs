//! The local service: one id table for the whole process (or for each service opened).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use lock_core::{async_trait, Error, Result, Service, Session, SessionConfig};

use crate::session::{LocalSession, SessionShared};
use crate::table::Table;

#[derive(Debug, Default)]
pub(crate) struct ServiceShared {
    table: Mutex<Table>,
    /// Open sessions; `None` once the service is closed.
    sessions: Mutex<Option<HashMap<u64, Weak<SessionShared>>>>,
    next_key: AtomicU64,
}

impl ServiceShared {
    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        // The table is consistent at every unlock point (no code panics while holding it
        // mid-update), so a poisoned mutex is safe to keep using.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sessions(&self) -> MutexGuard<'_, Option<HashMap<u64, Weak<SessionShared>>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Relaxed)
    }

    pub(crate) fn forget_session(&self, key: u64) {
        if let Some(sessions) = self.sessions().as_mut() {
            sessions.remove(&key);
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
                sessions: Mutex::new(Some(HashMap::new())),
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

#[async_trait]
impl Service for LocalService {
    async fn new_session(&self, config: &SessionConfig) -> Result<Box<dyn Session>> {
        config.validate()?;
        let key = self.shared.next_key();
        let session = Arc::new(SessionShared::new(key, self.shared.clone(), config.timeout));
        match self.shared.sessions().as_mut() {
            Some(sessions) => sessions.insert(key, Arc::downgrade(&session)),
            None => return Err(Error::AlreadyClosed("the service was closed")),
        };
        Ok(Box::new(LocalSession::new(session)))
    }

    async fn close(&self) -> Result<()> {
        let Some(sessions) = self.shared.sessions().take() else {
            return Err(Error::AlreadyClosed("the service was already closed"));
        };
        for session in sessions.into_values().filter_map(|s| s.upgrade()) {
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
