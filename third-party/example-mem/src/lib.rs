//! `example-mem:` — a tiny in-memory backend written the way a third-party crate would write
//! one, against `lock-core` only: proof that schemes can be added from outside, and that the
//! conformance suite catches broken backends ([`Bugs`] switches on deliberate bugs).
//!
//! Every `example-mem:` service of a process shares one lock table (a [`Store`]). Sessions are
//! not leases (the TTL is unused): `Session::done` is the provided `None`, so the handles end
//! them, releasing their holds and cancelling their waiters (see `lock_core::backend` for all
//! the handles do). Deliberately simple: one mutex; every change wakes every waiter.
//!
//! Semaphores and elections are the same table: an id has up to `limit` holders (1 for a lock
//! or an election), and an election's entry has observers, told of every change.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use lock_core::backend::{
    self, ConnectionString, Hold, OpFuture, OpenFuture, Party, Publisher, Signal,
};
use lock_core::{Error, Leader, Observer, Result, SessionConfig};
use tokio::sync::Notify;

/// Deliberate bugs, for showing that the conformance suite catches them. All off by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bugs {
    /// `unlock` does not wake waiters.
    pub no_wake_on_unlock: bool,
    /// Every hold gets fencing token 1.
    pub constant_tokens: bool,
    /// `lost()` never fires.
    pub no_lost_signal: bool,
    /// Locks are granted even while held.
    pub no_exclusion: bool,
    /// New waiters queue at the front.
    pub lifo: bool,
    /// Every service gets a lock table of its own: no exclusion across services.
    pub separate_services: bool,
    /// Every service counts fencing tokens on its own: tokens repeat across services.
    pub per_service_tokens: bool,
    /// `try_lock` takes a free id even while a waiter is queued for it.
    pub try_lock_overtakes: bool,
    /// A semaphore grants one permit more than its limit.
    pub semaphore_over_admits: bool,
    /// An election's `proclaim` changes the value without telling its observers.
    pub proclaim_unobserved: bool,
}

/// A lock table, shared by every service opened from it; `example-mem:` uses [`Store::global`].
#[derive(Debug, Clone)]
pub struct Store(Arc<Table>, Bugs);

#[derive(Debug, Default)]
struct Table {
    /// Per id with a holder or waiters.
    ids: Mutex<HashMap<String, Entry>>,
    /// The last fencing token handed out.
    token: Arc<AtomicU64>,
    /// Notified on every change: each waiter then checks whether it is first in line.
    changed: Notify,
}

/// An id's holders and waiters, each named by its locker's lost signal; an election's
/// observers.
#[derive(Debug, Default)]
struct Entry {
    /// The limit its holders and waiters use.
    limit: u32,
    /// Each with its token and (an election leader's) value.
    holders: Vec<(Arc<Signal>, u64, Vec<u8>)>,
    waiting: VecDeque<Arc<Signal>>,
    observers: Vec<Publisher>,
}

impl Entry {
    fn leader(&self) -> Option<Leader> {
        let (_, token, value) = self.holders.first()?;
        Some(Leader::new(value.clone(), *token))
    }

    /// Tells the observers the election's state.
    fn publish(&mut self) {
        let leader = self.leader();
        self.observers.retain(|p| p.publish(leader.clone()));
    }
}

impl Store {
    /// An empty lock table with the given deliberate bugs (use `Bugs::default()` for none).
    pub fn new(bugs: Bugs) -> Self {
        Store(Arc::default(), bugs)
    }

    /// The table every `example-mem:` service of this process uses.
    pub fn global() -> &'static Store {
        static GLOBAL: OnceLock<Store> = OnceLock::new();
        GLOBAL.get_or_init(|| Store::new(Bugs::default()))
    }

    /// A new service on this table (on a table of its own with `Bugs::separate_services`).
    pub fn service(&self) -> lock_core::Service {
        let bugs = self.1;
        let table = match bugs.separate_services {
            true => Arc::default(),
            false => self.0.clone(),
        };
        let token = match bugs.per_service_tokens {
            true => Arc::default(),
            false => table.token.clone(),
        };
        backend::service(Mem { table, token, bugs })
    }
}

/// A service, and each of its sessions (which keep no state: the handles end them): the table
/// and token counter its lockers use, and the bugs they have.
#[derive(Debug, Clone)]
struct Mem {
    table: Arc<Table>,
    token: Arc<AtomicU64>,
    bugs: Bugs,
}

