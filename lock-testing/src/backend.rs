//! The `test:` backend: `local:`'s lock table (one per world, shared by every service of it),
//! with the world's faults on the way in and its history recorded on the way out.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lock_core::backend::{self, Hold, OpFuture, Party};
use lock_core::{Done, Error, Leader, LossCause, Observer, Result, SessionConfig};
use lock_local::{LocalLocker, LocalSession, PermitLocker};

use crate::world::{Revoke, World};

/// A service of the `test:` backend.
pub(crate) struct TestService {
    world: Arc<World>,
    /// Its sessions, which its close ends.
    sessions: Mutex<Vec<Weak<TestSession>>>,
}

impl TestService {
    pub(crate) fn new(world: Arc<World>) -> Self {
        TestService {
            world,
            sessions: Mutex::default(),
        }
    }
}

impl fmt::Debug for TestService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestService").finish_non_exhaustive()
    }
}

impl backend::Service for TestService {
    fn new_session(
        &self,
        config: SessionConfig,
    ) -> OpFuture<'_, Result<Arc<dyn backend::Session>>> {
        let opened = self.world.check_available().and_then(|()| {
            let local = self.world.local.session()?;
            let number = self.world.opened(&local, config.ttl);
            let session = Arc::new(TestSession {
                world: self.world.clone(),
                local,
                number,
            });
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.retain(|s| s.strong_count() > 0);
            sessions.push(Arc::downgrade(&session));
            Ok(session as Arc<dyn backend::Session>)
        });
        OpFuture::ready(opened)
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        let sessions =
            std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|e| e.into_inner()));
        for session in sessions.iter().filter_map(Weak::upgrade) {
            self.world
                .session_ending(session.number, LossCause::ServiceClosed);
            let _ = session
                .local
                .end_because(LossCause::ServiceClosed, "the service was closed");
        }
        OpFuture::ready(Ok(()))
    }
}

/// A session of the `test:` backend: a `local:` session, numbered in its world.
pub(crate) struct TestSession {
    world: Arc<World>,
    local: Arc<LocalSession>,
    number: usize,
}

impl fmt::Debug for TestSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestSession")
            .field("number", &self.number)
            .finish_non_exhaustive()
    }
}

impl TestSession {
    fn wrap(&self, id: &str, limit: u32, inner: Inner) -> Arc<TestLocker> {
        Arc::new_cyclic(|me| TestLocker {
            me: me.clone(),
            world: self.world.clone(),
            session: self.number,
            id: id.to_owned(),
            limit,
            inner,
        })
    }
}

impl backend::Session for TestSession {
    fn new_locker(&self, id: &str, party: Party) -> Arc<dyn backend::Locker> {
        self.wrap(id, 1, Inner::Lock(self.local.locker(id, party)))
    }

    fn new_semaphore(
        &self,
        id: &str,
        limit: u32,
        party: Party,
    ) -> Result<Arc<dyn backend::Locker>> {
        Ok(self.wrap(
            id,
            limit,
            Inner::Permit(self.local.semaphore(id, limit, party)),
        ))
    }

    fn new_election(&self, name: &str, party: Party) -> Result<Arc<dyn backend::Election>> {
        let permit = self.local.election(name, party);
        Ok(self.wrap(name, 1, Inner::Permit(permit)))
    }

    fn done(&self) -> Option<Done> {
        backend::Session::done(&*self.local)
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        self.world
            .session_ending(self.number, LossCause::SessionEnded);
        backend::Session::close(&*self.local)
    }
}

impl Drop for TestSession {
    fn drop(&mut self) {
        // The local session ends with its last handle, just after this.
        self.world
            .session_ending(self.number, LossCause::SessionEnded);
    }
}

/// The `local:` party a test locker wraps.
enum Inner {
    Lock(Arc<LocalLocker>),
    Permit(Arc<PermitLocker>),
}

impl Inner {
    fn locker(&self) -> &dyn backend::Locker {
        match self {
            Inner::Lock(l) => &**l,
            Inner::Permit(p) => &**p,
        }
    }
}

/// A locker (or semaphore or election party) of the `test:` backend.
pub(crate) struct TestLocker {
    me: Weak<TestLocker>,
    world: Arc<World>,
    session: usize,
    id: String,
    limit: u32,
    inner: Inner,
}

