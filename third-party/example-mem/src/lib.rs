//! `example-mem:` — a tiny in-memory backend written the way a third-party crate would write
//! one, against `lock-core` only: proof that schemes can be added from outside, and that the
//! conformance suite catches broken backends ([`Bugs`] switches on deliberate bugs).
//!
//! Every `example-mem:` service of a process shares one lock table (a [`Store`]); other
//! processes do not see it. Sessions are not leases: the TTL is not used. Its conformance
//! harness declares both. The handles do the rest for every backend (see `lock_core::backend`):
//! they validate ids and configurations, apply the session's timeout, allow one attempt per
//! locker at a time, match an unlock to its hold, and refuse a second `close()`. It is
//! deliberately simple: one mutex, and every change wakes every waiter, which then checks
//! whether it is first in line.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Poll;

use lock_core::backend::{self, ConnectionString, Hold, OpFuture, OpenFuture, Party, Signal};
use lock_core::{Done, Error, Result, SessionConfig};
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
    /// Every service gets a lock table of its own, although the backend says services share
    /// one: no exclusion across services.
    pub separate_services: bool,
    /// Every service counts fencing tokens on its own: tokens repeat across services.
    pub per_service_tokens: bool,
    /// `try_lock` takes a free id even while a waiter is queued for it.
    pub try_lock_overtakes: bool,
    /// `unlock` waits for a "round trip" before it releases: dropped then, it releases nothing.
    pub unlock_not_cancel_safe: bool,
}

#[derive(Debug, Default)]
struct State {
    /// The last key given to a service, session or locker.
    last_key: u64,
    /// The last fencing token, per service with `per_service_tokens` (else under key 0).
    tokens: HashMap<u64, u64>,
    closed_services: HashSet<u64>,
    /// Per open session: its service and its `done()` signal.
    sessions: HashMap<u64, (u64, Arc<Signal>)>,
    /// Per id with a holder or waiters: the holder and the waiting lockers.
    ids: HashMap<String, (Option<Holder>, VecDeque<u64>)>,
}

/// The holding locker, its session, and its lost signal.
type Holder = (u64, u64, Arc<Signal>);

impl State {
    fn key(&mut self) -> u64 {
        self.last_key += 1;
        self.last_key
    }

    /// Ends `locker`'s hold of `id`, if it has it (its signal fires); whether it had.
    fn release(&mut self, id: &str, locker: u64, bugs: Bugs) -> bool {
        let Some((holder, waiting)) = self.ids.get_mut(id) else {
            return false;
        };
        let Some((_, _, signal)) = holder.take_if(|h| h.0 == locker) else {
            return false;
        };
        if !bugs.no_lost_signal {
            signal.fire();
        }
        if waiting.is_empty() {
            self.ids.remove(id);
        }
        true
    }

    fn grant(&mut self, locker: &MemLocker, bugs: Bugs) -> Hold {
        let counter = if bugs.per_service_tokens {
            locker.service
        } else {
            0
        };
        let last = self.tokens.entry(counter).or_default();
        *last += 1;
        let token = if bugs.constant_tokens { 1 } else { *last };
        let (key, session, signal) = (locker.key, locker.session, locker.signal.clone());
        self.ids.entry(locker.id.clone()).or_default().0 = Some((key, session, signal));
        Hold::new(locker.signal.clone(), locker.signal.epoch(), None, token)
    }
}

/// One lock table, shared by every service opened from it (and by every `example-mem:`
/// service of the process, which share [`Store::global`]).
#[derive(Debug, Clone)]
pub struct Store(Arc<(Mutex<State>, Notify, Bugs)>);

impl Store {
    /// An empty lock table with the given deliberate bugs (use `Bugs::default()` for none).
    pub fn new(bugs: Bugs) -> Self {
        Store(Arc::new((Mutex::default(), Notify::new(), bugs)))
    }

    /// The table every `example-mem:` service of this process uses.
    pub fn global() -> &'static Store {
        static GLOBAL: OnceLock<Store> = OnceLock::new();
        GLOBAL.get_or_init(|| Store::new(Bugs::default()))
    }

    /// A new service on this table (on a table of its own with `Bugs::separate_services`).
    pub fn service(&self) -> lock_core::Service {
        let store = match self.bugs().separate_services {
            true => Store::new(self.bugs()),
            false => self.clone(),
        };
        let key = store.state().key();
        backend::service(MemService { store, key })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0 .0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bugs(&self) -> Bugs {
        self.0 .2
    }

    /// Wakes every waiter, which checks whether it is first in line.
    fn changed(&self) {
        self.0 .1.notify_waiters();
    }

    /// Ends `session`: its holds are released, its `done()` fires.
    fn end_session(&self, session: u64) -> Result<()> {
        let mut st = self.state();
        let (_, done) = st
            .sessions
            .remove(&session)
            .ok_or(Error::AlreadyClosed("session"))?;
        let mine = |(id, h): (&String, &(Option<Holder>, _))| {
            h.0.as_ref()
                .filter(|h| h.1 == session)
                .map(|h| (id.clone(), h.0))
        };
        let held: Vec<(String, u64)> = st.ids.iter().filter_map(mine).collect();
        for (id, locker) in held {
            st.release(&id, locker, self.bugs());
        }
        drop(st);
        done.fire();
        self.changed();
        Ok(())
    }
}

#[derive(Debug)]
struct MemService {
    store: Store,
    key: u64,
}

