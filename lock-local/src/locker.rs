//! A locker of the local backend.

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;

use lock_core::backend::{self, HasSignal, Hold, OpFuture, PendingOp, Signal};
use lock_core::{Error, LossCause, Result};

use crate::id::IdBuf;
use crate::session::SessionShared;
use crate::table::{Attempt, IfTaken, Wake, CANCELED, GRANTED, HELD, IDLE, WAITING};

/// The state of one locker, shared with the table's queues.
#[derive(Debug)]
pub(crate) struct LockerShared {
    pub(crate) id: IdBuf,
    /// The id's hash in the table, computed once.
    pub(crate) hash: u64,
    /// Why the id is unusable, if it is.
    invalid_id: Option<String>,
    pub(crate) session: Arc<SessionShared>,
    /// Fired on every release; one epoch per hold.
    pub(crate) signal: Signal,
    /// IDLE, WAITING, GRANTED, HELD or CANCELED (see the table module).
    pub(crate) state: AtomicU8,
    /// The waker of a pending `lock()`. Registered by the waiter, woken by whoever granted or
    /// canceled it (after setting `state`), so a grant is never missed.
    waker: AtomicWaker,
    /// Token and signal epoch of the current hold; written under the table mutex.
    pub(crate) token: AtomicU64,
    pub(crate) epoch: AtomicU64,
    /// The thread whose `lock()` returned the current hold (see [`this_thread`]).
    pub(crate) holder_thread: AtomicUsize,
    /// This locker held the lock before: its `lock()` queues behind a running holder at once
    /// instead of watching it (see [`LocalLocker::retry_then_queue`]).
    held_before: AtomicBool,
}

/// A cheap identity of the calling thread: the address of a thread-local.
pub(crate) fn this_thread() -> usize {
    thread_local!(static MARK: u8 = const { 0 });
    MARK.with(|mark| std::ptr::from_ref(mark) as usize)
}

impl HasSignal for LockerShared {
    fn signal(&self) -> &Signal {
        &self.signal
    }
}

impl LockerShared {
    /// What wakes the pending `lock()`, if it has registered; take it after changing `state`.
    pub(crate) fn wake_later(&self) -> Wake {
        Wake::new(self.waker.take())
    }

    pub(crate) fn held(self: &Arc<Self>) -> Hold {
        Hold::new(
            self.clone(),
            self.epoch.load(Relaxed),
            None,
            self.token.load(Relaxed),
        )
    }
}

/// Retries of a `lock()` that finds the holder running (the last one queues whatever it finds),
/// and how long it watches the holder before each (spin-loop hints of ~10 ns).
const SPIN_ROUNDS: u32 = 3;
const SPINS: u32 = 256;

/// A locker of the `local:` backend; see [`lock_core::backend::Locker`].
pub struct LocalLocker {
    shared: Arc<LockerShared>,
    /// The application's handle of the session, kept while the locker lives; dropped after
    /// the locker's `Drop` released what it held.
    _session: lock_core::Session,
}

impl LocalLocker {
    pub(crate) fn new(id: &str, session: Arc<SessionShared>, handle: lock_core::Session) -> Self {
        LocalLocker {
            _session: handle,
            shared: Arc::new(LockerShared {
                hash: session.service.hash(id),
                id: IdBuf::new(id),
                invalid_id: backend::validate_id(id).err().map(|e| match e {
                    Error::InvalidId(reason) => reason,
                    other => other.to_string(),
                }),
                session,
                signal: Signal::new(),
                state: AtomicU8::new(IDLE),
                waker: AtomicWaker::new(),
                token: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
                holder_thread: AtomicUsize::new(0),
                held_before: AtomicBool::new(false),
            }),
        }
    }

