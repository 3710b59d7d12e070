//! The id table, and each id's slot: who holds the id and who waits for it.
//!
//! A locker finds its id's [`Slot`] once, when it is made, and keeps it. A slot's *word* says
//! who holds the id: 0 when it is free, else the holder's address, with [`QUEUED`] set while
//! lockers queue for it. When nobody queues, a lock takes the word and an unlock gives it back
//! with one atomic operation each, without a mutex. Queueing, handing the id over and evicting
//! a holder happen under the slot's own mutex, and always with [`QUEUED`] set first, so that
//! the mutex-free paths (which need it clear) cannot move the word meanwhile.
//!
//! The table itself (one mutex for the service) is used only when a locker is made or dropped,
//! and when the service closes.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use hashbrown::hash_table::{Entry as TableEntry, HashTable};
use lock_core::LossCause;

use crate::id::IdBuf;
use crate::locker::{this_thread, LockerShared};
use crate::weak_list::WeakList;

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
    ids: HashTable<Entry>,
    /// The highest fencing token of any slot removed: a new slot starts above it, so the
    /// tokens of an id keep growing when its slot is removed and made again.
    high_water: u64,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("ids", &self.ids.len())
            .finish()
    }
}

struct Entry {
    slot: Arc<Slot>,
    /// The lockers made for the id (for the service's close, which must find the holder).
    lockers: WeakList<LockerShared>,
    /// How many of them are alive: the entry goes with the last.
    live: usize,
}

impl Table {
    /// A new locker of `id` (hashed to `hash`): `make` builds it around the id's slot (made if
    /// the id has none), and the table keeps track of it until [`Table::forget`].
    pub(crate) fn join(
        &mut self,
        id: &str,
        hash: u64,
        make: impl FnOnce(Arc<Slot>) -> Arc<LockerShared>,
    ) -> Arc<LockerShared> {
        let entry = match self.ids.entry(
            hash,
            |e| e.slot.id.as_bytes() == id.as_bytes(),
            |e| e.slot.hash,
        ) {
            TableEntry::Occupied(o) => o.into_mut(),
            TableEntry::Vacant(v) => v
                .insert(Entry {
                    slot: Arc::new(Slot::new(id, hash, self.high_water)),
                    lockers: WeakList::default(),
                    live: 0,
                })
                .into_mut(),
        };
        let locker = make(entry.slot.clone());
        entry.lockers.push(Arc::downgrade(&locker));
        entry.live += 1;
        entry.slot.lockers.store(entry.live, Relaxed);
        locker
    }

    /// A locker of `slot` is gone; the slot goes with its last locker.
    pub(crate) fn forget(&mut self, slot: &Arc<Slot>) {
        let Ok(mut entry) = self
            .ids
            .find_entry(slot.hash, |e| Arc::ptr_eq(&e.slot, slot))
        else {
            unreachable!("a live locker's slot is in the table");
        };
        entry.get_mut().live -= 1;
        slot.lockers.store(entry.get().live, Relaxed);
        if entry.get().live == 0 {
            self.high_water = self.high_water.max(slot.last_token.load(Relaxed));
            entry.remove();
        }
    }

    /// Ends every hold and every wait: the service closed (and refuses new attempts). Returns
    /// who must be woken once the table mutex is released.
    pub(crate) fn close(&mut self) -> Vec<Wake> {
        let mut wakes = Vec::new();
        for entry in self.ids.iter() {
            entry.slot.close(entry.lockers.live(), &mut wakes);
        }
        wakes
    }

    /// How many ids are held or waited for.
    pub(crate) fn active(&self) -> usize {
        self.ids.iter().filter(|e| e.slot.is_taken()).count()
    }

