//! The id table: who holds each id and who waits for it, under one mutex.
//!
//! Hashes are computed once per locker (at `new_locker`), so lock and unlock hash nothing.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::Arc;
use std::task::Waker;

use hashbrown::hash_table::{Entry as SlotEntry, HashTable};
use lock_core::LossCause;

use crate::locker::{this_thread, LockerShared};

// Locker states. Changed under the table mutex, except by the locker's own calls: an attempt
// claims the locker (IDLE -> WAITING) before it takes the mutex, and a pending `lock()` moves
// GRANTED -> HELD and CANCELED -> IDLE when it collects its outcome.
/// Neither holding nor waiting.
pub(crate) const IDLE: u8 = 0;
/// Queued, or claimed by an attempt in progress.
pub(crate) const WAITING: u8 = 1;
/// Holding, and the `lock()` call returned the hold.
pub(crate) const HELD: u8 = 2;
/// The wait ended without the lock (the session ended); the pending `lock()` fails.
pub(crate) const CANCELED: u8 = 3;
/// Handed the lock by a release while queued; the pending `lock()` has not collected it yet.
pub(crate) const GRANTED: u8 = 4;

/// Every id that somebody holds or waits for. An id nobody holds has no entry.
#[derive(Default)]
pub(crate) struct Table {
    ids: HashTable<Entry>,
    last_token: u64,
    /// The service closed (set with the table emptied): nothing may be granted or queued.
    closed: bool,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("ids", &self.ids.len())
            .finish()
    }
}

struct Entry {
    hash: u64,
    /// The holding locker, whose id is the entry's. Every entry has a holder: a release hands
    /// the lock to the first waiter directly.
    holder: Arc<LockerShared>,
    waiters: VecDeque<Arc<LockerShared>>,
}

/// The outcome of trying to take an id at once.
pub(crate) enum Attempt {
    Granted,
    Queued,
    Busy,
    /// Taken by this holder, which is running with the lock; nobody waits.
    Running(Arc<LockerShared>),
}

/// What `acquire` does when the id is taken.
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

fn same_id(locker: &LockerShared) -> impl Fn(&Entry) -> bool + '_ {
    move |e: &Entry| {
        std::ptr::eq(&*e.holder, locker) || e.holder.id.as_bytes() == locker.id.as_bytes()
    }
}

impl Table {
    /// Grants `locker` the id if nobody holds it; otherwise does what `if_taken` says. The
    /// caller has claimed the locker (state WAITING) and holds the table mutex.
    pub(crate) fn acquire(&mut self, locker: &Arc<LockerShared>, if_taken: IfTaken) -> Attempt {
        match self.ids.entry(locker.hash, same_id(locker), |e| e.hash) {
            SlotEntry::Vacant(v) => {
                grant(&mut self.last_token, locker, HELD);
                locker.holder_thread.store(this_thread(), Relaxed);
                v.insert(Entry {
                    hash: locker.hash,
                    holder: locker.clone(),
                    waiters: VecDeque::new(),
                });
                Attempt::Granted
            }
            SlotEntry::Occupied(_) if if_taken == IfTaken::Fail => {
                locker.state.store(IDLE, Relaxed);
                Attempt::Busy
            }
            // A holder whose `lock()` returned on this thread is not running now: we are.
            SlotEntry::Occupied(o)
                if if_taken == IfTaken::QueueUnlessRunning
                    && o.get().waiters.is_empty()
                    && o.get().holder.state.load(Relaxed) == HELD
                    && o.get().holder.holder_thread.load(Relaxed) != this_thread() =>
            {
                locker.state.store(IDLE, Relaxed);
                Attempt::Running(o.get().holder.clone())
            }
            SlotEntry::Occupied(mut o) => {
                o.get_mut().waiters.push_back(locker.clone());
                Attempt::Queued
            }
        }
    }

    /// Releases the id `locker` holds (HELD, or GRANTED and its `lock()` is being dropped).
    #[must_use = "the new holder must be woken"]
    pub(crate) fn release(&mut self, locker: &LockerShared) -> Wake {
        debug_assert!(matches!(locker.state.load(Relaxed), HELD | GRANTED));
        locker.state.store(IDLE, Relaxed);
        self.release_id(locker, None)
    }

