//! The id table, and each id's slot: who holds the id, who waits for it, and the signal its
//! holds are lost by.
//!
//! A locker finds its id's [`Slot`] once, when it is made, and keeps it. A slot's *word* says
//! who holds the id: 0 when it is free, else the holder's address, with [`QUEUED`] set while
//! lockers queue for it. When nobody queues, a lock takes the word and an unlock gives it back
//! with one atomic operation each, without a mutex. Queueing, handing the id over and evicting
//! a holder happen under the slot's own mutex, and always with [`QUEUED`] set first, so that
//! the mutex-free paths (which need it clear) cannot move the word meanwhile.
//!
//! Each hold of the id is one epoch of the slot's signal: it is lost once the epoch moves on.
//! Only the release of the hold moves it (the holder's own, with `Signal::fire_if` on its
//! epoch, or an eviction that pinned the word), so a hold never ends another.
//!
//! The table itself (one mutex for the service) is used only when a locker is made or dropped,
//! and when the service closes.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;

use hashbrown::hash_table::{Entry as TableEntry, HashTable};
use lock_core::backend::{HasSignal, Signal};
use lock_core::LossCause;

use crate::id::IdBuf;
use crate::locker::{this_thread, LocalLocker};

// Locker states. A locker holds its id when the slot's word names it (whatever its state);
// the state tracks its attempts: an attempt that must take the slot's mutex claims the locker
// (IDLE -> WAITING) first; a release hands the id to a queued locker (WAITING -> GRANTED),
// whose pending `lock()` collects it (GRANTED -> IDLE); an eviction ends a wait
// (WAITING or GRANTED -> CANCELED), and the pending `lock()` fails (CANCELED -> IDLE).
/// No attempt under way.
pub(crate) const IDLE: u8 = 0;
/// Queued, or claimed by an attempt in progress.
pub(crate) const WAITING: u8 = 1;
/// The wait ended without the lock (the session ended); the pending `lock()` fails.
pub(crate) const CANCELED: u8 = 3;
/// Handed the lock by a release while queued; the pending `lock()` has not collected it yet.
pub(crate) const GRANTED: u8 = 4;

/// The bit of a slot's word that sends every attempt and release through the slot's mutex:
/// lockers queue, or a release or eviction is under way there.
const QUEUED: usize = 1;

/// Every id some live locker was made for. An id no locker uses has no entry.
#[derive(Default)]
pub(crate) struct Table {
    slots: HashTable<Arc<Slot>>,
    /// The highest fencing token of any slot removed: a new slot starts above it, so the
    /// tokens of an id keep growing when its slot is removed and made again.
    high_water: u64,
    /// Slots removed lately, to be made again for new ids without an allocation once nothing
    /// else refers to them (a program that locks many ids once each makes and removes a slot
    /// for every one of them).
    spare: Vec<Arc<Slot>>,
}

/// How many removed slots the table keeps for reuse.
const SPARE: usize = 8;

/// A slot for `id`: a spare one that nothing refers to any more (no locker, hold or `Lost`),
/// reset, or a new one.
fn reuse(spare: &mut Vec<Arc<Slot>>, id: &str, hash: u64, base: u64) -> Arc<Slot> {
    for at in (0..spare.len()).rev() {
        if let Some(slot) = Arc::get_mut(&mut spare[at]) {
            slot.reset(id, hash, base);
            return spare.swap_remove(at);
        }
    }
    Arc::new(Slot::new(id, hash, base))
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("ids", &self.slots.len())
            .finish()
    }
}

impl Table {
    /// The slot of `id` (hashed to `hash`), made if the id has none, for one more locker of it
    /// (until [`Slot::leave`]).
    pub(crate) fn join(&mut self, id: &str, hash: u64) -> Arc<Slot> {
        let slot = match self
            .slots
            .entry(hash, |s| s.id.as_bytes() == id.as_bytes(), |s| s.hash)
        {
            TableEntry::Occupied(o) => o.into_mut(),
            TableEntry::Vacant(v) => v
                .insert(reuse(&mut self.spare, id, hash, self.high_water))
                .into_mut(),
        };
        // Under the table mutex, so a removal (which checks the count under it) sees it.
        slot.lockers.fetch_add(1, SeqCst);
        slot.clone()
    }

