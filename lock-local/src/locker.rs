//! A locker of the local backend.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;

use lock_core::backend::{self, Hold, OpFuture, PendingOp};
use lock_core::{Error, LossCause, Result};

use crate::table::{
    Attempt, End, IfTaken, LocalLocker, SessionCore, Slot, Wake, CANCELED, GRANTED, IDLE, WAITING,
};

impl LocalLocker {
    pub(crate) fn new(id: &str, session: Arc<SessionCore>, party: backend::Party) -> Arc<Self> {
        let slot = session.service.table().join(id, session.service.hash(id));
        Arc::new_cyclic(|me| LocalLocker {
            slot,
            me: me.clone(),
            session,
            state: AtomicU8::new(IDLE),
            waker: AtomicWaker::new(),
            epoch: AtomicU64::new(0),
            held_before: AtomicBool::new(false),
            party,
        })
    }

    /// The locker's identity in its slot's word.
    pub(crate) fn addr(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    pub(crate) fn weak(&self) -> Weak<LocalLocker> {
        self.me.clone()
    }

    /// What wakes the pending `lock()`, if it has registered; take it after changing `state`.
    pub(crate) fn wake_later(&self) -> Wake {
        Wake::new(self.waker.take())
    }

    fn held(&self) -> Hold {
        let epoch = self.epoch.load(Relaxed);
        Hold::new(self.slot.clone(), epoch, None, self.slot.token(epoch))
    }

    /// Under the slot's mutex: ends what the locker does (`cause`); wakes after the mutex.
    pub(crate) fn evict(&self, cause: (LossCause, &str)) {
        let wake = self.slot.evict(&mut self.slot.queue(), self, cause);
        wake.wake();
    }

    /// Ends this locker's hold as a backend that lost it would — its lost signal fires with
    /// `cause` and `detail`, and the id goes to the next waiter — for backends built on this one
    /// (a test backend that takes a hold away). `false` if it held nothing.
    pub fn revoke(&self, cause: LossCause, detail: &str) -> bool {
        let held = self.slot.is_held_by(self) && self.state.load(Acquire) != GRANTED;
        if held {
            self.evict((cause, detail));
        }
        held
    }

    /// Hands what this locker holds on, under the slot's mutex (`end` says how its hold
    /// ended); whether it held the id.
    fn release_locked(&self, end: End<'_>) -> bool {
        let mut queue = self.slot.queue();
        let released = self.slot.release(&mut queue, self.addr(), end);
        drop(queue);
        released.map(Wake::wake).is_some()
    }
}

/// Retries of a `lock()` that finds the holder running (the last one queues whatever it finds),
/// and how long it watches the holder before each (spin-loop hints of ~10 ns).
const SPIN_ROUNDS: u32 = 3;
const SPINS: u32 = 256;

impl LocalLocker {
    /// The hold of a `lock()` or `try_lock()` that took the id, unless the session or service
    /// closed meanwhile (checked after taking it: a close either sees the hold in the slot, or
    /// is seen here). A queued `lock()` collects its hold in [`LocalLocker::outcome`] instead.
    fn granted(&self) -> Result<Hold> {
        if let Err(e) = self.session.check_open() {
            self.release_locked(End::Unlocked);
            return Err(e);
        }
        self.held_before.store(true, Relaxed);
        Ok(self.held())
    }

    /// The outcome of a `lock()` that took the id at once: its hold, after a yield to the
    /// scheduler if the task's cooperative budget is used up (see [`spend_budget`]).
    #[inline]
    fn taken(&self) -> OpFuture<'_, Result<Hold>> {
        match spend_budget(&self.slot) {
            true => OpFuture::ready(self.granted()),
            false => OpFuture::boxed(self.yield_holding()),
        }
    }

