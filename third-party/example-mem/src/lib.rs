//! `example-mem:` — a tiny in-memory backend written the way a third-party crate would write
//! one, against `lock-core` only. It exists to prove that schemes can be added from outside,
//! and that the conformance suite catches broken backends: [`Bugs`] switches on deliberate
//! bugs.
//!
//! Every service opened from `example-mem:` in one process shares one lock table (a [`Store`]);
//! other processes do not see it. Sessions are not leases: the TTL is validated and otherwise
//! ignored, since nothing can die without its process. Its conformance harness declares both.
//!
//! Unlike `local:`, it is deliberately simple: one mutex, and every change wakes every waiter,
//! which then checks whether it is first in line.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use lock_core::backend::{self, ConnectionString, Hold, OpFuture, OpenFuture, Signal};
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
    /// `try_lock` takes a free id even while a waiter is queued for it (overtaking it during
    /// a handover).
    pub try_lock_overtakes: bool,
    /// `unlock` marks the hold released, then yields before freeing the id: dropped at that
    /// point, it leaves the id held by nobody, forever.
    pub unlock_not_cancel_safe: bool,
    /// `lock` ignores the session's timeout.
    pub ignores_timeout: bool,
}

#[derive(Default)]
struct State {
    next_key: u64,
    last_token: u64,
    /// Per service (with `per_service_tokens`): its own last token.
    service_tokens: HashMap<u64, u64>,
    closed_services: HashSet<u64>,
    /// Per open session: its service and its `done()` signal.
    open_sessions: HashMap<u64, (u64, Arc<Signal>)>,
    /// Per id: holder and waiting lockers. Removed when both are empty.
    ids: HashMap<String, Queue>,
    /// Per holding locker: its id, session, signal and fencing token.
    holds: HashMap<u64, (String, u64, Arc<Signal>, u64)>,
}

#[derive(Default)]
struct Queue {
    holder: Option<u64>,
    waiting: VecDeque<u64>,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    bugs: Bugs,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn release(&mut self, locker: u64, bugs: Bugs) -> bool {
        let Some(id) = self.take_hold(locker, bugs) else {
            return false;
        };
        self.free(&id, locker);
        true
    }

    /// The first half of a release: the hold ends and is reported lost. Returns its id.
    fn take_hold(&mut self, locker: u64, bugs: Bugs) -> Option<String> {
        let (id, _, signal, _) = self.holds.remove(&locker)?;
        if !bugs.no_lost_signal {
            signal.fire();
        }
        Some(id)
    }

    /// The second half: the id is free for the next waiter (if `locker` still has it).
    fn free(&mut self, id: &str, locker: u64) {
        // (With `no_exclusion`, another holder of the id may have removed the queue already.)
        if let Some(queue) = self.ids.get_mut(id) {
            if queue.holder == Some(locker) {
                queue.holder = None;
            }
            if queue.holder.is_none() && queue.waiting.is_empty() {
                self.ids.remove(id);
            }
        }
    }

    /// Whether `locker` holds the hold with fencing token `token` (any hold, for `None`).
    fn holds(&self, locker: u64, token: Option<u64>) -> bool {
        self.holds
            .get(&locker)
            .is_some_and(|h| token.is_none_or(|t| t == h.3))
    }

    fn grant(&mut self, locker: &MemLocker) -> Hold {
        let bugs = locker.shared.bugs;
        self.last_token += 1;
        let token = if bugs.constant_tokens {
            1
        } else if bugs.per_service_tokens {
            let own = self.service_tokens.entry(locker.service).or_default();
            *own += 1;
            *own
        } else {
            self.last_token
        };
        let (id, signal) = (&locker.id, &locker.signal);
        let (locker, session) = (locker.key, locker.session);
        self.ids.entry(id.to_owned()).or_default().holder = Some(locker);
        self.holds
            .insert(locker, (id.to_owned(), session, signal.clone(), token));
        Hold::new(signal.clone(), signal.epoch(), None, token)
    }

    fn close_session(&mut self, session: u64, bugs: Bugs) -> Option<Arc<Signal>> {
        let (_, done) = self.open_sessions.remove(&session)?;
        let held: Vec<u64> = self
            .holds
            .iter()
            .filter(|(_, h)| h.1 == session)
            .map(|(k, _)| *k)
            .collect();
        for locker in held {
            self.release(locker, bugs);
        }
        Some(done)
    }
}