    /// Removes `slot`, unless a locker joined it since its count fell to 0 (see
    /// [`Slot::leave`]).
    pub(crate) fn remove_if_unused(&mut self, slot: &Arc<Slot>) {
        if slot.lockers.load(SeqCst) != 0 {
            return;
        }
        if let Ok(entry) = self.slots.find_entry(slot.hash, |s| Arc::ptr_eq(s, slot)) {
            self.high_water = self.high_water.max(slot.last_token());
            let (removed, _) = entry.remove();
            if self.spare.len() == SPARE {
                self.spare.remove(0);
            }
            self.spare.push(removed);
        }
    }

    /// Ends every hold and every wait: the service closed (and refuses new attempts). Returns
    /// who must be woken, and the lockers taken out of queues (to drop), once the table mutex
    /// is released.
    pub(crate) fn close(&mut self) -> (Vec<Wake>, Vec<Arc<LocalLocker>>) {
        let (mut wakes, mut lockers) = (Vec::new(), Vec::new());
        for slot in self.slots.iter() {
            slot.close(&mut wakes, &mut lockers);
        }
        (wakes, lockers)
    }

    /// How many ids are held or waited for.
    pub(crate) fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_taken()).count()
    }

    /// How many ids the table keeps (those some live locker was made for).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

/// One id: its holder, its queue, its fencing tokens and the signal of its holds.
pub(crate) struct Slot {
    /// What a lock and an unlock touch, on cache lines of their own: making and dropping
    /// lockers of the id (on other cores) updates the `Arc`'s counts and `lockers`, which
    /// must not take these lines away from the holder.
    hot: CacheLine<Hot>,
    /// How many live lockers were made for the id: raised under the table mutex, lowered
    /// without it (the table is needed only when it reaches 0).
    lockers: AtomicUsize,
    pub(crate) id: IdBuf,
    hash: u64,
    queue: Mutex<Queue>,
}

pub(crate) struct Hot {
    /// 0, or the holder's address with [`QUEUED`].
    word: AtomicUsize,
    /// One epoch per hold; fired when the hold ends.
    signal: Signal,
    /// What the fencing tokens of the id start above: a hold's token is `base + 1 + epoch`.
    base: u64,
    /// The thread whose `lock()` returned the current hold; 0 while a handed-over hold waits
    /// to be collected.
    holder_thread: AtomicUsize,
}

impl std::ops::Deref for Slot {
    type Target = Hot;
    fn deref(&self) -> &Hot {
        &self.hot.0
    }
}

/// Aligns (and so pads) a value to 128 bytes: two 64-byte cache lines, since x86 prefetches
/// lines in pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CacheLine<T>(pub(crate) T);

/// Who waits for a slot's id, under its mutex.
#[derive(Default)]
pub(crate) struct Queue {
    waiters: VecDeque<Arc<LocalLocker>>,
    /// The waiter the id was last handed to, whose `lock()` may not have collected it yet
    /// (for the service's close, which cancels such a grant).
    granted: Weak<LocalLocker>,
}

impl HasSignal for Slot {
    fn signal(&self) -> &Signal {
        &self.signal
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("id", &self.id)
            .field("taken", &self.is_taken())
            .finish_non_exhaustive()
    }
}

/// The queue of a slot, borrowed under its mutex: what the operations that need it take.
pub(crate) type QueueGuard<'a> = MutexGuard<'a, Queue>;

/// The outcome of an attempt under the slot's mutex.
pub(crate) enum Attempt {
    Granted,
    Queued,
    Busy,
    /// The locker holds the id already (through another handle of it).
    Mine,
    /// Held by a holder that is running with the lock on another thread; nobody waits.
    Running,
}

/// What an attempt does when the id is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfTaken {
    /// Report `Busy` (try_lock).
    Fail,
    /// Join the queue.
    Queue,
    /// Report `Running` if nobody waits and the holder already runs with the lock on another
    /// thread (so it may release it in a moment), else join the queue.
    QueueUnlessRunning,
}

