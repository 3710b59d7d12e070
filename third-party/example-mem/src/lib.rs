//! `example-mem:` — a tiny in-memory backend written the way a third-party crate would write
//! one, against the public `lock` API only. It exists to prove that schemes can be added from
//! outside, and that the conformance suite catches broken backends: [`Faults`] switches on
//! deliberate bugs.
//!
//! Unlike `local:`, it is deliberately simple: one mutex, and every change wakes every waiter,
//! which then checks whether it is first in line.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use lock::{
    ConnectionString, Done, Error, Held, Locker, OpFuture, OpenFuture, Result, Service, Session,
    SessionConfig, Signal,
};
use tokio::sync::Notify;

/// Deliberate bugs, for showing that the conformance suite catches them. All off by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
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
}

#[derive(Default)]
struct State {
    closed: bool,
    next_key: u64,
    last_token: u64,
    open_sessions: HashMap<u64, Arc<Signal>>,
    /// Per id: holder and waiting lockers. Removed when both are empty.
    ids: HashMap<String, Queue>,
    /// Per holding locker: its id, session and signal.
    holds: HashMap<u64, (String, u64, Arc<Signal>)>,
}

#[derive(Default)]
struct Queue {
    holder: Option<u64>,
    waiting: VecDeque<u64>,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    faults: Faults,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn release(&mut self, locker: u64, faults: Faults) -> bool {
        let Some((id, _, signal)) = self.holds.remove(&locker) else {
            return false;
        };
        if !faults.no_lost_signal {
            signal.fire();
        }
        // (With `no_exclusion`, another holder of the id may have removed the queue already.)
        if let Some(queue) = self.ids.get_mut(&id) {
            queue.holder = None;
            if queue.waiting.is_empty() {
                self.ids.remove(&id);
            }
        }
        true
    }

    fn grant(
        &mut self,
        locker: u64,
        session: u64,
        id: &str,
        signal: &Arc<Signal>,
        faults: Faults,
    ) -> Held {
        self.last_token += 1;
        let token = if faults.constant_tokens {
            1
        } else {
            self.last_token
        };
        self.ids.entry(id.to_owned()).or_default().holder = Some(locker);
        self.holds
            .insert(locker, (id.to_owned(), session, signal.clone()));
        Held::new(signal.clone(), signal.epoch(), None, token)
    }

    fn close_session(&mut self, session: u64, faults: Faults) -> Option<Arc<Signal>> {
        let done = self.open_sessions.remove(&session)?;
        let held: Vec<u64> = self
            .holds
            .iter()
            .filter(|(_, h)| h.1 == session)
            .map(|(k, _)| *k)
            .collect();
        for locker in held {
            self.release(locker, faults);
        }
        Some(done)
    }
}

/// The `example-mem:` service.
#[derive(Clone)]
pub struct MemService(Arc<Shared>);

impl MemService {
    /// A service with the given deliberate bugs (use `Faults::default()` for none).
    pub fn new(faults: Faults) -> Self {
        MemService(Arc::new(Shared {
            state: Mutex::default(),
            changed: Notify::new(),
            faults,
        }))
    }
}

impl fmt::Debug for MemService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemService")
            .field("faults", &self.0.faults)
            .finish()
    }
}

impl Service for MemService {
    fn new_session<'a>(
        &'a self,
        config: &'a SessionConfig,
    ) -> OpFuture<'a, Result<Box<dyn Session>>> {
        OpFuture::boxed(async move {
            config.validate()?;
            let mut st = self.0.state();
            if st.closed {
                return Err(Error::AlreadyClosed("service"));
            }
            st.next_key += 1;
            let (key, done) = (st.next_key, Arc::new(Signal::new()));
            st.open_sessions.insert(key, done.clone());
            Ok(Box::new(MemSession {
                shared: self.0.clone(),
                key,
                done,
                timeout: config.timeout,
            }) as Box<dyn Session>)
        })
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::boxed(async move {
            let dones = {
                let mut st = self.0.state();
                if std::mem::replace(&mut st.closed, true) {
                    return Err(Error::AlreadyClosed("service"));
                }
                let sessions: Vec<u64> = st.open_sessions.keys().copied().collect();
                sessions
                    .into_iter()
                    .filter_map(|s| st.close_session(s, self.0.faults))
                    .collect::<Vec<_>>()
            };
            dones.iter().for_each(|d| d.fire());
            self.0.changed.notify_waiters();
            Ok(())
        })
    }
}