    /// Releases the current hold, or only the one with fencing token `token`.
    fn release_hold(&self, token: Option<u64>) -> Result<()> {
        let l = &self.shared;
        let mut table = l.session.service.table();
        l.session.check_open(&table)?;
        if l.state.load(Relaxed) != HELD || token.is_some_and(|t| t != l.token.load(Relaxed)) {
            return Err(Error::NotHeld);
        }
        let wake = table.release(l);
        drop(table);
        wake.wake();
        Ok(())
    }

    /// A holder that is running with the lock (and nobody queued) usually releases it within
    /// a microsecond: watch it for a moment (its state, without the table mutex) and retry
    /// before queueing, so that a short hold does not start a convoy of handoffs through the
    /// scheduler.
    ///
    /// Only a locker's first `lock()` does this: one that held the lock before queues at once,
    /// as tokio's `Mutex` does. Tasks that loop on lock/unlock then hand the lock over in FIFO
    /// order and go back to the scheduler each time, so tasks not yet run get their turn
    /// (watching, two such tasks passed the lock between each other and the other tasks of
    /// their workers waited: in 1000-task runs, up to half of the tasks got no turn).
    #[cold]
    fn retry_then_queue(&self, mut holder: Arc<LockerShared>) -> Result<Attempt> {
        for round in 1..=SPIN_ROUNDS {
            for _ in 0..SPINS {
                if holder.state.load(Relaxed) != HELD {
                    break;
                }
                std::hint::spin_loop();
            }
            let last = round == SPIN_ROUNDS;
            match self.attempt(if last {
                IfTaken::Queue
            } else {
                IfTaken::QueueUnlessRunning
            })? {
                Attempt::Running(next) => holder = next,
                other => return Ok(other),
            }
        }
        unreachable!("the last attempt queues")
    }

    /// Claims the locker, then takes the table mutex to acquire.
    fn attempt(&self, if_taken: IfTaken) -> Result<Attempt> {
        let l = &self.shared;
        if let Some(reason) = &l.invalid_id {
            return Err(Error::InvalidId(reason.clone()));
        }
        // One attempt at a time per locker. Claiming before checking the session: a `close`
        // that runs now either sees the claim (and evicts under the table mutex, so after
        // us) or is seen by the check.
        if l.state
            .compare_exchange(IDLE, WAITING, SeqCst, Relaxed)
            .is_err()
        {
            return Err(Error::AlreadyLocked);
        }
        let mut table = l.session.service.table();
        // Under the mutex, which the service holds while it closes the table.
        if let Err(e) = l.session.check_open(&table) {
            l.state.store(IDLE, Relaxed);
            return Err(e);
        }
        Ok(table.acquire(l, if_taken))
    }
}

/// Spends one unit of the running tokio task's cooperative budget, as tokio's own `Mutex`
/// does; `false` when the budget is used up and the task should yield first.
///
/// A free lock is taken on the spot, without a yield: without this, a task looping on
/// lock/unlock never gives its worker up, and the tasks that would queue behind it never run
/// (one task took almost every turn among 1000). Outside a tokio task there is no budget.
fn spend_budget() -> bool {
    match tokio::task::coop::poll_proceed(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(progress) => {
            progress.made_progress();
            true
        }
        Poll::Pending => false,
    }
}

