//! The id table: who holds each id and who waits for it, under one mutex.
//!
//! Hashes are computed once per locker (at `new_locker`), so lock and unlock hash nothing.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;

use hashbrown::hash_table::{Entry as SlotEntry, HashTable};

use crate::locker::LockerShared;

/// Locker states; changed only under the table mutex.
pub(crate) const IDLE: u8 = 0;
pub(crate) const WAITING: u8 = 1;
pub(crate) const HELD: u8 = 2;
/// The session ended while the locker waited.
pub(crate) const CANCELED: u8 = 3;

/// Every id that somebody holds or waits for. An id nobody holds has no entry.
#[derive(Default)]
pub(crate) struct Table {
    ids: HashTable<Entry>,
    last_token: u64,
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
    id: Arc<str>,
    /// The key of the holding locker. Every entry has a holder: a release hands the lock to the
    /// first waiter directly.
    holder: u64,
    waiters: VecDeque<Arc<LockerShared>>,
}

/// The outcome of trying to take an id at once.
pub(crate) enum Attempt {
    Granted,
    Queued,
    Busy,
}

fn same_id(locker: &LockerShared) -> impl Fn(&Entry) -> bool + '_ {
    move |e: &Entry| Arc::ptr_eq(&e.id, &locker.id) || *e.id == *locker.id
}

impl Table {
    /// Grants `locker` the id if nobody holds it; otherwise queues it (when `queue`).
    pub(crate) fn acquire(&mut self, locker: &Arc<LockerShared>, queue: bool) -> Attempt {
        match self.ids.entry(locker.hash, same_id(locker), |e| e.hash) {
            SlotEntry::Vacant(v) => {
                v.insert(Entry {
                    hash: locker.hash,
                    id: locker.id.clone(),
                    holder: locker.key,
                    waiters: VecDeque::new(),
                });
                grant(&mut self.last_token, locker);
                Attempt::Granted
            }
            SlotEntry::Occupied(_) if !queue => Attempt::Busy,
            SlotEntry::Occupied(mut o) => {
                locker.state.store(WAITING, Release);
                o.get_mut().waiters.push_back(locker.clone());
                Attempt::Queued
            }
        }
    }

    /// Releases the id `locker` holds: fires its lost signal, then hands the id to the first
    /// waiter or removes the entry. Returns the new holder, to be woken (only that one) once
    /// the caller has let go of the table mutex.
    #[must_use = "the new holder must be woken"]
    pub(crate) fn release(&mut self, locker: &LockerShared) -> Wake {
        debug_assert_eq!(locker.state.load(Relaxed), HELD);
        locker.state.store(IDLE, Relaxed);
        locker.signal.fire();
        let Ok(mut slot) = self.ids.find_entry(locker.hash, same_id(locker)) else {
            unreachable!("a held id has an entry");
        };
        debug_assert_eq!(slot.get().holder, locker.key);
        match slot.get_mut().waiters.pop_front() {
            Some(next) => {
                slot.get_mut().holder = next.key;
                grant(&mut self.last_token, &next);
                Wake(Some(next))
            }
            None => {
                slot.remove();
                Wake(None)
            }
        }
    }

    /// Takes a waiting `locker` out of its queue (it stopped waiting).
    pub(crate) fn withdraw(&mut self, locker: &LockerShared) {
        locker.state.store(IDLE, Relaxed);
        if let Some(entry) = self.ids.find_mut(locker.hash, same_id(locker)) {
            entry.waiters.retain(|w| w.key != locker.key);
        }
    }

    /// Ends whatever `locker` does: releases its hold, or cancels its wait. Returns who must
    /// be woken once the table mutex is released.
    #[must_use = "the returned locker must be woken"]
    pub(crate) fn evict(&mut self, locker: &Arc<LockerShared>) -> Wake {
        match locker.state.load(Relaxed) {
            HELD => self.release(locker),
            WAITING => {
                self.withdraw(locker);
                locker.state.store(CANCELED, Release);
                Wake(Some(locker.clone()))
            }
            _ => Wake(None),
        }
    }

    /// How many ids are held or waited for.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// A locker whose state changed (granted or canceled) and whose pending `lock()` must be
/// woken — after the table mutex is released, so that it does not wake into a held mutex.
pub(crate) struct Wake(Option<Arc<LockerShared>>);

impl Wake {
    /// Whether there is anybody to wake.
    pub(crate) fn is_needed(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) fn wake(self) {
        if let Some(locker) = self.0 {
            locker.wake();
        }
    }
}

/// Records a grant on `locker`; the caller has made it the holder.
///
/// The hold's epoch is taken now, under the mutex: if the locker's session ends before a
/// queued waiter gets to run, the waiter's `Held` is already lost.
fn grant(last_token: &mut u64, locker: &LockerShared) {
    *last_token += 1;
    locker.token.store(*last_token, Relaxed);
    locker.epoch.store(locker.signal.epoch(), Relaxed);
    locker.state.store(HELD, Release);
}
