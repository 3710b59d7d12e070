//! `example-mem:` — a tiny in-memory backend written the way a third-party crate would write
//! one, against `lock-core` only: proof that schemes can be added from outside, and that the
//! conformance suite catches broken backends ([`Bugs`] switches on deliberate bugs).
//!
//! Every `example-mem:` service of a process shares one lock table (a [`Store`]). Sessions are
//! not leases (the TTL is unused): `Session::done` is the provided `None`, so the handles end
//! them, releasing their holds and cancelling their waiters (see `lock_core::backend` for all
//! the handles do). Deliberately simple: one mutex; every change wakes every waiter.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use lock_core::backend::{self, ConnectionString, Hold, OpFuture, OpenFuture, Party, Signal};
use lock_core::{Error, Result, SessionConfig};
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

/// An id's holder and waiters, each named by its locker's lost signal.
#[derive(Debug, Default)]
struct Entry {
    holder: Option<Arc<Signal>>,
    waiting: VecDeque<Arc<Signal>>,
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
        let (mem, id, signal) = (self.clone(), id.to_owned(), Arc::default());
        Arc::new(MemLocker {
            mem,
            id,
            signal,
            party,
        })
    }
}

#[derive(Debug)]
struct MemLocker {
    mem: Mem,
    id: String,
    /// Fired when this locker's hold ends; it names the locker in the table.
    signal: Arc<Signal>,
    party: Party,
}

impl MemLocker {
    fn ids(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.mem.table.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is(&self, signal: Option<&Arc<Signal>>) -> bool {
        signal.is_some_and(|s| Arc::ptr_eq(s, &self.signal))
    }

    /// This locker's entry for its id, unless it already holds the id.
    fn entry<'a>(&self, ids: &'a mut HashMap<String, Entry>) -> Result<&'a mut Entry> {
        let entry = ids.entry(self.id.clone()).or_default();
        let free = !self.is(entry.holder.as_ref());
        free.then_some(entry).ok_or(Error::AlreadyLocked)
    }

    /// The hold, once this waiter is first in line and the id is free.
    fn first_in_line(&self) -> Option<Hold> {
        let mut ids = self.ids();
        let entry = ids.get_mut(&self.id)?;
        let free = entry.holder.is_none() || self.mem.bugs.no_exclusion;
        // Granted, it leaves the queue when its `Withdraw` drops.
        (free && self.is(entry.waiting.front())).then(|| self.grant(entry))
    }

    /// Makes this locker the holder, with the next fencing token.
    fn grant(&self, entry: &mut Entry) -> Hold {
        entry.holder = Some(self.signal.clone());
        let mut token = self.mem.token.fetch_add(1, Relaxed) + 1;
        if self.mem.bugs.constant_tokens {
            token = 1;
        }
        Hold::new(self.signal.clone(), self.signal.epoch(), None, token)
    }

    /// Ends this locker's hold: its signal fires and, with `wake`, the waiters look again.
    fn end_hold(&self, wake: bool) -> Result<()> {
        let mut ids = self.ids();
        let entry = ids.get_mut(&self.id).filter(|e| self.is(e.holder.as_ref()));
        entry.ok_or(Error::NotHeld)?.holder = None;
        if !self.mem.bugs.no_lost_signal {
            self.signal.fire();
        }
        tidy(&mut ids, &self.id);
        drop(ids);
        if wake {
            self.mem.table.changed.notify_waiters();
        }
        Ok(())
    }
}

/// Forgets `id` once nobody holds it or waits for it.
fn tidy(ids: &mut HashMap<String, Entry>, id: &str) {
    let unused = |e: &Entry| e.holder.is_none() && e.waiting.is_empty();
    if ids.get(id).is_some_and(unused) {
        ids.remove(id);
    }
}

/// Takes a waiter out of its id's queue however its `lock()` ends (granted, failed, dropped).
struct Withdraw<'a>(&'a MemLocker);

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let (mut ids, me) = (self.0.ids(), self.0);
        if let Some(entry) = ids.get_mut(&me.id) {
            entry.waiting.retain(|w| !Arc::ptr_eq(w, &me.signal));
        }
        tidy(&mut ids, &me.id);
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
            let free = e.holder.is_none() && (e.waiting.is_empty() || bugs.try_lock_overtakes);
            (free || bugs.no_exclusion).then(|| self.grant(e))
        });
        tidy(&mut ids, &self.id);
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

fn open(cs: ConnectionString) -> OpenFuture {
    let service = cs.options().finish().map(|()| Store::global().service());
    Box::pin(std::future::ready(service))
}

lock_core::register_service!("example-mem", open);
