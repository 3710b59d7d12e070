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
//!
//! This module is the backend's lowest layer: the state that the table links — the service's
//! shared part, what lockers need of their session, and the lockers' own state. What acts on
//! it lives above: `locker` (attempts and releases), `session` (closing its lockers) and
//! `service` (opening sessions, closing everything).

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::Waker;

use atomic_waker::AtomicWaker;
use hashbrown::hash_table::{Entry as TableEntry, HashTable};
use hashbrown::DefaultHashBuilder;
use lock_core::backend::{self, HasSignal, Party, Signal};
use lock_core::{Done, Error, LossCause, Result};

use crate::id::IdBuf;
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

#[derive(Debug, Default)]
pub(crate) struct ServiceShared {
    /// On cache lines of its own: every session clones and drops the `Arc` around this struct,
    /// and those count updates must not take the mutex's line away from a locker on another
    /// core (measured: the counter example's ratio to its baseline dropped ~6 % on two workers).
    pub(crate) table: CacheLine<Mutex<Table>>,
    /// Set once, by `close`, before it ends the holds and waits in the table; every attempt
    /// reads it after it took its id or claimed its locker (see `LocalSession::check_open`).
    pub(crate) closed: AtomicBool,
    /// Open sessions whose `done()` was asked for, to fire when the service closes; `None`
    /// once it closed. Other sessions learn of the close from `closed`, and their holds and
    /// waits are in the table.
    watchers: Mutex<Option<WeakList<SessionCore>>>,
    hasher: DefaultHashBuilder,
}

impl ServiceShared {
    /// The state of a new service: an empty table, open.
    pub(crate) fn new() -> Self {
        ServiceShared {
            watchers: Mutex::new(Some(WeakList::default())),
            ..ServiceShared::default()
        }
    }

    /// The table hash of `id`; lockers compute it once.
    pub(crate) fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        // The table is consistent at every unlock point (no code panics while holding it
        // mid-update), so a poisoned mutex is safe to keep using.
        self.table.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn watchers(&self) -> MutexGuard<'_, Option<WeakList<SessionCore>>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Fire `session`'s `done()` when the service closes (at once if it has).
    pub(crate) fn watch(&self, session: &Arc<SessionCore>) {
        match self.watchers().as_mut() {
            Some(watchers) => watchers.push(Arc::downgrade(session)),
            None => session.end(),
        }
    }
}

/// What a session's lockers need of it: whether it is open, and its service. The rest of the
/// session (its lockers, for closing) is the session module's.
#[derive(Debug)]
pub(crate) struct SessionCore {
    pub(crate) service: Arc<ServiceShared>,
    pub(crate) closed: AtomicBool,
    /// Fired once, when the session ends; made by the first `done()` (a `Done` holds it, not
    /// the session, so that waiting for the end does not keep the session open).
    done: OnceLock<Arc<Signal>>,
    /// Whether the service must fire `done` when it closes.
    watched: AtomicBool,
}

impl SessionCore {
    pub(crate) fn new(service: Arc<ServiceShared>) -> Self {
        SessionCore {
            service,
            closed: AtomicBool::new(false),
            done: OnceLock::new(),
            watched: AtomicBool::new(false),
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

    /// The session's `done()`: resolves when it ends.
    pub(crate) fn done(self: &Arc<Self>) -> Done {
        let done = self.done.get_or_init(|| Arc::new(Signal::new())).clone();
        if !self.watched.swap(true, Relaxed) {
            self.service.watch(self);
        }
        // Pairs with the fence in `end`: a session that ended before its signal existed
        // fires it here.
        fence(SeqCst);
        if self.is_over() {
            done.fire();
        }
        backend::done(done, 0, None)
    }
}

/// A cheap identity of the calling thread: the address of a thread-local.
pub(crate) fn this_thread() -> usize {
    thread_local!(static MARK: u8 = const { 0 });
    MARK.with(|mark| std::ptr::from_ref(mark) as usize)
}

/// A locker of the `local:` backend; see [`lock_core::backend::Locker`]. One allocation: the
/// application's handles share it, and its slot's queue while it waits.
pub struct LocalLocker {
    /// The slot of the locker's id, found once, when the locker was made.
    pub(crate) slot: Arc<Slot>,
    /// This locker, for its slot's queue and its session's list.
    pub(crate) me: Weak<LocalLocker>,
    /// What the locker needs of its session (the session itself is kept open by `party`).
    pub(crate) session: Arc<SessionCore>,
    /// IDLE, WAITING, GRANTED or CANCELED (see the table module). Whether the locker holds
    /// its id is the slot's to say.
    pub(crate) state: AtomicU8,
    /// The waker of a pending `lock()`. Registered by the waiter, woken by whoever granted or
    /// canceled it (after setting `state`), so a grant is never missed.
    pub(crate) waker: AtomicWaker,
    /// The slot's signal epoch of the current hold (its fencing token follows from it);
    /// written by whoever granted it.
    pub(crate) epoch: AtomicU64,
    /// This locker held the lock before: its `lock()` queues behind a running holder at once
    /// instead of watching it (see the locker module).
    pub(crate) held_before: AtomicBool,
    /// What the handles keep of this locker.
    pub(crate) party: Party,
}

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
    pub(crate) signal: Signal,
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
