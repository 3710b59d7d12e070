//! The id table: who holds each id and who waits for it, under one mutex.

use std::collections::hash_map::{Entry as MapEntry, HashMap};
use std::collections::VecDeque;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;

use lock_core::Held;
use tokio::sync::Notify;

use crate::locker::LockerShared;

/// Locker (and waiter) states; changed only under the table mutex.
pub(crate) const IDLE: u8 = 0;
pub(crate) const WAITING: u8 = 1;
pub(crate) const HELD: u8 = 2;
/// Waiter state only: the session ended while waiting.
pub(crate) const CANCELED: u8 = 3;

/// Every id that somebody holds or waits for. An id nobody holds has no entry.
#[derive(Debug, Default)]
pub(crate) struct Table {
    ids: HashMap<Arc<str>, Entry>,
    last_token: u64,
}

#[derive(Debug)]
struct Entry {
    /// The key of the holding locker. Every entry has a holder: a release hands the lock to the
    /// first waiter directly.
    holder: u64,
    waiters: VecDeque<Arc<Waiter>>,
}

/// A locker queued for an id.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) locker: Arc<LockerShared>,
    pub(crate) state: AtomicU8,
    pub(crate) notify: Notify,
}

/// The outcome of trying to take an id at once.
pub(crate) enum Attempt {
    Granted(Held),
    Queued(Arc<Waiter>),
    Busy,
}

impl Table {
    /// Grants `locker` the id if nobody holds it; otherwise queues it (when `queue`).
    pub(crate) fn acquire(&mut self, locker: &Arc<LockerShared>, queue: bool) -> Attempt {
        match self.ids.entry(locker.id.clone()) {
            MapEntry::Vacant(v) => {
                v.insert(Entry {
                    holder: locker.key,
                    waiters: VecDeque::new(),
                });
                grant(&mut self.last_token, locker);
                Attempt::Granted(locker.held())
            }
            MapEntry::Occupied(_) if !queue => Attempt::Busy,
            MapEntry::Occupied(mut o) => {
                let waiter = Arc::new(Waiter {
                    locker: locker.clone(),
                    state: AtomicU8::new(WAITING),
                    notify: Notify::new(),
                });
                o.get_mut().waiters.push_back(waiter.clone());
                locker.state.store(WAITING, Relaxed);
                Attempt::Queued(waiter)
            }
        }
    }

    /// Releases the id `locker` holds: fires its lost signal, then hands the id to the first
    /// waiter (waking only that one) or removes the entry.
    pub(crate) fn release(&mut self, locker: &LockerShared) {
        debug_assert_eq!(locker.state.load(Relaxed), HELD);
        locker.state.store(IDLE, Relaxed);
        locker.signal.fire();
        let MapEntry::Occupied(mut o) = self.ids.entry(locker.id.clone()) else {
            unreachable!("a held id has an entry");
        };
        debug_assert_eq!(o.get().holder, locker.key);
        match o.get_mut().waiters.pop_front() {
            Some(next) => {
                o.get_mut().holder = next.locker.key;
                grant(&mut self.last_token, &next.locker);
                next.state.store(HELD, Release);
                next.notify.notify_one();
            }
            None => {
                o.remove();
            }
        }
    }

    /// Takes `waiter` out of its queue (it stopped waiting).
    pub(crate) fn withdraw(&mut self, waiter: &Arc<Waiter>) {
        if let Some(entry) = self.ids.get_mut(&waiter.locker.id) {
            entry.waiters.retain(|w| !Arc::ptr_eq(w, waiter));
        }
        waiter.locker.state.store(IDLE, Relaxed);
    }

    /// Ends whatever `locker` does: releases its hold, or cancels its wait.
    pub(crate) fn evict(&mut self, locker: &LockerShared) {
        match locker.state.load(Relaxed) {
            HELD => self.release(locker),
            WAITING => {
                let entry = self
                    .ids
                    .get_mut(&locker.id)
                    .expect("a waited-for id has an entry");
                if let Some(at) = entry
                    .waiters
                    .iter()
                    .position(|w| w.locker.key == locker.key)
                {
                    let waiter = entry.waiters.remove(at).expect("position is in range");
                    waiter.state.store(CANCELED, Release);
                    waiter.notify.notify_one();
                }
                locker.state.store(IDLE, Relaxed);
            }
            _ => {}
        }
    }

    /// How many ids are held or waited for.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Records a grant on `locker`; the caller has made it the holder.
///
/// The hold's epoch is taken now, under the mutex: if the locker's session ends before a
/// queued waiter gets to run, the waiter's `Held` is already lost.
fn grant(last_token: &mut u64, locker: &LockerShared) {
    *last_token += 1;
    locker.state.store(HELD, Relaxed);
    locker.token.store(*last_token, Relaxed);
    locker.epoch.store(locker.signal.epoch(), Relaxed);
}