/// How a hold ends, for [`Slot::release`].
#[derive(Clone, Copy)]
pub(crate) enum End<'a> {
    /// The holder fired the signal already.
    Fired,
    /// Unlocked: fire the signal without recording why (the unlock path).
    Unlocked,
    /// Ended by something else: fire the signal and record why.
    Because(LossCause, &'a str),
}

impl Slot {
    fn new(id: &str, hash: u64, base: u64) -> Self {
        Slot {
            hot: CacheLine(Hot {
                word: AtomicUsize::new(0),
                signal: Signal::new(),
                base,
                holder_thread: AtomicUsize::new(0),
            }),
            lockers: AtomicUsize::new(0),
            id: IdBuf::new(id),
            hash,
            queue: Mutex::default(),
        }
    }

    /// Makes a spare slot (free, nobody queued, no other reference) the slot of `id`. The
    /// signal keeps its epoch: tokens (`base + 1 + epoch`) only grow with it, and the records of
    /// the epochs that ended are never asked for again.
    fn reset(&mut self, id: &str, hash: u64, base: u64) {
        debug_assert_eq!(*self.hot.0.word.get_mut(), 0);
        self.hot.0.holder_thread = AtomicUsize::new(0);
        self.lockers = AtomicUsize::new(0);
        self.id.set(id);
        self.hash = hash;
        self.hot.0.base = base;
        self.queue
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .granted = Weak::new();
    }

    /// The queue, under the slot's mutex.
    pub(crate) fn queue(&self) -> QueueGuard<'_> {
        // Every section leaves the queue and the word consistent (nothing in them panics
        // mid-update), so a poisoned mutex is safe to keep using.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether somebody holds the id (or it is being handed over).
    pub(crate) fn is_taken(&self) -> bool {
        self.word.load(SeqCst) != 0
    }

    /// Whether the word names `locker` as the holder.
    pub(crate) fn is_held_by(&self, locker: &LocalLocker) -> bool {
        self.word.load(SeqCst) & !QUEUED == locker.addr()
    }

    /// Whether another live locker was made for the id (a hint: read without ordering).
    pub(crate) fn is_shared(&self) -> bool {
        self.lockers.load(Relaxed) > 1
    }

    /// The hash of the id.
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    /// A locker of the slot is gone: `true` if it was the last, and the slot should go
    /// ([`Table::remove_if_unused`], which checks again under the table mutex).
    pub(crate) fn leave(&self) -> bool {
        self.lockers.fetch_sub(1, SeqCst) == 1
    }

    /// Whether the id is free (a hint: read without ordering).
    pub(crate) fn is_free(&self) -> bool {
        self.word.load(Relaxed) == 0
    }

    /// Takes the id for `locker` without the mutex, if nobody holds it or queues for it, and
    /// records the grant. One atomic operation for the word, one for the token.
    pub(crate) fn take(&self, locker: &LocalLocker) -> bool {
        if self
            .word
            .compare_exchange(0, locker.addr(), SeqCst, Relaxed)
            .is_err()
        {
            return false;
        }
        self.record_grant(locker, true);
        true
    }

    /// Ends the hold of `locker` (granted in `epoch`) and gives the id back without the mutex,
    /// if nobody queues: one atomic operation to fire the signal, one for the word. `Err` with
    /// whether the hold ended here, if the mutex is needed: somebody queues, or an eviction
    /// (which ends the hold itself) is under way.
    pub(crate) fn give_back(&self, locker: &LocalLocker, epoch: u64) -> Result<(), bool> {
        // The loss first: nobody is granted the id before `lost()` fires. A hold that was
        // already ended (evicted) leaves the signal alone: its epoch moved on.
        if !self.signal.fire_if(epoch) {
            return Err(false);
        }
        match self
            .word
            .compare_exchange(locker.addr(), 0, SeqCst, Relaxed)
        {
            Ok(_) => Ok(()),
            Err(_) => Err(true),
        }
    }

    fn holder_runs_elsewhere(&self) -> bool {
        let thread = self.holder_thread.load(Relaxed);
        thread != 0 && thread != this_thread()
    }