impl fmt::Debug for TestLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestLocker")
            .field("id", &self.id)
            .field("session", &self.session)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl TestLocker {
    /// Records a grant (the world can take it away again).
    fn granted(&self, hold: &Hold) {
        let me: Weak<dyn Revoke> = self.me.clone();
        self.world
            .granted(&self.id, hold.fencing_token(), self.session, self.limit, me);
    }

    /// The world's faults, before an attempt: `Err` to fail it; a hang waits forever (the
    /// handles' timeout ends it).
    async fn faults(&self) -> Result<()> {
        if let Some(fault) = self.world.next_fault(&self.id) {
            return Err(fault.strike().await);
        }
        // An unavailable service: the attempt waits (a session's timeout ends it, as one on
        // an unreachable etcd cluster does).
        self.world.until_available().await;
        let delay = self.world.grant_delay();
        if delay > Duration::ZERO {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}

impl Revoke for TestLocker {
    fn revoke(&self, cause: LossCause, detail: &str) -> bool {
        match &self.inner {
            Inner::Lock(l) => l.revoke(cause, detail),
            Inner::Permit(p) => p.revoke(cause, detail),
        }
    }
}

impl backend::Locker for TestLocker {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        OpFuture::boxed(async move {
            self.faults().await?;
            let hold = self.inner.locker().lock().await?;
            self.granted(&hold);
            Ok(hold)
        })
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        OpFuture::boxed(async move {
            if let Some(fault) = self.world.next_fault(&self.id) {
                return Err(fault.strike().await);
            }
            self.world.check_available()?;
            let hold = self.inner.locker().try_lock().await?;
            if let Some(hold) = &hold {
                self.granted(hold);
            }
            Ok(hold)
        })
    }

    fn unlock(&self, token: u64) -> OpFuture<'_, Result<()>> {
        if let Err(e) = self.world.check_available() {
            // As on an unreachable cluster: the hold ends for its holder at once, and the
            // release is not confirmed (an error that says so).
            self.release(token);
            return OpFuture::ready(Err(e));
        }
        self.world.ended(token, LossCause::Unlocked);
        self.inner.locker().unlock(token)
    }

    fn unlock_now(&self, token: u64) -> Option<Result<()>> {
        if self.world.check_available().is_err() {
            return None; // `unlock` says why
        }
        self.world.ended(token, LossCause::Unlocked);
        self.inner.locker().unlock_now(token)
    }

    fn release(&self, token: u64) {
        self.world.ended(token, LossCause::Unlocked);
        self.inner.locker().release(token);
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn party(&self) -> &Party {
        self.inner.locker().party()
    }
}

impl Drop for TestLocker {
    fn drop(&mut self) {
        // Its local party releases what it holds as it drops, just after this.
        let me: Weak<dyn Revoke> = self.me.clone();
        self.world.party_dropped(&me);
    }
}

impl backend::Election for TestLocker {
    fn propose(&self, value: Vec<u8>) {
        if let Inner::Permit(p) = &self.inner {
            backend::Election::propose(&**p, value);
        }
    }

    fn proclaim(&self, token: u64, value: Vec<u8>) -> OpFuture<'_, Result<()>> {
        match (&self.inner, self.world.check_available()) {
            (_, Err(e)) => OpFuture::ready(Err(e)),
            (Inner::Permit(p), Ok(())) => backend::Election::proclaim(&**p, token, value),
            (Inner::Lock(_), Ok(())) => OpFuture::ready(Err(Error::NotHeld)),
        }
    }

    fn leader(&self) -> OpFuture<'_, Result<Option<Leader>>> {
        match (&self.inner, self.world.check_available()) {
            (_, Err(e)) => OpFuture::ready(Err(e)),
            (Inner::Permit(p), Ok(())) => backend::Election::leader(&**p),
            (Inner::Lock(_), Ok(())) => OpFuture::ready(Ok(None)),
        }
    }

    fn observe(&self) -> OpFuture<'_, Result<Observer>> {
        match (&self.inner, self.world.check_available()) {
            (_, Err(e)) => OpFuture::ready(Err(e)),
            (Inner::Permit(p), Ok(())) => backend::Election::observe(&**p),
            (Inner::Lock(_), Ok(())) => OpFuture::ready(Err(Error::NotHeld)),
        }
    }

    fn into_locker(self: Arc<Self>) -> Arc<dyn backend::Locker> {
        self
    }
}