impl backend::Locker for LocalLocker {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        if !spend_budget() {
            return OpFuture::boxed(async move {
                tokio::task::yield_now().await;
                self.lock().await
            });
        }
        let if_taken = match self.shared.held_before.load(Relaxed) {
            true => IfTaken::Queue,
            false => IfTaken::QueueUnlessRunning,
        };
        let attempt = match self.attempt(if_taken) {
            Ok(Attempt::Running(holder)) => self.retry_then_queue(holder),
            other => other,
        };
        match attempt {
            Ok(Attempt::Granted) => {
                self.shared.held_before.store(true, Relaxed);
                OpFuture::ready(Ok(self.shared.held()))
            }
            Err(e) => OpFuture::ready(Err(e)),
            // Queued behind the holder: the returned future waits (and withdraws if dropped).
            Ok(Attempt::Queued) => match self.shared.session.timeout {
                None => OpFuture::pending(self),
                Some(limit) => OpFuture::boxed(self.wait_at_most(limit)),
            },
            Ok(Attempt::Busy | Attempt::Running(_)) => unreachable!("the last attempt queues"),
        }
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        OpFuture::ready(match self.attempt(IfTaken::Fail) {
            Ok(Attempt::Granted) => Ok(Some(self.shared.held())),
            Ok(Attempt::Busy) => Ok(None),
            Ok(Attempt::Queued | Attempt::Running(_)) => unreachable!("no queueing was requested"),
            Err(e) => Err(e),
        })
    }

    fn unlock(&self, token: Option<u64>) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.release_hold(token))
    }

    fn unlock_now(&self, token: u64) -> Option<Result<()>> {
        Some(self.release_hold(Some(token)))
    }

    fn release(&self, token: u64) {
        // Not held any more (unlocked, evicted) is fine: there is nothing left to release.
        let _ = self.release_hold(Some(token));
    }

    fn id(&self) -> &str {
        self.shared.id.as_str()
    }
}

impl Drop for LocalLocker {
    fn drop(&mut self) {
        let l = &self.shared;
        // No `lock()` can be pending (it borrows the locker), so an idle locker stays idle.
        if l.state.load(Acquire) != IDLE {
            let wake = l
                .session
                .service
                .table()
                .evict(l, (LossCause::Unlocked, "the locker was dropped"));
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

fn canceled() -> Error {
    Error::Canceled("the session ended while waiting for the lock".into())
}

// A queued `lock()` without a timeout is an `OpFuture::pending` on the locker itself: the wait
// allocates nothing. Dropping it unfinished withdraws from the queue, or passes the lock on if
// it was granted meanwhile: cancel safety.
impl PendingOp<Result<Hold>> for LocalLocker {
    fn poll_op(&self, cx: &mut Context<'_>) -> Poll<Result<Hold>> {
        if let Some(outcome) = self.outcome() {
            return Poll::Ready(outcome);
        }
        self.shared.waker.register(cx.waker());
        // A grant that woke before we registered set the state first.
        match self.outcome() {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }

    fn cancel_op(&self) {
        let l = &self.shared;
        let mut table = l.session.service.table();
        match l.state.load(Acquire) {
            GRANTED | HELD => {
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
    /// The outcome of a queued `lock()` once the state left WAITING; `None` while it waits.
    fn outcome(&self) -> Option<Result<Hold>> {
        let l = &self.shared;
        match l.state.load(Acquire) {
            // An eviction may cancel the grant at the same moment: whoever moves it first wins.
            GRANTED => match l.state.compare_exchange(GRANTED, HELD, Acquire, Acquire) {
                Ok(_) => {
                    l.holder_thread.store(this_thread(), Relaxed);
                    l.held_before.store(true, Relaxed);
                    Some(Ok(l.held()))
                }
                Err(_) => self.outcome(),
            },
            CANCELED => {
                l.state.store(IDLE, Relaxed);
                Some(Err(canceled()))
            }
            _ => None,
        }
    }

    /// A queued `lock()` under the session's timeout. On expiry it takes the lock if it was
    /// granted in the meantime, else withdraws.
    async fn wait_at_most(&self, limit: Duration) -> Result<Hold> {
        let mut wait = OpFuture::pending(self);
        match tokio::time::timeout(limit, &mut wait).await {
            Ok(outcome) => outcome,
            Err(_) => {
                std::mem::forget(wait); // resolved here instead of by its drop
                let mut table = self.shared.session.service.table();
                if let Some(outcome) = self.outcome() {
                    return outcome;
                }
                table.withdraw(&self.shared);
                drop(table);
                drop(self.shared.waker.take());
                Err(Error::Timeout(limit))
            }
        }
    }
}

impl LocalLocker {
    pub(crate) fn weak(&self) -> std::sync::Weak<LockerShared> {
        Arc::downgrade(&self.shared)
    }
}
