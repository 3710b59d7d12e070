//! A locker of the local backend.

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::Arc;

use lock_core::{async_trait, Error, Held, Locker, Result, Signal};

use crate::session::SessionShared;
use crate::table::{Attempt, Waiter, CANCELED, HELD, IDLE};

/// The state of one locker, shared with the table's queues.
#[derive(Debug)]
pub(crate) struct LockerShared {
    pub(crate) key: u64,
    pub(crate) id: Arc<str>,
    /// Why the id is unusable, if it is.
    invalid_id: Option<String>,
    pub(crate) session: Arc<SessionShared>,
    /// Fired on every release; one epoch per hold.
    pub(crate) signal: Arc<Signal>,
    /// IDLE, WAITING or HELD; written under the table mutex.
    pub(crate) state: AtomicU8,
    /// Token and signal epoch of the current hold; written under the table mutex.
    pub(crate) token: AtomicU64,
    pub(crate) epoch: AtomicU64,
}

impl LockerShared {
    pub(crate) fn held(&self) -> Held {
        Held::new(
            self.signal.clone(),
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
                id: Arc::from(id),
                invalid_id: lock_core::validate_id(id).err().map(|e| match e {
                    Error::InvalidId(reason) => reason,
                    other => other.to_string(),
                }),
                session,
                signal: Arc::new(Signal::new()),
                state: AtomicU8::new(IDLE),
                token: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
            }),
        }
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

#[async_trait]
impl Locker for LocalLocker {
    async fn lock(&self) -> Result<Held> {
        let waiter = match self.attempt(true)? {
            Attempt::Granted(held) => return Ok(held),
            Attempt::Queued(waiter) => waiter,
            Attempt::Busy => unreachable!("queue was requested"),
        };
        let mut wait = Wait {
            waiter,
            finished: false,
        };
        match self.shared.session.timeout {
            None => wait.until_granted().await,
            Some(limit) => match tokio::time::timeout(limit, wait.until_granted()).await {
                Ok(outcome) => outcome,
                Err(_) => wait.give_up(limit),
            },
        }
    }

    async fn try_lock(&self) -> Result<Option<Held>> {
        match self.attempt(false)? {
            Attempt::Granted(held) => Ok(Some(held)),
            Attempt::Busy => Ok(None),
            Attempt::Queued(_) => unreachable!("no queueing was requested"),
        }
    }

    async fn unlock(&self) -> Result<()> {
        let l = &self.shared;
        let mut table = l.session.service.table();
        l.session.check_open()?;
        if l.state.load(Relaxed) != HELD {
            return Err(Error::NotHeld);
        }
        table.release(l);
        Ok(())
    }

    fn id(&self) -> &str {
        &self.shared.id
    }
}

impl Drop for LocalLocker {
    fn drop(&mut self) {
        let l = &self.shared;
        l.session.service.table().evict(l);
        l.session.forget_locker(l.key);
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
struct Wait {
    waiter: Arc<Waiter>,
    finished: bool,
}

impl Wait {
    async fn until_granted(&mut self) -> Result<Held> {
        loop {
            // `notify_one` stores a permit, so a grant between this check and the await is
            // not missed.
            match self.waiter.state.load(Acquire) {
                HELD => {
                    self.finished = true;
                    return Ok(self.waiter.locker.held());
                }
                CANCELED => {
                    self.finished = true;
                    return Err(Error::Canceled(
                        "the session ended while waiting for the lock".into(),
                    ));
                }
                _ => self.waiter.notify.notified().await,
            }
        }
    }

    /// The timeout expired: take the lock if it was granted in the meantime, else withdraw.
    fn give_up(&mut self, limit: std::time::Duration) -> Result<Held> {
        let mut table = self.waiter.locker.session.service.table();
        self.finished = true;
        match self.waiter.state.load(Acquire) {
            HELD => Ok(self.waiter.locker.held()),
            CANCELED => Err(Error::Canceled(
                "the session ended while waiting for the lock".into(),
            )),
            _ => {
                table.withdraw(&self.waiter);
                Err(Error::Timeout(limit))
            }
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut table = self.waiter.locker.session.service.table();
        match self.waiter.state.load(Acquire) {
            HELD => table.release(&self.waiter.locker),
            CANCELED => {}
            _ => table.withdraw(&self.waiter),
        }
    }
}

impl LocalLocker {
    pub(crate) fn weak(&self) -> std::sync::Weak<LockerShared> {
        Arc::downgrade(&self.shared)
    }
}
