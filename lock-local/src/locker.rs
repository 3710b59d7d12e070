//! A locker of the local backend.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use lock_core::{async_trait, Error, HasSignal, Held, Locker, Result, Signal};

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
                token: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
            }),
        }
    }

    /// Takes the table mutex after checking what can be checked without it.
    fn attempt(&self, queue: Option<&Waker>) -> Result<Attempt> {
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

#[async_trait]
impl Locker for LocalLocker {
    async fn lock(&self) -> Result<Held> {
        let mut acquire = std::pin::pin!(Acquiring {
            locker: self,
            queued: false,
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

    async fn try_lock(&self) -> Result<Option<Held>> {
        match self.attempt(None)? {
            Attempt::Granted => Ok(Some(self.shared.held())),
            Attempt::Busy => Ok(None),
            Attempt::Queued => unreachable!("no queueing was requested"),
        }
    }

    async fn unlock(&self) -> Result<()> {
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

/// A `lock()` call: takes the lock or queues with the task's waker (in the table, under the
/// mutex the attempt holds anyway). Dropping it unfinished withdraws from the queue, or passes
/// the lock on if it was granted meanwhile: cancel safety.
struct Acquiring<'a> {
    locker: &'a LocalLocker,
    queued: bool,
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
        match l.state.load(Acquire) {
            HELD => Some(Ok(l.held())),
            CANCELED => {
                l.state.store(IDLE, Relaxed);
                Some(Err(canceled()))
            }
            _ => None,
        }
    }

    /// The timeout expired: take the lock if it was granted in the meantime, else withdraw.
    fn give_up(mut self: Pin<&mut Self>, limit: std::time::Duration) -> Result<Held> {
        let service = self.shared().session.service.clone();
        let mut table = service.table();
        self.finished = true;
        if let Some(outcome) = self.outcome() {
            return outcome;
        }
        let _ = table.withdraw(self.shared());
        Err(Error::Timeout(limit))
    }
}

impl Future for Acquiring<'_> {
    type Output = Result<Held>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Held>> {
        if !self.queued {
            return match self.locker.attempt(Some(cx.waker())) {
                Ok(Attempt::Granted) => {
                    self.finished = true;
                    Poll::Ready(Ok(self.shared().held()))
                }
                Ok(Attempt::Queued) => {
                    self.queued = true;
                    Poll::Pending
                }
                Ok(Attempt::Busy) => unreachable!("a waker was given"),
                Err(e) => {
                    self.finished = true;
                    Poll::Ready(Err(e))
                }
            };
        }
        if let Some(outcome) = self.outcome() {
            self.finished = true;
            return Poll::Ready(outcome);
        }
        // Polled while still waiting (another task, or a spurious wake-up): refresh the waker
        // under the mutex, where grants happen.
        let service = self.shared().session.service.clone();
        let mut table = service.table();
        if let Some(outcome) = self.outcome() {
            self.finished = true;
            return Poll::Ready(outcome);
        }
        table.rewake(self.shared(), cx.waker());
        Poll::Pending
    }
}

impl Drop for Acquiring<'_> {
    fn drop(&mut self) {
        if !self.queued || self.finished {
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
            _ => {
                let _ = table.withdraw(l);
            }
        }
    }
}

impl LocalLocker {
    pub(crate) fn weak(&self) -> std::sync::Weak<LockerShared> {
        Arc::downgrade(&self.shared)
    }
}