impl backend::Service for Mem {
    fn new_session(&self, _: SessionConfig) -> OpFuture<'_, Result<Arc<dyn backend::Session>>> {
        OpFuture::ready(Ok(Arc::new(self.clone())))
    }
}

impl backend::Session for Mem {
    fn new_locker(&self, id: &str, party: Party) -> Arc<dyn backend::Locker> {
        self.party("lock", id, 1, party)
    }

    fn new_semaphore(
        &self,
        id: &str,
        limit: u32,
        party: Party,
    ) -> Result<Arc<dyn backend::Locker>> {
        Ok(self.party("sem", id, limit, party))
    }

    fn new_election(&self, name: &str, party: Party) -> Result<Arc<dyn backend::Election>> {
        Ok(self.party("elect", name, 1, party))
    }
}

impl Mem {
    /// A party of `id` in the namespace `kind`, taking up to `limit` holders.
    fn party(&self, kind: &str, id: &str, limit: u32, party: Party) -> Arc<MemLocker> {
        Arc::new(MemLocker {
            mem: self.clone(),
            key: format!("{kind}:{id}"),
            id: id.to_owned(),
            limit,
            signal: Arc::default(),
            proposal: Mutex::default(),
            party,
        })
    }
}

#[derive(Debug)]
struct MemLocker {
    mem: Mem,
    /// Its id in the table: kind and id.
    key: String,
    id: String,
    limit: u32,
    /// The value an election campaign proposes.
    proposal: Mutex<Vec<u8>>,
    /// Fired when this locker's hold ends; it names the locker in the table.
    signal: Arc<Signal>,
    party: Party,
}

impl MemLocker {
    fn ids(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.mem.table.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn holds(&self, entry: &Entry) -> bool {
        entry
            .holders
            .iter()
            .any(|h| Arc::ptr_eq(&h.0, &self.signal))
    }

    /// This locker's entry for its id, unless it already holds the id or the id is in use
    /// with another limit.
    fn entry<'a>(&self, ids: &'a mut HashMap<String, Entry>) -> Result<&'a mut Entry> {
        let entry = ids.entry(self.key.clone()).or_default();
        if self.holds(entry) {
            return Err(Error::AlreadyLocked);
        }
        let in_use = !entry.holders.is_empty() || !entry.waiting.is_empty();
        if in_use && entry.limit != self.limit {
            let (id, ours, theirs) = (self.id.clone(), self.limit, entry.limit);
            return Err(Error::LimitMismatch { id, ours, theirs });
        }
        entry.limit = self.limit;
        Ok(entry)
    }

    /// Whether `entry` has a permit free.
    fn has_room(&self, entry: &Entry) -> bool {
        let over = u32::from(self.mem.bugs.semaphore_over_admits && self.key.starts_with("sem:"));
        entry.holders.len() < (entry.limit + over) as usize || self.mem.bugs.no_exclusion
    }

    /// The hold, once this waiter is first in line and a permit is free.
    fn first_in_line(&self) -> Option<Hold> {
        let mut ids = self.ids();
        let entry = ids.get_mut(&self.key)?;
        let first = entry
            .waiting
            .front()
            .is_some_and(|w| Arc::ptr_eq(w, &self.signal));
        // Granted, it leaves the queue when its `Withdraw` drops.
        (first && self.has_room(entry)).then(|| self.grant(entry))
    }

    /// Makes this locker a holder, with the next fencing token.
    fn grant(&self, entry: &mut Entry) -> Hold {
        let mut token = self.mem.token.fetch_add(1, Relaxed) + 1;
        if self.mem.bugs.constant_tokens {
            token = 1;
        }
        let value = self.proposal().clone();
        entry.holders.push((self.signal.clone(), token, value));
        entry.publish();
        Hold::new(self.signal.clone(), self.signal.epoch(), None, token)
    }

    fn proposal(&self) -> MutexGuard<'_, Vec<u8>> {
        self.proposal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends this locker's hold: its signal fires and, with `wake`, the waiters look again.
    fn end_hold(&self, wake: bool) -> Result<()> {
        let mut ids = self.ids();
        let entry = ids.get_mut(&self.key).filter(|e| self.holds(e));
        let entry = entry.ok_or(Error::NotHeld)?;
        entry.holders.retain(|h| !Arc::ptr_eq(&h.0, &self.signal));
        if !self.mem.bugs.no_lost_signal {
            self.signal.fire();
        }
        entry.publish();
        tidy(&mut ids, &self.key);
        drop(ids);
        if wake {
            self.mem.table.changed.notify_waiters();
        }
        Ok(())
    }
}