    /// Yields to the scheduler *holding* the lock just taken, then returns the hold, as
    /// tokio's `Mutex` does (its acquire takes the permit before it checks the budget). The
    /// tasks that run meanwhile find the lock held and queue, and from then on FIFO handoff
    /// shares it. (Yielding before taking it, a looping task left the lock free while it
    /// yielded: the next task took it at once in turn, each for a budget's worth of turns, and
    /// with 1000 tasks on one CPU, most runs gave one task over 1000 turns and many none.)
    /// Dropped during the yield, it releases the hold.
    #[cold]
    async fn yield_holding(&self) -> Result<Hold> {
        struct Release<'a>(&'a LocalLocker, u64);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                backend::Locker::release(self.0, self.1);
            }
        }
        let release = Release(self, self.slot.token(self.epoch.load(Relaxed)));
        tokio::task::yield_now().await;
        std::mem::forget(release);
        self.granted()
    }

    /// Releases the hold with fencing token `token`.
    fn release_hold(&self, token: u64) -> Result<()> {
        self.session.check_open()?;
        if !self.slot.is_held_by(self)
            || self.state.load(Acquire) == GRANTED
            || token != self.slot.token(self.epoch.load(Relaxed))
        {
            return Err(Error::NotHeld);
        }
        match self.slot.give_back(self, self.epoch.load(Relaxed)) {
            Ok(()) => Ok(()),
            // Our release ended the hold (its signal fired); somebody queues, or an eviction is
            // under way: hand over under the mutex — or the eviction, if it got there first,
            // hands over. Either way this release came first: `Ok`.
            Err(true) => {
                self.release_locked(End::Fired);
                Ok(())
            }
            // An eviction ended the hold first.
            Err(false) => Err(Error::NotHeld),
        }
    }

    /// A holder that is running with the lock (and nobody queued) usually releases it within
    /// a microsecond: watch it for a moment (the slot's word, without its mutex) and retry
    /// before queueing, so that a short hold does not start a convoy of handoffs through the
    /// scheduler.
    ///
    /// Only a locker's first `lock()` does this: one that held the lock before queues at once,
    /// as tokio's `Mutex` does. Tasks that loop on lock/unlock then hand the lock over in FIFO
    /// order and go back to the scheduler each time, so tasks not yet run get their turn
    /// (watching, two such tasks passed the lock between each other and the other tasks of
    /// their workers waited: in 1000-task runs, up to half of the tasks got no turn).
    #[cold]
    fn retry_then_queue(&self) -> Result<Attempt> {
        let slot = &self.slot;
        for round in 1..=SPIN_ROUNDS {
            let mut freed = false;
            for _ in 0..SPINS {
                if slot.is_free() {
                    freed = true;
                    break;
                }
                std::hint::spin_loop();
            }
            if slot.take(self) {
                return Ok(Attempt::Granted);
            }
            // Seen free, yet taken again at once: the holder loops on the lock (or another
            // newcomer won it), and watching longer would only keep this worker from the
            // tasks that would queue. Queue now.
            let last = round == SPIN_ROUNDS || freed;
            match self.attempt(if last {
                IfTaken::Queue
            } else {
                IfTaken::QueueUnlessRunning
            })? {
                Attempt::Running => {}
                other => return Ok(other),
            }
        }
        unreachable!("the last attempt queues")
    }

    /// Claims the locker, then takes the slot's mutex to acquire.
    fn attempt(&self, if_taken: IfTaken) -> Result<Attempt> {
        let Some(me) = self.me.upgrade() else {
            unreachable!("a locker in use has a handle");
        };
        // One attempt at a time per locker. Claiming before checking the session: a `close`
        // that runs now either sees the claim (and evicts under the slot's mutex, so after
        // us) or is seen by the check.
        if self
            .state
            .compare_exchange(IDLE, WAITING, SeqCst, Relaxed)
            .is_err()
        {
            return Err(Error::AlreadyLocked);
        }
        let mut queue = self.slot.queue();
        if let Err(e) = self.session.check_open() {
            self.state.store(IDLE, Relaxed);
            return Err(e);
        }
        match self.slot.acquire(&mut queue, &me, if_taken) {
            Attempt::Mine => Err(Error::AlreadyLocked),
            other => Ok(other),
        }
    }
}

