//! A session of the local backend.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lock_core::{async_trait, Done, Error, Locker, Result, Session, Signal};

use crate::locker::{LocalLocker, LockerShared};
use crate::service::ServiceShared;

#[derive(Debug)]
pub(crate) struct SessionShared {
    pub(crate) key: u64,
    pub(crate) service: Arc<ServiceShared>,
    pub(crate) timeout: Option<Duration>,
    closed: AtomicBool,
    /// Fired once, when the session ends.
    done: Arc<Signal>,
    lockers: Mutex<HashMap<u64, Weak<LockerShared>>>,
}

impl SessionShared {
    pub(crate) fn new(key: u64, service: Arc<ServiceShared>, timeout: Option<Duration>) -> Self {
        SessionShared {
            key,
            service,
            timeout,
            closed: AtomicBool::new(false),
            done: Arc::new(Signal::new()),
            lockers: Mutex::new(HashMap::new()),
        }
    }

    /// Call with the table mutex held: `close` sets `closed` before it takes that mutex to
    /// evict, so a locker that passes this check is evicted by `close` if it comes.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(SeqCst) {
            return Err(Error::AlreadyClosed("the session was closed"));
        }
        Ok(())
    }

    pub(crate) fn forget_locker(&self, key: u64) {
        self.lockers_map().remove(&key);
    }

    fn lockers_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<LockerShared>>> {
        self.lockers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the session: releases its locks, cancels its waits, resolves `done()`.
    pub(crate) fn close(&self) -> Result<()> {
        if self.closed.swap(true, SeqCst) {
            return Err(Error::AlreadyClosed("the session was already closed"));
        }
        self.service.forget_session(self.key);
        let lockers: Vec<_> = self
            .lockers_map()
            .drain()
            .filter_map(|(_, l)| l.upgrade())
            .collect();
        {
            let mut table = self.service.table();
            for locker in &lockers {
                table.evict(locker);
            }
        }
        self.done.fire();
        Ok(())
    }
}

/// A session of the `local:` backend; see [`lock_core::Session`]. The TTL is not used: the
/// process is the whole world, so a session lives until it is closed or dropped.
pub struct LocalSession {
    shared: Arc<SessionShared>,
}

impl LocalSession {
    pub(crate) fn new(shared: Arc<SessionShared>) -> Self {
        LocalSession { shared }
    }
}

#[async_trait]
impl Session for LocalSession {
    fn new_locker(&self, id: &str) -> Box<dyn Locker> {
        let key = self.shared.service.next_key();
        let locker = LocalLocker::new(key, id, self.shared.clone());
        self.shared.lockers_map().insert(key, locker.weak());
        Box::new(locker)
    }

    fn done(&self) -> Done {
        Done::new(self.shared.done.clone(), 0, None)
    }

    async fn close(&self) -> Result<()> {
        self.shared.close()
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        let _ = self.shared.close();
    }
}

impl fmt::Debug for LocalSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSession")
            .field("closed", &self.shared.closed.load(SeqCst))
            .field("timeout", &self.shared.timeout)
            .finish()
    }
}