impl backend::Service for MemService {
    fn new_session(&self, _: SessionConfig) -> OpFuture<'_, Result<Arc<dyn backend::Session>>> {
        let mut st = self.store.state();
        if st.closed_services.contains(&self.key) {
            return OpFuture::ready(Err(Error::AlreadyClosed("service")));
        }
        let (key, done) = (st.key(), Arc::new(Signal::new()));
        st.sessions.insert(key, (self.key, done.clone()));
        let (store, service) = (self.store.clone(), self.key);
        OpFuture::ready(Ok(Arc::new(MemSession {
            store,
            service,
            key,
            done,
        })))
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        let mut st = self.store.state();
        st.closed_services.insert(self.key);
        let mine = |(session, s): (&u64, &(u64, _))| (s.0 == self.key).then_some(*session);
        let sessions: Vec<u64> = st.sessions.iter().filter_map(mine).collect();
        drop(st);
        sessions
            .into_iter()
            .for_each(|s| drop(self.store.end_session(s)));
        OpFuture::ready(Ok(()))
    }
}

#[derive(Debug)]
struct MemSession {
    store: Store,
    service: u64,
    key: u64,
    done: Arc<Signal>,
}

impl backend::Session for MemSession {
    fn new_locker(&self, id: &str, party: Party) -> Arc<dyn backend::Locker> {
        let (store, service, session) = (self.store.clone(), self.service, self.key);
        let (key, id, signal) = (store.state().key(), id.to_owned(), Arc::new(Signal::new()));
        Arc::new(MemLocker {
            store,
            key,
            service,
            session,
            id,
            signal,
            party,
        })
    }

    fn done(&self) -> Done {
        backend::done(self.done.clone(), 0, None)
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.store.end_session(self.key))
    }
}

impl Drop for MemSession {
    fn drop(&mut self) {
        let _ = self.store.end_session(self.key);
    }
}

#[derive(Debug)]
struct MemLocker {
    store: Store,
    key: u64,
    service: u64,
    session: u64,
    id: String,
    signal: Arc<Signal>,
    /// Keeps the session open while the locker lives.
    party: Party,
}

impl MemLocker {
    /// What every attempt checks first: the session is open, and this locker holds nothing.
    fn check(&self, st: &State) -> Result<()> {
        if !st.sessions.contains_key(&self.session) {
            return Err(Error::AlreadyClosed("session"));
        }
        match st.ids.get(&self.id).and_then(|i| i.0.as_ref()) {
            Some(holder) if holder.0 == self.key => Err(Error::AlreadyLocked),
            _ => Ok(()),
        }
    }

    /// The hold, once this waiter is first in line and the id is free.
    fn first_in_line(&self) -> Option<Result<Hold>> {
        let mut st = self.store.state();
        if !st.sessions.contains_key(&self.session) {
            return Some(Err(Error::Canceled("the session ended".into())));
        }
        let (holder, waiting) = st.ids.get_mut(&self.id)?;
        let free = holder.is_none() || self.store.bugs().no_exclusion;
        if !free || waiting.front() != Some(&self.key) {
            return None;
        }
        waiting.pop_front();
        Some(Ok(st.grant(self, self.store.bugs())))
    }

    fn end_hold(&self) {
        if self
            .store
            .state()
            .release(&self.id, self.key, self.store.bugs())
        {
            self.store.changed();
        }
    }
}

/// Takes a waiter out of its id's queue however its `lock()` ends (granted, failed, dropped).
struct Withdraw<'a>(&'a MemLocker);

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let (mut st, id) = (self.0.store.state(), &self.0.id);
        if let Some((holder, waiting)) = st.ids.get_mut(id) {
            waiting.retain(|k| *k != self.0.key);
            if holder.is_none() && waiting.is_empty() {
                st.ids.remove(id);
            }
        }
        drop(st);
        self.0.store.changed();
    }
}

impl backend::Locker for MemLocker {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        OpFuture::boxed(async move {
            {
                let mut st = self.store.state();
                self.check(&st)?;
                let (_, waiting) = st.ids.entry(self.id.clone()).or_default();
                match self.store.bugs().lifo {
                    true => waiting.push_front(self.key),
                    false => waiting.push_back(self.key),
                }
            }
            let _withdraw = Withdraw(self);
            loop {
                let mut notified = std::pin::pin!(self.store.0 .1.notified());
                notified.as_mut().enable();
                if let Some(outcome) = self.first_in_line() {
                    return outcome;
                }
                notified.await;
            }
        })
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        let (bugs, mut st) = (self.store.bugs(), self.store.state());
        let free = st.ids.get(&self.id).is_none_or(|(holder, waiting)| {
            holder.is_none() && (waiting.is_empty() || bugs.try_lock_overtakes)
        });
        let granted = |st: &mut State| (free || bugs.no_exclusion).then(|| st.grant(self, bugs));
        OpFuture::ready(self.check(&st).map(|()| granted(&mut st)))
    }

    fn unlock(&self, _token: u64) -> OpFuture<'_, Result<()>> {
        OpFuture::boxed(async move {
            if self.store.bugs().unlock_not_cancel_safe {
                let mut waited = false;
                std::future::poll_fn(|cx| match std::mem::replace(&mut waited, true) {
                    true => Poll::Ready(()),
                    false => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                })
                .await;
            }
            let mut st = self.store.state();
            if !st.sessions.contains_key(&self.session) {
                return Err(Error::AlreadyClosed("session"));
            }
            if !st.release(&self.id, self.key, self.store.bugs()) {
                return Err(Error::NotHeld);
            }
            drop(st);
            if !self.store.bugs().no_wake_on_unlock {
                self.store.changed();
            }
            Ok(())
        })
    }

    fn release(&self, _token: u64) {
        self.end_hold();
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn party(&self) -> &Party {
        &self.party
    }
}

impl Drop for MemLocker {
    fn drop(&mut self) {
        self.end_hold();
    }
}

fn open(cs: ConnectionString) -> OpenFuture {
    Box::pin(async move {
        cs.options().finish()?;
        Ok(Store::global().service())
    })
}

lock_core::register_service!("example-mem", open);