/// Spends one unit of the running tokio task's cooperative budget for a lock just taken at
/// once, as tokio's own `Mutex` does on every lock; `false` when the budget is used up and the
/// task should yield (holding the lock: [`LocalLocker::yield_holding`]).
///
/// A free lock is taken on the spot: without the budget, a task looping on lock/unlock never
/// gives its worker up, and the tasks that would queue behind it never run (one task took
/// almost every turn among 1000). Outside a tokio task there is no budget.
///
/// A lock spends it when another live locker was made for the id, and when the thread's
/// previous lock was of the same id: a loop. The first of many tasks on one id is alone on it
/// until the others have run, and must yield to let them (spending every eighth lock only, it
/// took its first 1024 turns alone, over 10× its fair share, in about 25 of 80 runs of a
/// benchmark that starts 1000 tasks as they are spawned). Any other lock spends it every
/// eighth time on the thread: a task going through many ids that nobody else uses still
/// yields, every 1024 locks, without a trip through the scheduler (and, often, to the other
/// worker) every 128 (measured: 1M distinct ids 1.23× the time).
fn spend_budget(slot: &Slot) -> bool {
    thread_local!(static LAST: Cell<(u64, u8)> = const { Cell::new((0, 0)) });
    let due = slot.is_shared()
        || LAST.with(|last| {
            let (hash, n) = last.get();
            let n = n.wrapping_add(1);
            last.set((slot.hash(), n));
            hash == slot.hash() || n % 8 == 0
        });
    if !due {
        return true;
    }
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
        // Free, and nobody queued: one atomic operation.
        if self.slot.take(self) {
            return self.taken();
        }
        let attempt = match self.attempt(match self.held_before.load(Relaxed) {
            true => IfTaken::Queue,
            false => IfTaken::QueueUnlessRunning,
        }) {
            Ok(Attempt::Running) => self.retry_then_queue(),
            other => other,
        };
        match attempt {
            Ok(Attempt::Granted) => self.taken(),
            Err(e) => OpFuture::ready(Err(e)),
            // Queued behind the holder: the returned future waits (and withdraws if dropped,
            // as when the session's timeout passes).
            Ok(Attempt::Queued) => OpFuture::pending(self),
            Ok(Attempt::Busy | Attempt::Running | Attempt::Mine) => {
                unreachable!("the last attempt queues")
            }
        }
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        let taken = if self.slot.take(self) {
            Ok(Attempt::Granted)
        } else {
            self.attempt(IfTaken::Fail)
        };
        OpFuture::ready(match taken {
            Ok(Attempt::Granted) => self.granted().map(Some),
            Ok(Attempt::Busy) => Ok(None),
            Ok(Attempt::Queued | Attempt::Running | Attempt::Mine) => {
                unreachable!("no queueing was requested")
            }
            Err(e) => Err(e),
        })
    }

    fn unlock(&self, token: u64) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.release_hold(token))
    }

    fn unlock_now(&self, token: u64) -> Option<Result<()>> {
        Some(self.release_hold(token))
    }

    fn release(&self, token: u64) {
        // Not held any more (evicted) is fine: there is nothing left to release.
        let _ = self.release_hold(token);
    }

    fn id(&self) -> &str {
        self.slot.id.as_str()
    }

    fn party(&self) -> &backend::Party {
        &self.party
    }
}

impl Drop for LocalLocker {
    fn drop(&mut self) {
        // No `lock()` can be pending (it borrows the locker), so only a hold is left to end.
        if self.state.load(Acquire) != IDLE || self.slot.is_held_by(self) {
            self.evict((LossCause::Unlocked, "the locker was dropped"));
        }
        // The table only for the id's last locker: the slot goes with it.
        if self.slot.leave() {
            self.session.service.table().remove_if_unused(&self.slot);
        }
    }
}

impl fmt::Debug for LocalLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLocker")
            .field("id", &self.slot.id)
            .field(
                "held",
                &(self.slot.is_held_by(self) && self.state.load(Relaxed) != GRANTED),
            )
            .finish()
    }
}

fn canceled() -> Error {
    Error::Canceled("the session ended while waiting for the lock".into())
}