struct MemSession {
    shared: Arc<Shared>,
    key: u64,
    done: Arc<Signal>,
    timeout: Option<std::time::Duration>,
}

impl MemSession {
    fn end(&self) -> Result<()> {
        let done = self
            .shared
            .state()
            .close_session(self.key, self.shared.faults);
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

impl Session for MemSession {
    fn new_locker(&self, id: &str) -> Box<dyn Locker> {
        let key = {
            let mut st = self.shared.state();
            st.next_key += 1;
            st.next_key
        };
        let (shared, session, timeout) = (self.shared.clone(), self.key, self.timeout);
        Box::new(MemLocker {
            shared,
            key,
            session,
            timeout,
            id: id.to_owned(),
            signal: Arc::new(Signal::new()),
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
    session: u64,
    timeout: Option<std::time::Duration>,
    id: String,
    signal: Arc<Signal>,
}

impl MemLocker {
    fn check(&self, st: &State) -> Result<()> {
        lock::validate_id(&self.id)?;
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

    async fn wait(&self) -> Result<Held> {
        let faults = self.shared.faults;
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
                if (queue.holder.is_none() || faults.no_exclusion)
                    && queue.waiting.front() == Some(&self.key)
                {
                    queue.waiting.pop_front();
                    return Ok(st.grant(self.key, self.session, &self.id, &self.signal, faults));
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

impl Locker for MemLocker {
    fn lock(&self) -> OpFuture<'_, Result<Held>> {
        OpFuture::boxed(async move {
            {
                let mut st = self.shared.state();
                self.check(&st)?;
                let queue = st.ids.entry(self.id.clone()).or_default();
                match self.shared.faults.lifo {
                    true => queue.waiting.push_front(self.key),
                    false => queue.waiting.push_back(self.key),
                }
            }
            let _withdraw = Withdraw(self);
            match self.timeout {
                None => self.wait().await,
                Some(limit) => tokio::time::timeout(limit, self.wait())
                    .await
                    .map_err(|_| Error::Timeout(limit))?,
            }
        })
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Held>>> {
        OpFuture::boxed(async move {
            let mut st = self.shared.state();
            self.check(&st)?;
            let free = st
                .ids
                .get(&self.id)
                .is_none_or(|q| q.holder.is_none() && q.waiting.is_empty());
            Ok((free || self.shared.faults.no_exclusion).then(|| {
                st.grant(
                    self.key,
                    self.session,
                    &self.id,
                    &self.signal,
                    self.shared.faults,
                )
            }))
        })
    }

    fn unlock(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::boxed(async move {
            {
                let mut st = self.shared.state();
                if !st.open_sessions.contains_key(&self.session) {
                    return Err(Error::AlreadyClosed("session"));
                }
                if !st.release(self.key, self.shared.faults) {
                    return Err(Error::NotHeld);
                }
            }
            if !self.shared.faults.no_wake_on_unlock {
                self.shared.changed.notify_waiters();
            }
            Ok(())
        })
    }

    fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for MemLocker {
    fn drop(&mut self) {
        if self.shared.state().release(self.key, self.shared.faults) {
            self.shared.changed.notify_waiters();
        }
    }
}

fn open(cs: ConnectionString) -> OpenFuture {
    Box::pin(async move {
        cs.options().finish()?;
        Ok(Box::new(MemService::new(Faults::default())) as Box<dyn Service>)
    })
}

lock::register_service!("example-mem", open);
