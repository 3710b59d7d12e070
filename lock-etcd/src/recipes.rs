//! What an etcd session makes: lockers of locks and semaphores (`crate::locker`) and parties of
//! elections (`crate::election`), each known to the session, which ends their holds when it
//! ends. Above both recipes.

use std::sync::{Arc, Weak};

use lock_core::backend::{self, OpFuture};
use lock_core::{Done, Result};

use crate::election::EtcdElection;
use crate::keeper::EndReason;
use crate::locker::EtcdLocker;
use crate::session::{EtcdSession, Member};

impl EtcdSession {
    /// A locker of `id`, known to the session (which ends its hold when it ends).
    fn locker(&self, id: &str, limit: Option<u32>, party: backend::Party) -> EtcdLocker {
        let key = self.core.service.next_key();
        let locker = EtcdLocker::new(key, id, limit, self.core.clone(), party);
        self.core
            .lockers()
            .insert(key, locker.weak() as Weak<dyn Member>);
        if let Some(reason) = self.core.ended() {
            locker.core().session_ended(reason);
        }
        locker
    }
}

impl backend::Session for EtcdSession {
    fn new_locker(&self, id: &str, party: backend::Party) -> Arc<dyn backend::Locker> {
        Arc::new(self.locker(id, None, party))
    }

    fn new_semaphore(
        &self,
        id: &str,
        limit: u32,
        party: backend::Party,
    ) -> Result<Arc<dyn backend::Locker>> {
        Ok(Arc::new(self.locker(id, Some(limit), party)))
    }

    fn new_election(
        &self,
        name: &str,
        party: backend::Party,
    ) -> Result<Arc<dyn backend::Election>> {
        Ok(Arc::new(EtcdElection::new(self.locker(name, None, party))))
    }

    fn done(&self) -> Option<Done> {
        let (signal, deadline) = (&self.core.end_signal, &self.core.deadline);
        Some(backend::done(signal.clone(), 0, Some(deadline.clone())))
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::boxed(async move { self.core.close(EndReason::Closed).await })
    }
}
