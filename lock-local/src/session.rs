//! A session of the local backend.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::backend::{self, HasSignal, OpFuture, Signal};
use lock_core::{Done, Error, LossCause, Result};

use crate::locker::{LocalLocker, LockerShared};
use crate::service::ServiceShared;
use crate::table::IDLE;
use crate::weak_list::WeakList;

#[derive(Debug)]
pub(crate) struct SessionShared {
    pub(crate) service: Arc<ServiceShared>,
    pub(crate) timeout: Option<Duration>,
    closed: AtomicBool,
    /// Fired once, when the session ends.
    done: Signal,
    /// Whether `done()` was asked for, so the service must fire it when it closes.
    watched: AtomicBool,
    /// Every locker made by the session.
    lockers: Mutex<WeakList<LockerShared>>,
}

impl HasSignal for SessionShared {
    fn signal(&self) -> &Signal {
        &self.done
    }
}

impl SessionShared {
    pub(crate) fn new(service: Arc<ServiceShared>, timeout: Option<Duration>) -> Self {
        SessionShared {
            service,
            timeout,
            closed: AtomicBool::new(false),
            done: Signal::new(),
            watched: AtomicBool::new(false),
            lockers: Mutex::new(WeakList::default()),
        }
    }

    /// Call after the locker took its slot's word or claimed its attempt in its state: a
    /// `close` (of the session or of the service) sets its flag before it reads the slots'
    /// words and the lockers' states, so a locker that passes this check is evicted by a
    /// `close` that comes.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(SeqCst) {
            return Err(Error::AlreadyClosed("the session was closed"));
        }
        if self.service.is_closed() {
            return Err(Error::AlreadyClosed("the service was closed"));
        }
        Ok(())
    }

    fn lockers_list(&self) -> std::sync::MutexGuard<'_, WeakList<LockerShared>> {
        self.lockers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the session: releases its locks, cancels its waits, resolves `done()`.
    pub(crate) fn close(&self) -> Result<()> {
        if self.closed.swap(true, SeqCst) {
            return Err(Error::AlreadyClosed("the session was already closed"));
        }
        let lockers = std::mem::take(&mut *self.lockers_list());
        // Only lockers that hold, wait or are attempting need their slot's mutex; an idle one
        // that starts an attempt now will see `closed` (see `check_open`).
        for locker in lockers.into_live() {
            if locker.state.load(SeqCst) != IDLE || locker.slot.is_held_by(&locker) {
                locker.evict((LossCause::SessionEnded, "the session ended"));
            }
        }
        self.done.fire();
        if self.service.is_closed() {
            return Err(Error::AlreadyClosed(
                "the service was closed, which closed its sessions",
            ));
        }
        Ok(())
    }

    /// The signal `done()` waits on; from now on the service fires it too when it closes.
    fn watch(self: &Arc<Self>) {
        if !self.watched.swap(true, Relaxed) {
            self.service.watch(self);
        }
    }

    /// The service closed: the session is over.
    pub(crate) fn end(&self) {
        self.done.fire();
    }
}

/// A session of the `local:` backend; see [`lock_core::backend::Session`]. The TTL is not used: the
/// process is the whole world, so a session lives until it is closed or dropped.
pub struct LocalSession {
    shared: Arc<SessionShared>,
}

impl LocalSession {
    pub(crate) fn new(shared: Arc<SessionShared>) -> Self {
        LocalSession { shared }
    }
}

impl backend::Session for LocalSession {
    fn new_locker(&self, id: &str, session: lock_core::Session) -> Arc<dyn backend::Locker> {
        let locker = LocalLocker::new(id, self.shared.clone(), session);
        self.shared.lockers_list().push(locker.weak());
        Arc::new(locker)
    }

    fn done(&self) -> Done {
        self.shared.watch();
        Done::new(self.shared.clone(), 0, None)
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.shared.close())
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        if !self.shared.closed.load(SeqCst) {
            let _ = self.shared.close();
        }
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