    /// Fires `locker`'s lost signal (recording `cause`, except on the unlock path: its cause is
    /// plain and it is the hot path), then hands its id to the first waiter or removes the
    /// entry; the caller sets the locker's state. Returns the new holder, to be woken (only
    /// that one) once the caller has let go of the table mutex.
    fn release_id(&mut self, locker: &LockerShared, cause: Option<(LossCause, &str)>) -> Wake {
        match cause {
            Some((cause, detail)) => drop(locker.signal.fire_because(cause, detail)),
            None => locker.signal.fire(),
        }
        let Ok(mut slot) = self.ids.find_entry(locker.hash, same_id(locker)) else {
            unreachable!("a held id has an entry");
        };
        debug_assert!(std::ptr::eq(&*slot.get().holder, locker));
        match slot.get_mut().waiters.pop_front() {
            Some(next) => {
                grant(&mut self.last_token, &next, GRANTED);
                let wake = next.wake_later();
                slot.get_mut().holder = next;
                wake
            }
            None => {
                slot.remove();
                Wake::NONE
            }
        }
    }

    /// Takes a waiting `locker` out of its queue (it stopped waiting).
    pub(crate) fn withdraw(&mut self, locker: &LockerShared) {
        locker.state.store(IDLE, Relaxed);
        if let Some(entry) = self.ids.find_mut(locker.hash, same_id(locker)) {
            entry.waiters.retain(|w| !std::ptr::eq(&**w, locker));
        }
    }

    /// Ends whatever `locker` does: releases its hold (ended by `cause`), or cancels its wait.
    /// Returns who must be woken once the table mutex is released.
    #[must_use = "the returned locker must be woken"]
    pub(crate) fn evict(&mut self, locker: &Arc<LockerShared>, cause: (LossCause, &str)) -> Wake {
        match locker.state.load(Relaxed) {
            HELD | GRANTED => {
                end_hold(locker);
                self.release_id(locker, Some(cause))
            }
            WAITING => {
                self.withdraw(locker);
                locker.state.store(CANCELED, Release);
                locker.wake_later()
            }
            _ => Wake::NONE,
        }
    }

    /// Ends every hold and every wait, and refuses new ones: the service closed. Returns who
    /// must be woken once the table mutex is released.
    pub(crate) fn close(&mut self) -> Vec<Wake> {
        self.closed = true;
        let mut wakes = Vec::new();
        for entry in self.ids.drain() {
            end_hold(&entry.holder);
            entry
                .holder
                .signal
                .fire_because(LossCause::ServiceClosed, "the service was closed");
            for waiter in entry.waiters {
                waiter.state.store(CANCELED, Release);
                wakes.push(waiter.wake_later());
            }
        }
        wakes
    }

    /// Whether the service closed; read under the mutex, by every attempt.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// How many ids are held or waited for.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// The pending `lock()` of a locker whose state changed (granted or canceled), to be woken
/// after the table mutex is released, so that it does not wake into a held mutex. Taken from
/// the locker after its state was set: a `lock()` that registers later sees the state.
pub(crate) struct Wake(Option<Waker>);

impl Wake {
    pub(crate) const NONE: Wake = Wake(None);

    pub(crate) fn new(waker: Option<Waker>) -> Self {
        Wake(waker)
    }

    /// Whether there is anybody to wake.
    pub(crate) fn is_needed(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) fn wake(self) {
        if let Some(waker) = self.0 {
            waker.wake();
        }
    }
}

/// Records a grant on `locker` (HELD when its `lock()` returns it at once, GRANTED when a
/// queued `lock()` is to collect it); the caller has made it the holder.
///
/// The hold's epoch is taken now, under the mutex: if the hold ends before a queued waiter
/// collects it, the waiter's `Held` is already lost.
fn grant(last_token: &mut u64, locker: &LockerShared, state: u8) {
    *last_token += 1;
    locker.token.store(*last_token, Relaxed);
    locker.epoch.store(locker.signal.epoch(), Relaxed);
    locker.state.store(state, Release);
}

/// Sets the state of a holder whose hold is evicted (its session or service ended). A grant
/// its queued `lock()` has not collected is canceled, so that call fails instead of waiting
/// for a grant that is gone; if the call collects it first, it returns a hold already lost.
fn end_hold(holder: &LockerShared) {
    if holder
        .state
        .compare_exchange(GRANTED, CANCELED, AcqRel, Acquire)
        .is_err()
    {
        holder.state.store(IDLE, Relaxed);
    }
}