    /// Records a grant to `locker`, which the word names now: the epoch of the hold (its
    /// fencing token is [`Slot::token`] of it), and whether its `lock()` returns it now, on this
    /// thread (`running`), or a queued `lock()` collects it later.
    ///
    /// Every hold ends (fires the signal) before the id is free again, so each grant reads an
    /// epoch above every earlier grant's: the epoch is the token, without a counter of its own.
    /// (A close that evicts a holder that has just taken the word may grant the id on before
    /// that holder reads the epoch, and so give both one token; but the evicted holder sees the
    /// close and returns no hold.)
    fn record_grant(&self, locker: &LocalLocker, running: bool) {
        locker.epoch.store(self.signal.epoch(), Relaxed);
        self.holder_thread
            .store(if running { this_thread() } else { 0 }, Relaxed);
    }

    /// The fencing token of the hold granted in `epoch`.
    pub(crate) fn token(&self, epoch: u64) -> u64 {
        self.base + 1 + epoch
    }

    /// The highest fencing token the slot handed out (or less), for when it is removed.
    fn last_token(&self) -> u64 {
        self.base + self.signal.epoch()
    }

    /// The collected hold of a queued `lock()` runs on this thread now.
    pub(crate) fn collected(&self) {
        self.holder_thread.store(this_thread(), Relaxed);
    }

    /// Under the mutex: the attempt of `locker`, which claimed it (WAITING), when taking the
    /// id at once failed. Takes it if it is free, else does what `if_taken` says. The locker is
    /// IDLE again unless it queued.
    pub(crate) fn acquire(
        &self,
        queue: &mut QueueGuard<'_>,
        locker: &Arc<LocalLocker>,
        if_taken: IfTaken,
    ) -> Attempt {
        let me = locker.addr();
        let mut word = self.word.load(SeqCst);
        let attempt = loop {
            if word == 0 {
                match self.word.compare_exchange(0, me, SeqCst, SeqCst) {
                    Ok(_) => {
                        self.record_grant(locker, true);
                        break Attempt::Granted;
                    }
                    Err(now) => word = now,
                }
                continue;
            }
            if word & !QUEUED == me {
                break Attempt::Mine;
            }
            match if_taken {
                IfTaken::Fail => break Attempt::Busy,
                IfTaken::QueueUnlessRunning
                    if word & QUEUED == 0 && self.holder_runs_elsewhere() =>
                {
                    break Attempt::Running
                }
                _ => {}
            }
            if word & QUEUED == 0 {
                if let Err(now) = self
                    .word
                    .compare_exchange(word, word | QUEUED, SeqCst, SeqCst)
                {
                    word = now;
                    continue;
                }
            }
            queue.waiters.push_back(locker.clone());
            return Attempt::Queued;
        };
        locker.state.store(IDLE, Relaxed);
        attempt
    }