/// One lock table, shared by every service opened from it (and by every `example-mem:`
/// service of the process, which share [`Store::global`]).
#[derive(Clone)]
pub struct Store(Arc<Shared>);

impl Store {
    /// An empty lock table with the given deliberate bugs (use `Bugs::default()` for none).
    pub fn new(bugs: Bugs) -> Self {
        Store(Arc::new(Shared {
            state: Mutex::default(),
            changed: Notify::new(),
            bugs,
        }))
    }

    /// The table every `example-mem:` service of this process uses.
    pub fn global() -> &'static Store {
        static GLOBAL: OnceLock<Store> = OnceLock::new();
        GLOBAL.get_or_init(|| Store::new(Bugs::default()))
    }

    /// A new service on this table (on a table of its own with `Bugs::separate_services`).
    pub fn service(&self) -> lock_core::Service {
        let shared = match self.0.bugs.separate_services {
            true => Store::new(self.0.bugs).0,
            false => self.0.clone(),
        };
        let key = {
            let mut st = shared.state();
            st.next_key += 1;
            st.next_key
        };
        lock_core::Service::from_backend(MemService { shared, key })
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("bugs", &self.0.bugs).finish()
    }
}

/// The `example-mem:` service: a handle on a [`Store`] with sessions of its own.
pub struct MemService {
    shared: Arc<Shared>,
    key: u64,
}

impl fmt::Debug for MemService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemService")
            .field("key", &self.key)
            .field("bugs", &self.shared.bugs)
            .finish()
    }
}

impl backend::Service for MemService {
    fn new_session(
        &self,
        config: SessionConfig,
    ) -> OpFuture<'_, Result<Arc<dyn backend::Session>>> {
        OpFuture::boxed(async move {
            config.validate()?;
            let mut st = self.shared.state();
            if st.closed_services.contains(&self.key) {
                return Err(Error::AlreadyClosed("service"));
            }
            st.next_key += 1;
            let (key, done) = (st.next_key, Arc::new(Signal::new()));
            st.open_sessions.insert(key, (self.key, done.clone()));
            Ok(Arc::new(MemSession {
                shared: self.shared.clone(),
                service: self.key,
                key,
                done,
                timeout: config.timeout,
            }) as Arc<dyn backend::Session>)
        })
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::boxed(async move {
            let dones = {
                let mut st = self.shared.state();
                if !st.closed_services.insert(self.key) {
                    return Err(Error::AlreadyClosed("service"));
                }
                let sessions: Vec<u64> = st
                    .open_sessions
                    .iter()
                    .filter(|(_, (service, _))| *service == self.key)
                    .map(|(session, _)| *session)
                    .collect();
                sessions
                    .into_iter()
                    .filter_map(|s| st.close_session(s, self.shared.bugs))
                    .collect::<Vec<_>>()
            };
            dones.iter().for_each(|d| d.fire());
            self.shared.changed.notify_waiters();
            Ok(())
        })
    }
}

struct MemSession {
    shared: Arc<Shared>,
    service: u64,
    key: u64,
    done: Arc<Signal>,
    timeout: Option<std::time::Duration>,
}

impl MemSession {
    fn end(&self) -> Result<()> {
        let done = self
            .shared
            .state()
            .close_session(self.key, self.shared.bugs);
        let done = done.ok_or(Error::AlreadyClosed("session"))?;
        done.fire();
        self.shared.changed.notify_waiters();
        Ok(())
    }
}

impl fmt::Debug for MemSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemSession")
            .field("key", &self.key)
            .finish()
    }
}

impl backend::Session for MemSession {
    fn new_locker(
        &self,
        id: &str,
        session_handle: &lock_core::Session,
    ) -> Arc<dyn backend::Locker> {
        let key = {
            let mut st = self.shared.state();
            st.next_key += 1;
            st.next_key
        };
        let (shared, session, timeout) = (self.shared.clone(), self.key, self.timeout);
        Arc::new(MemLocker {
            shared,
            key,
            service: self.service,
            session,
            timeout,
            id: id.to_owned(),
            signal: Arc::new(Signal::new()),
            _session: session_handle.clone(),
        })
    }

    fn done(&self) -> Done {
        Done::new(self.done.clone(), 0, None)
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::boxed(async move { self.end() })
    }
}