// A queued `lock()` is an `OpFuture::pending` on the locker itself: the wait
// allocates nothing. Dropping it unfinished withdraws from the queue, or passes the lock on if
// it was granted meanwhile: cancel safety.
impl PendingOp<Result<Hold>> for LocalLocker {
    fn poll_op(&self, cx: &mut Context<'_>) -> Poll<Result<Hold>> {
        if let Some(outcome) = self.outcome() {
            return Poll::Ready(outcome);
        }
        self.waker.register(cx.waker());
        // A grant that woke before we registered set the state first.
        match self.outcome() {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }

    fn cancel_op(&self) {
        let mut queue = self.slot.queue();
        let mut wake = None;
        match self.state.load(Acquire) {
            GRANTED => {
                self.state.store(IDLE, Relaxed);
                wake = self.slot.release(&mut queue, self.addr(), End::Unlocked);
            }
            CANCELED => self.state.store(IDLE, Relaxed),
            _ => self.slot.withdraw(&mut queue, self),
        }
        drop(queue);
        if let Some(wake) = wake {
            wake.wake();
        }
        drop(self.waker.take());
    }
}

impl LocalLocker {
    /// The outcome of a queued `lock()` once the state left WAITING; `None` while it waits.
    fn outcome(&self) -> Option<Result<Hold>> {
        match self.state.load(Acquire) {
            // An eviction may cancel the grant at the same moment: whoever moves it first wins.
            GRANTED => match self.state.compare_exchange(GRANTED, IDLE, Acquire, Acquire) {
                Ok(_) => {
                    self.slot.collected();
                    self.held_before.store(true, Relaxed);
                    Some(Ok(self.held()))
                }
                Err(_) => self.outcome(),
            },
            CANCELED => {
                self.state.store(IDLE, Relaxed);
                Some(Err(canceled()))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hint::spin_loop;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::{Acquire, SeqCst};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use lock_core::LossCause;

    use crate::session::LocalSession;
    use crate::table::{Attempt, End, IfTaken, LocalLocker, ServiceShared, GRANTED, IDLE, WAITING};

    fn locker(session: &Arc<LocalSession>, id: &str) -> Arc<LocalLocker> {
        let config = lock_core::SessionConfig::default();
        let handle = lock_core::backend::session(session.clone(), config);
        let party = lock_core::backend::party_for_tests(&handle);
        LocalLocker::new(id, session.core().clone(), party)
    }

    /// A holder evicted (its session closed) while its unlock was on the way: the id went to
    /// the waiter, and the late unlock must neither end the waiter's hold nor free the id.
    #[test]
    fn a_late_unlock_of_an_evicted_hold_leaves_the_next_hold_alone() {
        let service = Arc::new(ServiceShared::default());
        let session = LocalSession::new(service, Arc::default());
        let (first, next) = (locker(&session, "x"), locker(&session, "x"));
        let slot = first.slot.clone();
        assert!(slot.take(&first));
        let first_epoch = first.epoch.load(SeqCst);
        next.state.store(WAITING, SeqCst);
        assert!(matches!(
            slot.acquire(&mut slot.queue(), &next, IfTaken::Queue),
            Attempt::Queued
        ));

        first.evict((LossCause::SessionEnded, "the session ended"));
        assert_eq!(next.state.load(SeqCst), GRANTED);
        let next_epoch = next.epoch.load(SeqCst);
        assert_eq!(slot.signal.epoch(), next_epoch);

        // The first holder's unlock arrives now, with the epoch it was granted in.
        assert_eq!(slot.give_back(&first, first_epoch), Err(false));
        assert_eq!(slot.signal.epoch(), next_epoch, "the next hold was ended");
        assert!(
            slot.is_held_by(&next),
            "the id was taken from the next holder"
        );
    }

    /// A waiter that sees its grant is the holder already: the word names it. A handover
    /// that set the grant first and the word after let the waiter collect its hold in
    /// between and unlock it, and the unlock found the id not held by it ("released by
    /// someone else"), after which the word named it: the id stayed taken.
    #[test]
    fn a_waiter_that_sees_its_grant_is_named_by_the_word() {
        const ROUNDS: usize = 5_000;
        let service = Arc::new(ServiceShared::default());
        let session = LocalSession::new(service, Arc::default());
        let (first, next) = (locker(&session, "x"), locker(&session, "x"));
        let slot = first.slot.clone();
        // Round r: this thread sets the round up (`go` = r); the waiter's thread watches
        // (`watching` = r) and reports whether the word named it when it saw its grant
        // (`seen` = 2r + 1 if it did, else 2r).
        let (go, watching, seen) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        // Every wait gives up after a while, so that a failure on one thread cannot leave the
        // other waiting for ever.
        let deadline = Instant::now() + Duration::from_secs(60);
        let wait_for = |what: &AtomicUsize, until: &dyn Fn(usize) -> bool| loop {
            let now = what.load(SeqCst);
            if until(now) {
                return now;
            }
            assert!(Instant::now() < deadline, "the other thread stopped");
            std::thread::yield_now();
        };
        let mut early = 0;
        std::thread::scope(|scope| {
            // The waiter's `lock()`, polled on another thread as the grant happens.
            scope.spawn(|| {
                for round in 1..=ROUNDS {
                    wait_for(&go, &|r| r == round);
                    watching.store(round, SeqCst);
                    let mut spins = 0u32;
                    while next.state.load(Acquire) != GRANTED {
                        spin_loop();
                        spins = spins.wrapping_add(1);
                        if spins % 4096 == 0 {
                            assert!(Instant::now() < deadline, "the grant never came");
                        }
                    }
                    seen.store(2 * round + usize::from(slot.is_held_by(&next)), SeqCst);
                }
            });
            for round in 1..=ROUNDS {
                assert!(slot.take(&first));
                next.state.store(WAITING, SeqCst);
                assert!(matches!(
                    slot.acquire(&mut slot.queue(), &next, IfTaken::Queue),
                    Attempt::Queued
                ));
                go.store(round, SeqCst);
                wait_for(&watching, &|r| r == round);
                // The holder's unlock: it ends its hold, then hands the id over.
                assert_eq!(slot.give_back(&first, first.epoch.load(SeqCst)), Err(true));
                let handed = slot.release(&mut slot.queue(), first.addr(), End::Fired);
                handed.expect("the holder held the id").wake();
                if wait_for(&seen, &|s| s / 2 == round) % 2 == 0 {
                    early += 1;
                }
                // The waiter collects its hold and unlocks.
                next.state.store(IDLE, SeqCst);
                assert_eq!(slot.give_back(&next, next.epoch.load(SeqCst)), Ok(()));
            }
        });
        assert_eq!(
            early, 0,
            "of {ROUNDS} grants, this many were seen before the word named the waiter"
        );
    }
}
