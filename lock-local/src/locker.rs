//! A locker of the local backend.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

use lock_core::{Error, HasSignal, Held, Locker, OpFuture, Result, Signal};

use crate::session::SessionShared;
use crate::table::{Attempt, CANCELED, HELD, IDLE};

/// The state of one locker, shared with the table's queues.
#[derive(Debug)]
pub(crate) struct LockerShared {
    pub(crate) key: u64,
    pub(crate) id: Arc<str>,
    /// The id's hash in the table, computed once.
    pub(crate) hash: u64,
    /// Why the id is unusable, if it is.
    invalid_id: Option<String>,
    pub(crate) session: Arc<SessionShared>,
    /// Fired on every release; one epoch per hold.
    pub(crate) signal: Signal,
    /// IDLE, WAITING, HELD or CANCELED; written under the table mutex.
    pub(crate) state: AtomicU8,
    /// The waker of a pending `lock()`. Registered by the waiter, woken by whoever granted or
    /// canceled it (after setting `state`), so a grant is never missed.
    waker: AtomicWaker,
    /// Token and signal epoch of the current hold; written under the table mutex.
    pub(crate) token: AtomicU64,
    pub(crate) epoch: AtomicU64,
}

impl HasSignal for LockerShared {
    fn signal(&self) -> &Signal {
        &self.signal
    }
}

impl LockerShared {
    /// Wakes the pending `lock()`, if it has registered; call after changing `state`.
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    pub(crate) fn held(self: &Arc<Self>) -> Held {
        Held::new(
            self.clone(),
            self.epoch.load(Relaxed),
            None,
            self.token.load(Relaxed),
        )
    }
}

/// A locker of the `local:` backend; see [`lock_core::Locker`].
pub struct LocalLocker {
    shared: Arc<LockerShared>,
}

impl LocalLocker {
    pub(crate) fn new(key: u64, id: &str, session: Arc<SessionShared>) -> Self {
        LocalLocker {
            shared: Arc::new(LockerShared {
                key,
                hash: session.service.hash(id),
                id: Arc::from(id),
                invalid_id: lock_core::validate_id(id).err().map(|e| match e {
                    Error::InvalidId(reason) => reason,
                    other => other.to_string(),
                }),
                session,
                signal: Signal::new(),
                state: AtomicU8::new(IDLE),
                waker: AtomicWaker::new(),
                token: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
            }),
        }
    }

    async fn wait(&self) -> Result<Held> {
        let mut acquire = std::pin::pin!(Acquiring {
            locker: self,
            finished: false,
        });
        match self.shared.session.timeout {
            None => acquire.await,
            Some(limit) => match tokio::time::timeout(limit, acquire.as_mut()).await {
                Ok(outcome) => outcome,
                Err(_) => acquire.give_up(limit),
            },
        }
    }

    fn release(&self) -> Result<()> {
        let l = &self.shared;
        let mut table = l.session.service.table();
        l.session.check_open()?;
        if l.state.load(Relaxed) != HELD {
            return Err(Error::NotHeld);
        }
        let wake = table.release(l);
        drop(table);
        wake.wake();
        Ok(())
    }

    /// Takes the table mutex after checking what can be checked without it.
    fn attempt(&self, queue: bool) -> Result<Attempt> {
        let l = &self.shared;
        if let Some(reason) = &l.invalid_id {
            return Err(Error::InvalidId(reason.clone()));
        }
        let service = &l.session.service;
        let mut table = service.table();
        l.session.check_open()?;
        if l.state.load(Relaxed) != IDLE {
            return Err(Error::AlreadyLocked);
        }
        Ok(table.acquire(l, queue))
    }
}

impl Locker for LocalLocker {
    fn lock(&self) -> OpFuture<'_, Result<Held>> {
        match self.attempt(true) {
            Ok(Attempt::Granted) => OpFuture::ready(Ok(self.shared.held())),
            Err(e) => OpFuture::ready(Err(e)),
            // Queued behind the holder: the returned future waits (and withdraws if dropped).
            Ok(Attempt::Queued) => OpFuture::boxed(self.wait()),
            Ok(Attempt::Busy) => unreachable!("queueing was requested"),
        }
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Held>>> {
        OpFuture::ready(match self.attempt(false) {
            Ok(Attempt::Granted) => Ok(Some(self.shared.held())),
            Ok(Attempt::Busy) => Ok(None),
            Ok(Attempt::Queued) => unreachable!("no queueing was requested"),
            Err(e) => Err(e),
        })
    }

    fn unlock(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.release())
    }

    fn id(&self) -> &str {
        &self.shared.id
    }
}

impl Drop for LocalLocker {
    fn drop(&mut self) {
        let l = &self.shared;
        // No `lock()` can be pending (it borrows the locker), so an idle locker stays idle.
        if l.state.load(Acquire) != IDLE {
            let wake = l.session.service.table().evict(l);
            wake.wake();
        }
    }
}

impl fmt::Debug for LocalLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLocker")
            .field("id", &self.shared.id)
            .field("held", &(self.shared.state.load(Relaxed) == HELD))
            .finish()
    }
}

/// A queued `lock()` call. Dropping it unfinished withdraws from the queue, or passes the lock
/// on if it was granted meanwhile: cancel safety.
struct Acquiring<'a> {
    locker: &'a LocalLocker,
    finished: bool,
}

fn canceled() -> Error {
    Error::Canceled("the session ended while waiting for the lock".into())
}

impl Acquiring<'_> {
    fn shared(&self) -> &Arc<LockerShared> {
        &self.locker.shared
    }

    /// The outcome once the state left WAITING; `None` while it waits.
    fn outcome(&mut self) -> Option<Result<Held>> {
        let l = self.shared();
        let outcome = match l.state.load(Acquire) {
            HELD => Ok(l.held()),
            CANCELED => {
                l.state.store(IDLE, Relaxed);
                Err(canceled())
            }
            _ => return None,
        };
        self.finished = true;
        Some(outcome)
    }

    /// The timeout expired: take the lock if it was granted in the meantime, else withdraw.
    fn give_up(mut self: Pin<&mut Self>, limit: std::time::Duration) -> Result<Held> {
        let service = self.shared().session.service.clone();
        let mut table = service.table();
        if let Some(outcome) = self.outcome() {
            return outcome;
        }
        self.finished = true;
        table.withdraw(self.shared());
        Err(Error::Timeout(limit))
    }
}

impl Future for Acquiring<'_> {
    type Output = Result<Held>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Held>> {
        if let Some(outcome) = self.outcome() {
            return Poll::Ready(outcome);
        }
        self.shared().waker.register(cx.waker());
        // A grant that woke before we registered set the state first.
        match self.outcome() {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }
}

impl Drop for Acquiring<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let l = &self.locker.shared;
        let mut table = l.session.service.table();
        match l.state.load(Acquire) {
            HELD => {
                let wake = table.release(l);
                drop(table);
                wake.wake();
            }
            CANCELED => l.state.store(IDLE, Relaxed),
            _ => table.withdraw(l),
        }
        drop(l.waker.take());
    }
}

impl LocalLocker {
    pub(crate) fn weak(&self) -> std::sync::Weak<LockerShared> {
        Arc::downgrade(&self.shared)
    }
}