impl Drop for MemSession {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

struct MemLocker {
    shared: Arc<Shared>,
    key: u64,
    service: u64,
    session: u64,
    timeout: Option<std::time::Duration>,
    id: String,
    signal: Arc<Signal>,
    /// The application's handle of the session: kept while the locker lives, dropped last.
    _session: lock_core::Session,
}

impl MemLocker {
    fn check(&self, st: &State) -> Result<()> {
        backend::validate_id(&self.id)?;
        if !st.open_sessions.contains_key(&self.session) {
            return Err(Error::AlreadyClosed("session"));
        }
        let waiting = st
            .ids
            .get(&self.id)
            .is_some_and(|q| q.waiting.contains(&self.key));
        if st.holds.contains_key(&self.key) || waiting {
            return Err(Error::AlreadyLocked);
        }
        Ok(())
    }

    async fn wait(&self) -> Result<Hold> {
        let bugs = self.shared.bugs;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.shared.state();
                if !st.open_sessions.contains_key(&self.session) {
                    return Err(Error::Canceled("the session ended".into()));
                }
                let queue = st.ids.get_mut(&self.id).expect("a waiter's id has a queue");
                if (queue.holder.is_none() || bugs.no_exclusion)
                    && queue.waiting.front() == Some(&self.key)
                {
                    queue.waiting.pop_front();
                    return Ok(st.grant(self));
                }
            }
            notified.await;
        }
    }
}

/// Takes a locker out of its id's queue when its `lock()` ends or is dropped.
struct Withdraw<'a>(&'a MemLocker);

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let mut st = self.0.shared.state();
        if let Some(queue) = st.ids.get_mut(&self.0.id) {
            queue.waiting.retain(|k| *k != self.0.key);
            if queue.holder.is_none() && queue.waiting.is_empty() {
                st.ids.remove(&self.0.id);
            }
        }
        drop(st);
        self.0.shared.changed.notify_waiters();
    }
}

impl fmt::Debug for MemLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemLocker").field("id", &self.id).finish()
    }
}

impl backend::Locker for MemLocker {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        OpFuture::boxed(async move {
            {
                let mut st = self.shared.state();
                self.check(&st)?;
                let queue = st.ids.entry(self.id.clone()).or_default();
                match self.shared.bugs.lifo {
                    true => queue.waiting.push_front(self.key),
                    false => queue.waiting.push_back(self.key),
                }
            }
            let _withdraw = Withdraw(self);
            match self.timeout.filter(|_| !self.shared.bugs.ignores_timeout) {
                None => self.wait().await,
                Some(limit) => tokio::time::timeout(limit, self.wait())
                    .await
                    .map_err(|_| Error::Timeout(limit))?,
            }
        })
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        OpFuture::boxed(async move {
            let mut st = self.shared.state();
            self.check(&st)?;
            let bugs = self.shared.bugs;
            let free = st.ids.get(&self.id).is_none_or(|q| {
                q.holder.is_none() && (q.waiting.is_empty() || bugs.try_lock_overtakes)
            });
            Ok((free || bugs.no_exclusion).then(|| st.grant(self)))
        })
    }

    fn unlock(&self, token: Option<u64>) -> OpFuture<'_, Result<()>> {
        OpFuture::boxed(async move {
            let bugs = self.shared.bugs;
            let taken = {
                let mut st = self.shared.state();
                if !st.open_sessions.contains_key(&self.session) {
                    return Err(Error::AlreadyClosed("session"));
                }
                if !st.holds(self.key, token) {
                    return Err(Error::NotHeld);
                }
                let taken = st.take_hold(self.key, bugs).ok_or(Error::NotHeld)?;
                if !bugs.unlock_not_cancel_safe {
                    st.free(&taken, self.key);
                }
                taken
            };
            if bugs.unlock_not_cancel_safe {
                yield_once().await; // a "round trip"; dropped here, it leaks
                self.shared.state().free(&taken, self.key);
            }
            if !bugs.no_wake_on_unlock {
                self.shared.changed.notify_waiters();
            }
            Ok(())
        })
    }

    fn release(&self, token: u64) {
        let mut st = self.shared.state();
        if st.holds(self.key, Some(token)) && st.release(self.key, self.shared.bugs) {
            drop(st);
            self.shared.changed.notify_waiters();
        }
    }

    fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for MemLocker {
    fn drop(&mut self) {
        if self.shared.state().release(self.key, self.shared.bugs) {
            self.shared.changed.notify_waiters();
        }
    }
}

/// Returns `Pending` once (waking itself at once), as a request round trip would.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

fn open(cs: ConnectionString) -> OpenFuture {
    Box::pin(async move {
        cs.options().finish()?;
        Ok(Store::global().service())
    })
}

lock_core::register_service!("example-mem", open);
