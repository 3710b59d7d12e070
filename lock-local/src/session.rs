//! A session of the local backend.

use std::fmt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use lock_core::backend::{self, OpFuture};
use lock_core::{Done, Error, LossCause, Result};

use crate::permits::{Groups, Kind, PermitLocker};
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
    /// The service's semaphores and elections.
    groups: Arc<Groups>,
    /// Every semaphore and election party made by the session.
    parties: Mutex<WeakList<PermitLocker>>,
}

impl LocalSession {
    pub(crate) fn new(service: Arc<ServiceShared>, groups: Arc<Groups>) -> Arc<Self> {
        Arc::new(LocalSession {
            core: Arc::new(SessionCore::new(service)),
            lockers: Mutex::new(WeakList::default()),
            groups,
            parties: Mutex::new(WeakList::default()),
        })
    }

    /// A locker of lock `id` (what `new_locker` returns), as its own type: for backends built
    /// on this one.
    pub fn locker(&self, id: &str, party: backend::Party) -> Arc<LocalLocker> {
        let locker = LocalLocker::new(id, self.core.clone(), party);
        self.lockers_list().push(locker.weak());
        locker
    }

    /// A party of semaphore `id` with `limit` permits (`new_semaphore`), as its own type.
    pub fn semaphore(&self, id: &str, limit: u32, party: backend::Party) -> Arc<PermitLocker> {
        self.party(Kind::Semaphore, id, limit, party)
    }

    /// A party of election `name` (`new_election`), as its own type.
    pub fn election(&self, name: &str, party: backend::Party) -> Arc<PermitLocker> {
        self.party(Kind::Election, name, 1, party)
    }

    fn party(&self, kind: Kind, id: &str, limit: u32, party: backend::Party) -> Arc<PermitLocker> {
        let locker = self.groups.party(kind, id, limit, self.core.clone(), party);
        let mut parties = self.parties.lock().unwrap_or_else(|e| e.into_inner());
        parties.push(Arc::downgrade(&locker));
        locker
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
        self.end_because(LossCause::SessionEnded, "the session ended")
    }

    /// Ends the session as a backend whose session ended otherwise would (for backends built on
    /// this one: a test backend that expires a session): its holds are lost with `cause` and
    /// `detail`, its waits fail with `Canceled`, `done()` resolves, and later attempts fail with
    /// `AlreadyClosed`.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] if the session had already ended.
    pub fn end_because(&self, cause: LossCause, detail: &'static str) -> Result<()> {
        if self.core.closed.swap(true, SeqCst) {
            return Err(Error::AlreadyClosed("the session was already closed"));
        }
        let lockers = std::mem::take(&mut *self.lockers_list());
        // Only lockers that hold, wait or are attempting need their slot's mutex; an idle one
        // that starts an attempt now will see `closed` (see `SessionCore::check_open`).
        for locker in lockers.into_live() {
            if locker.state.load(SeqCst) != IDLE || locker.slot.is_held_by(&locker) {
                locker.evict((cause, detail));
            }
        }
        let parties = std::mem::take(&mut *self.parties.lock().unwrap_or_else(|e| e.into_inner()));
        for party in parties.into_live() {
            party.evict(cause, detail);
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
        self.locker(id, party)
    }

    fn new_semaphore(
        &self,
        id: &str,
        limit: u32,
        party: backend::Party,
    ) -> Result<Arc<dyn backend::Locker>> {
        Ok(self.party(Kind::Semaphore, id, limit, party))
    }

    fn new_election(
        &self,
        name: &str,
        party: backend::Party,
    ) -> Result<Arc<dyn backend::Election>> {
        Ok(self.party(Kind::Election, name, 1, party))
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
