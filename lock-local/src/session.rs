//! A session of the local backend.

use std::fmt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use lock_core::backend::{self, OpFuture};
use lock_core::{Done, Error, LossCause, Result};

use crate::table::{LocalLocker, ServiceShared, SessionCore, IDLE};
use crate::weak_list::WeakList;

/// A session of the `local:` backend; see [`lock_core::backend::Session`]. The TTL is not used:
/// the process is the whole world, so a session lives until it is closed, its service is
/// closed, or its last handle (its lockers included: each keeps it) is dropped. The timeout is
/// the handles' to apply.
pub struct LocalSession {
    /// What its lockers need of it (they keep it, and the handles keep this session).
    core: Arc<SessionCore>,
    /// Every locker made by the session.
    lockers: Mutex<WeakList<LocalLocker>>,
}

impl LocalSession {
    pub(crate) fn new(service: Arc<ServiceShared>) -> Arc<Self> {
        Arc::new(LocalSession {
            core: Arc::new(SessionCore::new(service)),
            lockers: Mutex::new(WeakList::default()),
        })
    }

    #[cfg(test)]
    pub(crate) fn core(&self) -> &Arc<SessionCore> {
        &self.core
    }

    fn lockers_list(&self) -> std::sync::MutexGuard<'_, WeakList<LocalLocker>> {
        self.lockers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the session: releases its locks, cancels its waits, resolves `done()`.
    fn close_now(&self) -> Result<()> {
        if self.core.closed.swap(true, SeqCst) {
            return Err(Error::AlreadyClosed("the session was already closed"));
        }
        let lockers = std::mem::take(&mut *self.lockers_list());
        // Only lockers that hold, wait or are attempting need their slot's mutex; an idle one
        // that starts an attempt now will see `closed` (see `SessionCore::check_open`).
        for locker in lockers.into_live() {
            if locker.state.load(SeqCst) != IDLE || locker.slot.is_held_by(&locker) {
                locker.evict((LossCause::SessionEnded, "the session ended"));
            }
        }
        self.core.end();
        if self.core.service.is_closed() {
            return Err(Error::AlreadyClosed(
                "the service was closed, which closed its sessions",
            ));
        }
        Ok(())
    }
}

impl backend::Session for LocalSession {
    fn new_locker(&self, id: &str, party: backend::Party) -> Arc<dyn backend::Locker> {
        // The party keeps this session open: it ends (`Drop`) when the last handle, locker or
        // hold of it goes.
        let locker = LocalLocker::new(id, self.core.clone(), party);
        self.lockers_list().push(locker.weak());
        locker
    }

    fn done(&self) -> Option<Done> {
        Some(self.core.done())
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.close_now())
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        if !self.core.closed.load(SeqCst) {
            let _ = self.close_now();
        }
    }
}

impl fmt::Debug for LocalSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSession")
            .field("closed", &self.core.closed.load(SeqCst))
            .finish()
    }
}
