//! A session of the local backend.

use std::fmt;
use std::sync::atomic::{fence, AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use lock_core::backend::{self, OpFuture, Signal};
use lock_core::{Done, Error, LossCause, Result};

use crate::locker::LocalLocker;
use crate::service::ServiceShared;
use crate::table::IDLE;
use crate::weak_list::WeakList;

/// A session of the `local:` backend; see [`lock_core::backend::Session`]. The TTL is not used:
/// the process is the whole world, so a session lives until it is closed, its service is
/// closed, or its last handle (its lockers included: each keeps it) is dropped.
pub struct LocalSession {
    pub(crate) service: Arc<ServiceShared>,
    pub(crate) timeout: Option<Duration>,
    /// This session, for the lockers it makes (each keeps it open).
    me: Weak<LocalSession>,
    closed: AtomicBool,
    /// Fired once, when the session ends; made by the first `done()` (a `Done` holds it, not
    /// the session, so that waiting for the end does not keep the session open).
    done: OnceLock<Arc<Signal>>,
    /// Whether the service must fire `done` when it closes.
    watched: AtomicBool,
    /// Every locker made by the session.
    lockers: Mutex<WeakList<LocalLocker>>,
}

impl LocalSession {
    pub(crate) fn new(service: Arc<ServiceShared>, timeout: Option<Duration>) -> Arc<Self> {
        Arc::new_cyclic(|me| LocalSession {
            service,
            timeout,
            me: me.clone(),
            closed: AtomicBool::new(false),
            done: OnceLock::new(),
            watched: AtomicBool::new(false),
            lockers: Mutex::new(WeakList::default()),
        })
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

    fn lockers_list(&self) -> std::sync::MutexGuard<'_, WeakList<LocalLocker>> {
        self.lockers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the session: releases its locks, cancels its waits, resolves `done()`.
    fn close_now(&self) -> Result<()> {
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
        self.end();
        if self.service.is_closed() {
            return Err(Error::AlreadyClosed(
                "the service was closed, which closed its sessions",
            ));
        }
        Ok(())
    }

    /// The session is over (closed, or its service closed): `done()` resolves.
    pub(crate) fn end(&self) {
        // Pairs with the fence in `done`: either that call sees the end, or this sees its
        // signal.
        fence(SeqCst);
        if let Some(done) = self.done.get() {
            done.fire();
        }
    }

    fn is_over(&self) -> bool {
        self.closed.load(SeqCst) || self.service.is_closed()
    }
}

impl backend::Session for LocalSession {
    fn new_locker(&self, id: &str, _handle: &lock_core::Session) -> Arc<dyn backend::Locker> {
        // The locker keeps this session open by its `Arc`, not the handle's: the session ends
        // (`Drop`) when its last `Arc` goes.
        let Some(session) = self.me.upgrade() else {
            unreachable!("a session in use has a handle");
        };
        let locker = LocalLocker::new(id, session);
        self.lockers_list().push(locker.weak());
        locker
    }

    fn done(&self) -> Done {
        let done = self.done.get_or_init(|| Arc::new(Signal::new())).clone();
        if !self.watched.swap(true, Relaxed) {
            if let Some(me) = self.me.upgrade() {
                self.service.watch(&me);
            }
        }
        // Pairs with the fence in `end`: a session that ended before its signal existed
        // fires it here.
        fence(SeqCst);
        if self.is_over() {
            done.fire();
        }
        Done::new(done, 0, None)
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.close_now())
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        if !self.closed.load(SeqCst) {
            let _ = self.close_now();
        }
    }
}

impl fmt::Debug for LocalSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSession")
            .field("closed", &self.closed.load(SeqCst))
            .field("timeout", &self.timeout)
            .finish()
    }
}