    /// Under the mutex: ends the hold of the locker at `holder` (`end` says how) and hands the
    /// id to the first waiter, or frees it. `None` if that locker does not hold the id (any
    /// more); else who must be woken once the mutex is released.
    pub(crate) fn release(
        &self,
        queue: &mut QueueGuard<'_>,
        holder: usize,
        end: End<'_>,
    ) -> Option<Wake> {
        // Pin the word first: with QUEUED set, the holder's `give_back` fails and comes here.
        let mut word = self.word.load(SeqCst);
        while word & QUEUED == 0 {
            if word != holder || holder == 0 {
                return None;
            }
            match self
                .word
                .compare_exchange(word, word | QUEUED, SeqCst, SeqCst)
            {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        if word & !QUEUED != holder {
            return None;
        }
        // The loss first: nobody is granted the id before the holder's `lost()` fires.
        match end {
            End::Fired => {}
            End::Unlocked => self.signal.fire(),
            End::Because(cause, detail) => drop(self.signal.fire_because(cause, detail)),
        }
        Some(match queue.waiters.pop_front() {
            Some(next) => {
                self.record_grant(&next, false);
                // The word first: a waiter that sees its grant (its `lock()` may be polled on
                // another thread right now) is the holder, and may unlock at once.
                let more = if queue.waiters.is_empty() { 0 } else { QUEUED };
                self.word.store(next.addr() | more, SeqCst);
                next.state.store(GRANTED, Release);
                queue.granted = next.weak();
                next.wake_later()
            }
            None => {
                self.word.store(0, SeqCst);
                Wake::NONE
            }
        })
    }

    /// Under the mutex: takes a waiting `locker` out of the queue (it stopped waiting).
    pub(crate) fn withdraw(&self, queue: &mut QueueGuard<'_>, locker: &LocalLocker) {
        locker.state.store(IDLE, Relaxed);
        queue.waiters.retain(|w| !std::ptr::eq(&**w, locker));
        if queue.waiters.is_empty() {
            // The holder may give the id back without the mutex again.
            self.word.fetch_and(!QUEUED, SeqCst);
        }
    }

    /// Under the mutex: ends whatever `locker` does: releases its hold (ended by `cause`), or
    /// cancels its wait. Returns who must be woken once the mutex is released.
    #[must_use = "the returned locker must be woken"]
    pub(crate) fn evict(
        &self,
        queue: &mut QueueGuard<'_>,
        locker: &LocalLocker,
        cause: (LossCause, &str),
    ) -> Wake {
        if locker.state.load(Acquire) == WAITING {
            self.withdraw(queue, locker);
            locker.state.store(CANCELED, Release);
            return locker.wake_later();
        }
        end_hold(locker);
        self.release(queue, locker.addr(), End::Because(cause.0, cause.1))
            .unwrap_or(Wake::NONE)
    }

    /// The service closed: cancels every wait (and a grant not yet collected), then ends the
    /// hold. The lockers taken out of the queue go to `lockers`, to be dropped after the table
    /// mutex (dropping the last handle of a locker takes it).
    fn close(&self, wakes: &mut Vec<Wake>, lockers: &mut Vec<Arc<LocalLocker>>) {
        let mut queue = self.queue();
        for waiter in std::mem::take(&mut queue.waiters) {
            waiter.state.store(CANCELED, Release);
            wakes.push(waiter.wake_later());
            lockers.push(waiter);
        }
        if let Some(granted) = queue.granted.upgrade() {
            end_hold(&granted);
            lockers.push(granted);
        }
        let holder = self.word.load(SeqCst) & !QUEUED;
        let ended = End::Because(LossCause::ServiceClosed, "the service was closed");
        wakes.extend(self.release(&mut queue, holder, ended));
    }
}

/// The pending `lock()` of a locker whose state changed (granted or canceled), to be woken
/// after the mutex is released, so that it does not wake into a held mutex. Taken from the
/// locker after its state was set: a `lock()` that registers later sees the state.
pub(crate) struct Wake(Option<Waker>);

impl Wake {
    pub(crate) const NONE: Wake = Wake(None);

    pub(crate) fn new(waker: Option<Waker>) -> Self {
        Wake(waker)
    }

    pub(crate) fn wake(self) {
        if let Some(waker) = self.0 {
            waker.wake();
        }
    }
}

/// A hold is evicted (its session or service ended): a grant its queued `lock()` has not
/// collected is canceled, so that call fails instead of waiting for a grant that is gone; if
/// the call collects it first, it returns a hold already lost.
fn end_hold(holder: &LocalLocker) {
    let _ = holder
        .state
        .compare_exchange(GRANTED, CANCELED, AcqRel, Acquire);
}

#[cfg(test)]
mod tests {
    use std::hint::spin_loop;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::{Acquire, SeqCst};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use lock_core::LossCause;

    use super::{Attempt, End, IfTaken, GRANTED, IDLE, WAITING};
    use crate::locker::LocalLocker;
    use crate::service::ServiceShared;
    use crate::session::LocalSession;

    fn locker(session: &Arc<LocalSession>, id: &str) -> Arc<LocalLocker> {
        LocalLocker::new(id, session.clone())
    }

    /// A holder evicted (its session closed) while its unlock was on the way: the id went to
    /// the waiter, and the late unlock must neither end the waiter's hold nor free the id.
    #[test]
    fn a_late_unlock_of_an_evicted_hold_leaves_the_next_hold_alone() {
        let service = Arc::new(ServiceShared::default());
        let session = LocalSession::new(service, None);
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
        let session = LocalSession::new(service, None);
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