    /// How many ids the table keeps (those some live locker was made for).
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// One id: its holder, its queue and its fencing tokens.
pub(crate) struct Slot {
    /// 0, or the holder's address with [`QUEUED`].
    word: AtomicUsize,
    /// The fencing token of the latest grant.
    last_token: AtomicU64,
    /// The thread whose `lock()` returned the current hold; 0 while a handed-over hold waits
    /// to be collected.
    holder_thread: AtomicUsize,
    /// How many live lockers were made for the id (a copy of the table's count).
    lockers: AtomicUsize,
    pub(crate) id: IdBuf,
    hash: u64,
    queue: Mutex<VecDeque<Arc<LockerShared>>>,
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
pub(crate) type Queue<'a> = MutexGuard<'a, VecDeque<Arc<LockerShared>>>;

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
    /// The holder fired its signal already.
    Fired,
    /// Unlocked: fire the signal without recording why (the unlock path).
    Unlocked,
    /// Ended by something else: fire the signal and record why.
    Because(LossCause, &'a str),
}

impl Slot {
    fn new(id: &str, hash: u64, last_token: u64) -> Self {
        Slot {
            word: AtomicUsize::new(0),
            last_token: AtomicU64::new(last_token),
            holder_thread: AtomicUsize::new(0),
            lockers: AtomicUsize::new(0),
            id: IdBuf::new(id),
            hash,
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// The queue, under the slot's mutex.
    pub(crate) fn queue(&self) -> Queue<'_> {
        // Every section leaves the queue and the word consistent (nothing in them panics
        // mid-update), so a poisoned mutex is safe to keep using.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether somebody holds the id (or it is being handed over).
    pub(crate) fn is_taken(&self) -> bool {
        self.word.load(SeqCst) != 0
    }

    /// Whether the word names `locker` as the holder.
    pub(crate) fn is_held_by(&self, locker: &LockerShared) -> bool {
        self.word.load(SeqCst) & !QUEUED == locker.addr()
    }

    /// Takes the id for `locker` without the mutex, if nobody holds it or queues for it, and
    /// records the grant. One atomic operation.
    pub(crate) fn take(&self, locker: &LockerShared) -> bool {
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

    /// Gives the id `locker` holds back without the mutex, if nobody queues: one atomic
    /// operation. The caller fired the holder's signal first.
    pub(crate) fn give_back(&self, locker: &LockerShared) -> bool {
        self.word
            .compare_exchange(locker.addr(), 0, SeqCst, Relaxed)
            .is_ok()
    }

    /// Whether another live locker was made for the id (a hint: read without ordering).
    pub(crate) fn is_shared(&self) -> bool {
        self.lockers.load(Relaxed) > 1
    }

    /// Whether the id is free (a hint: read without ordering).
    pub(crate) fn is_free(&self) -> bool {
        self.word.load(Relaxed) == 0
    }

    fn holder_runs_elsewhere(&self) -> bool {
        let thread = self.holder_thread.load(Relaxed);
        thread != 0 && thread != this_thread()
    }

    /// Records a grant to `locker`, which the word names now: the next fencing token, the epoch
    /// of its signal, and whether its `lock()` returns it now, on this thread (`running`), or a
    /// queued `lock()` collects it later.
    fn record_grant(&self, locker: &LockerShared, running: bool) {
        // One atomic step, though whoever grants owns the word: a close may evict a holder
        // that took the word a moment ago and grant the id on while that holder still records
        // its grant, and a load-then-store there could hand a token out twice.
        let token = self.last_token.fetch_add(1, Relaxed) + 1;
        locker.token.store(token, Relaxed);
        locker.epoch.store(locker.signal.epoch(), Relaxed);
        self.holder_thread
            .store(if running { this_thread() } else { 0 }, Relaxed);
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
        queue: &mut Queue<'_>,
        locker: &Arc<LockerShared>,
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
            queue.push_back(locker.clone());
            return Attempt::Queued;
        };
        locker.state.store(IDLE, Relaxed);
        attempt
    }

    /// Under the mutex: ends the hold of `locker` (`end` says how) and hands the id to the
    /// first waiter, or frees it. `None` if `locker` does not hold the id (any more); else who
    /// must be woken once the mutex is released.
    pub(crate) fn release(
        &self,
        queue: &mut Queue<'_>,
        locker: &LockerShared,
        end: End<'_>,
    ) -> Option<Wake> {
        // Pin the word first: with QUEUED set, the holder's `give_back` fails and comes here.
        let me = locker.addr();
        let mut word = self.word.load(SeqCst);
        while word & QUEUED == 0 {
            if word != me {
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
        if word & !QUEUED != me {
            return None;
        }
        // The loss first: nobody is granted the id before the holder's `lost()` fires.
        match end {
            End::Fired => {}
            End::Unlocked => locker.signal.fire(),
            End::Because(cause, detail) => drop(locker.signal.fire_because(cause, detail)),
        }
        Some(match queue.pop_front() {
            Some(next) => {
                self.record_grant(&next, false);
                next.state.store(GRANTED, Release);
                let wake = next.wake_later();
                let more = if queue.is_empty() { 0 } else { QUEUED };
                self.word.store(next.addr() | more, SeqCst);
                wake
            }
            None => {
                self.word.store(0, SeqCst);
                Wake::NONE
            }
        })
    }

    /// Under the mutex: takes a waiting `locker` out of the queue (it stopped waiting).
    pub(crate) fn withdraw(&self, queue: &mut Queue<'_>, locker: &LockerShared) {
        locker.state.store(IDLE, Relaxed);
        queue.retain(|w| !std::ptr::eq(&**w, locker));
        if queue.is_empty() {
            // The holder may give the id back without the mutex again.
            self.word.fetch_and(!QUEUED, SeqCst);
        }
    }

    /// Under the mutex: ends whatever `locker` does: releases its hold (ended by `cause`), or
    /// cancels its wait. Returns who must be woken once the mutex is released.
    #[must_use = "the returned locker must be woken"]
    pub(crate) fn evict(
        &self,
        queue: &mut Queue<'_>,
        locker: &LockerShared,
        cause: (LossCause, &str),
    ) -> Wake {
        if locker.state.load(Acquire) == WAITING {
            self.withdraw(queue, locker);
            locker.state.store(CANCELED, Release);
            return locker.wake_later();
        }
        end_hold(locker);
        self.release(queue, locker, End::Because(cause.0, cause.1))
            .unwrap_or(Wake::NONE)
    }

    /// The service closed: cancels every wait, then ends the hold. `lockers` are the id's
    /// lockers (one of them is the holder).
    fn close(&self, lockers: impl Iterator<Item = Arc<LockerShared>>, wakes: &mut Vec<Wake>) {
        let mut queue = self.queue();
        for waiter in queue.drain(..) {
            waiter.state.store(CANCELED, Release);
            wakes.push(waiter.wake_later());
        }
        for locker in lockers {
            if self.is_held_by(&locker) {
                end_hold(&locker);
                let ended = End::Because(LossCause::ServiceClosed, "the service was closed");
                wakes.extend(self.release(&mut queue, &locker, ended));
                break;
            }
        }
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
fn end_hold(holder: &LockerShared) {
    let _ = holder
        .state
        .compare_exchange(GRANTED, CANCELED, AcqRel, Acquire);
}