/// Forgets `key` once nobody holds it, waits for it or observes it.
fn tidy(ids: &mut HashMap<String, Entry>, key: &str) {
    let unused = |e: &mut Entry| {
        e.observers.retain(|p| !p.is_closed());
        e.holders.is_empty() && e.waiting.is_empty() && e.observers.is_empty()
    };
    if ids.get_mut(key).is_some_and(unused) {
        ids.remove(key);
    }
}

/// Takes a waiter out of its id's queue however its `lock()` ends (granted, failed, dropped).
struct Withdraw<'a>(&'a MemLocker);

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let (mut ids, me) = (self.0.ids(), self.0);
        if let Some(entry) = ids.get_mut(&me.key) {
            entry.waiting.retain(|w| !Arc::ptr_eq(w, &me.signal));
        }
        tidy(&mut ids, &me.key);
        drop(ids);
        me.mem.table.changed.notify_waiters();
    }
}

impl backend::Locker for MemLocker {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        OpFuture::boxed(async move {
            {
                let mut ids = self.ids();
                let waiting = &mut self.entry(&mut ids)?.waiting;
                match self.mem.bugs.lifo {
                    true => waiting.push_front(self.signal.clone()),
                    false => waiting.push_back(self.signal.clone()),
                }
            }
            let _withdraw = Withdraw(self);
            loop {
                let mut notified = std::pin::pin!(self.mem.table.changed.notified());
                notified.as_mut().enable();
                if let Some(hold) = self.first_in_line() {
                    return Ok(hold);
                }
                notified.await;
            }
        })
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        let (mut ids, bugs) = (self.ids(), self.mem.bugs);
        let outcome = self.entry(&mut ids).map(|e| {
            let free = self.has_room(e) && (e.waiting.is_empty() || bugs.try_lock_overtakes);
            free.then(|| self.grant(e))
        });
        tidy(&mut ids, &self.key);
        OpFuture::ready(outcome)
    }

    fn unlock(&self, _token: u64) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.end_hold(!self.mem.bugs.no_wake_on_unlock))
    }

    fn release(&self, _token: u64) {
        let _ = self.end_hold(true); // not held: nothing to do
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn party(&self) -> &Party {
        &self.party
    }
}

impl backend::Election for MemLocker {
    fn propose(&self, value: Vec<u8>) {
        *self.proposal() = value;
    }

    fn proclaim(&self, token: u64, value: Vec<u8>) -> OpFuture<'_, Result<()>> {
        let mut ids = self.ids();
        let Some(entry) = ids.get_mut(&self.key) else {
            return OpFuture::ready(Err(Error::NotHeld));
        };
        let mine =
            |h: &&mut (Arc<Signal>, u64, Vec<u8>)| Arc::ptr_eq(&h.0, &self.signal) && h.1 == token;
        let Some(holder) = entry.holders.iter_mut().find(mine) else {
            return OpFuture::ready(Err(Error::NotHeld));
        };
        holder.2 = value;
        if !self.mem.bugs.proclaim_unobserved {
            entry.publish();
        }
        OpFuture::ready(Ok(()))
    }

    fn leader(&self) -> OpFuture<'_, Result<Option<Leader>>> {
        OpFuture::ready(Ok(self.ids().get(&self.key).and_then(Entry::leader)))
    }

    fn observe(&self) -> OpFuture<'_, Result<Observer>> {
        let (publisher, observer) = Observer::channel();
        let mut ids = self.ids();
        let entry = ids.entry(self.key.clone()).or_default();
        publisher.publish(entry.leader());
        entry.observers.push(publisher);
        OpFuture::ready(Ok(observer))
    }

    fn into_locker(self: Arc<Self>) -> Arc<dyn backend::Locker> {
        self
    }
}

fn open(cs: ConnectionString) -> OpenFuture {
    let service = cs.options().finish().map(|()| Store::global().service());
    Box::pin(std::future::ready(service))
}

lock_core::register_service!("example-mem", open);
