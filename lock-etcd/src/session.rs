//! A session: one etcd lease, kept alive by the service's keeper.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use lock_core::backend::{self, Deadline, OpFuture, Signal};
use lock_core::{Done, Error, LossCause, Result};

use crate::locker::{EtcdLocker, LockerCore};
use crate::service::ServiceCore;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    Closed,
    Dropped,
    /// No keep-alive was acknowledged in time: the client gave the lease up.
    Expired,
    /// The server said the lease does not exist (revoked or expired).
    LeaseGone,
    ServiceClosed,
}

impl EndReason {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            EndReason::Closed => "the session was closed",
            EndReason::Dropped => "the session was dropped",
            EndReason::Expired => "the session's lease could not be kept alive within its TTL",
            EndReason::LeaseGone => "the session's lease was revoked or expired on the etcd server",
            EndReason::ServiceClosed => "the service was closed",
        }
    }

    /// What a hold of the session lost this way reports.
    pub(crate) fn cause(self) -> LossCause {
        match self {
            EndReason::Closed | EndReason::Dropped => LossCause::SessionEnded,
            EndReason::Expired => LossCause::DeadlinePassed,
            EndReason::LeaseGone => LossCause::SessionGone,
            EndReason::ServiceClosed => LossCause::ServiceClosed,
        }
    }
}

pub(crate) struct SessionCore {
    pub(crate) key: u64,
    pub(crate) service: Arc<ServiceCore>,
    pub(crate) lease: i64,
    pub(crate) ttl: Duration,
    pub(crate) timeout: Option<Duration>,
    /// When the lease must be assumed gone; see the keeper.
    pub(crate) deadline: Arc<Deadline>,
    /// Fired once, when the session ends.
    end_signal: Arc<Signal>,
    ended: Mutex<Option<EndReason>>,
    lockers: Mutex<HashMap<u64, Weak<LockerCore>>>,
}

impl SessionCore {
    pub(crate) fn new(
        key: u64,
        service: Arc<ServiceCore>,
        lease: i64,
        ttl: Duration,
        timeout: Option<Duration>,
        deadline: Arc<Deadline>,
    ) -> Self {
        SessionCore {
            key,
            service,
            lease,
            ttl,
            timeout,
            deadline,
            end_signal: Arc::new(Signal::new()),
            ended: Mutex::new(None),
            lockers: Mutex::new(HashMap::new()),
        }
    }

    fn lockers(&self) -> MutexGuard<'_, HashMap<u64, Weak<LockerCore>>> {
        self.lockers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the session ended, if it did (its deadline passing counts).
    pub(crate) fn ended(&self) -> Option<EndReason> {
        let ended = *self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended.or_else(|| self.deadline.has_passed().then_some(EndReason::Expired))
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        match self.ended() {
            None => Ok(()),
            Some(reason) => Err(Error::AlreadyClosed(reason.describe())),
        }
    }

    pub(crate) fn forget_locker(&self, key: u64) {
        self.lockers().remove(&key);
    }

    /// Ends the session: every hold fires `lost()`, waiters stop, `done()` resolves, and the
    /// lease is given to the keeper to revoke (unless the caller revokes it, or it is gone).
    /// Returns false if it had ended already.
    pub(crate) fn end(&self, reason: EndReason) -> bool {
        {
            let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
            if ended.is_some() {
                return false;
            }
            *ended = Some(reason);
        }
        let lease = format_args!("{:016x}", self.lease);
        match reason {
            EndReason::Expired | EndReason::LeaseGone => {
                tracing::warn!(%lease, reason = reason.describe(), "session lost: every lock of it is lost")
            }
            _ => tracing::debug!(%lease, reason = reason.describe(), "session ended"),
        }
        let lockers: Vec<_> = self
            .lockers()
            .drain()
            .filter_map(|(_, l)| l.upgrade())
            .collect();
        for locker in lockers {
            locker.session_ended(reason);
        }
        // After the holds recorded why they ended (a deadline that passed earlier keeps its
        // moment: `expire` never moves it later).
        self.deadline.expire();
        self.end_signal.fire();
        self.service.forget_session(self.key);
        match reason {
            EndReason::Closed | EndReason::ServiceClosed | EndReason::LeaseGone => {
                self.service.keeper.remove(self.lease)
            }
            EndReason::Dropped | EndReason::Expired => self.service.keeper.revoke_later(self.lease),
        }
        true
    }

    /// Ends the session and revokes its lease, waiting for the server.
    pub(crate) async fn close(&self, reason: EndReason) -> Result<()> {
        if !self.end(reason) {
            return Err(Error::AlreadyClosed("the session was already closed"));
        }
        let leases = self.service.client.lease_client();
        let lease = self.lease;
        // From here the lease is ours to revoke, whatever happens to this future: dropped
        // before etcd confirmed it, the revoke goes on in the background.
        let mut revoke = RevokeGuard {
            session: self,
            done: false,
        };
        let revoked = self
            .service
            .write("revoking the session's lease", || {
                crate::keeper::revoke_once(leases.clone(), lease)
            })
            .await;
        // On an error, the guard tries again in the background (else the lease would run out
        // on its own within the TTL).
        revoke.done = revoked.is_ok();
        revoked
    }
}

/// Hands the lease to the keeper to revoke if `close()` did not see etcd revoke it (an error,
/// or the future dropped while waiting).
struct RevokeGuard<'a> {
    session: &'a SessionCore,
    done: bool,
}

impl Drop for RevokeGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.session.service.keeper.revoke_later(self.session.lease);
        }
    }
}

impl fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSession")
            .field("lease", &format_args!("{:016x}", self.lease))
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("ended", &self.ended())
            .finish()
    }
}

/// A session of the `etcd:` backend: one etcd lease with the session's TTL. See
/// [`lock_core::backend::Session`].
pub struct EtcdSession {
    core: Arc<SessionCore>,
}

impl EtcdSession {
    pub(crate) fn new(core: Arc<SessionCore>) -> Self {
        EtcdSession { core }
    }

    /// The id of the session's etcd lease.
    pub fn lease_id(&self) -> i64 {
        self.core.lease
    }
}

impl backend::Session for EtcdSession {
    fn new_locker(&self, id: &str, session: lock_core::Session) -> Arc<dyn backend::Locker> {
        let key = self.core.service.next_key();
        let locker = EtcdLocker::new(key, id, self.core.clone(), session);
        self.core.lockers().insert(key, locker.weak());
        if let Some(reason) = self.core.ended() {
            locker.core().session_ended(reason);
        }
        Arc::new(locker)
    }

    fn done(&self) -> Done {
        Done::new(
            self.core.end_signal.clone(),
            0,
            Some(self.core.deadline.clone()),
        )
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::boxed(async move { self.core.close(EndReason::Closed).await })
    }
}

impl Drop for EtcdSession {
    fn drop(&mut self) {
        self.core.end(EndReason::Dropped);
    }
}

impl fmt::Debug for EtcdSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt(f)
    }
}
