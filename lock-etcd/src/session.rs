//! A session: one etcd lease, kept alive by the service's keeper.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use lock_core::backend::{Deadline, Signal};
use lock_core::{Error, Result};

use crate::keeper::{EndReason, LeaseOwner};
use crate::own::Removal;
use crate::shared::{OpenSession, ServiceCore};

/// What a session needs of its lockers: to end their holds and waits when it ends, and to
/// move their keys to a fresh lease. The session layer knows lockers by this alone.
pub(crate) trait Member: Send + Sync {
    /// The session ended for `reason`: the hold is lost, a wait fails; returns the removal of
    /// the key and record, if one was started.
    fn session_ended(&self, reason: EndReason) -> Option<Removal>;

    /// Binds the locker's key, if it is bound to lease `from`, to lease `to`.
    fn move_key(
        &self,
        from: i64,
        to: i64,
        limit: Duration,
        per_try: Duration,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>>;
}

pub(crate) struct SessionCore {
    pub(crate) key: u64,
    pub(crate) service: Arc<ServiceCore>,
    /// The lease the session was opened with; its lockers' key names carry it. Its keys may
    /// have moved to another lease since (see [`SessionCore::move_to_fresh_lease`]).
    pub(crate) lease: i64,
    /// The lease its keys are bound to now, and the one a move is taking them to.
    leases: Mutex<Leases>,
    pub(crate) ttl: Duration,
    /// When the lease must be assumed gone; see the keeper.
    pub(crate) deadline: Arc<Deadline>,
    /// Fired once, when the session ends.
    pub(crate) end_signal: Arc<Signal>,
    ended: Mutex<Option<EndReason>>,
    lockers: Mutex<HashMap<u64, Weak<dyn Member>>>,
}

impl SessionCore {
    pub(crate) fn new(
        key: u64,
        service: Arc<ServiceCore>,
        lease: i64,
        ttl: Duration,
        deadline: Arc<Deadline>,
    ) -> Self {
        SessionCore {
            key,
            service,
            lease,
            leases: Mutex::new(Leases {
                current: lease,
                next: None,
            }),
            ttl,
            deadline,
            end_signal: Arc::new(Signal::new()),
            ended: Mutex::new(None),
            lockers: Mutex::new(HashMap::new()),
        }
    }

    fn leases(&self) -> MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease the session's keys are bound to.
    pub(crate) fn current_lease(&self) -> i64 {
        self.leases().current
    }

    /// The lease a put of a key sent now binds it to: once a move has its fresh lease, that
    /// one (the move then only has to wait for the puts sent before).
    pub(crate) fn lease_for_put(&self) -> i64 {
        let leases = self.leases();
        leases.next.unwrap_or(leases.current)
    }

    pub(crate) fn lockers(&self) -> MutexGuard<'_, HashMap<u64, Weak<dyn Member>>> {
        self.lockers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the session ended, if it did (its deadline passing counts).
    pub(crate) fn ended(&self) -> Option<EndReason> {
        let ended = *self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended.or_else(|| self.deadline.has_passed().then_some(EndReason::Expired))
    }

    /// The lock-delay the holds of this session ask for (`None`: none, `lock-delay=0`).
    pub(crate) fn lock_delay(&self) -> Option<Duration> {
        self.service.config.lock_delay.for_ttl(self.ttl)
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

    /// Ends the session: every hold fires `lost()`, waiters stop, `done()` resolves, the
    /// holds' keys and records are handed to their removals, and the lease is given to the
    /// keeper to revoke (unless the caller revokes it, or it is gone). Returns false if it had
    /// ended already.
    pub(crate) fn end(&self, reason: EndReason) -> bool {
        self.end_removing(reason).is_some()
    }

    /// [`end`](Self::end), returning the removals of the holds' keys and records to wait for;
    /// `None` if the session had ended already.
    fn end_removing(&self, reason: EndReason) -> Option<Vec<Removal>> {
        {
            let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
            if ended.is_some() {
                return None;
            }
            *ended = Some(reason);
        }
        // A move that adopts its fresh lease checks `ended` under this mutex: either it saw the
        // end (and adopts nothing), or its lease is here.
        let leases = *self.leases();
        let lease = format_args!("{:016x}", leases.current);
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
        let removals: Vec<Removal> = lockers
            .iter()
            .filter_map(|locker| locker.session_ended(reason))
            .collect();
        // After the holds recorded why they ended (a deadline that passed earlier keeps its
        // moment: `expire` never moves it later).
        self.deadline.expire();
        self.end_signal.fire();
        self.service.forget_session(self.key);
        let keeper = &self.service.keeper;
        match reason {
            EndReason::Closed | EndReason::ServiceClosed | EndReason::LeaseGone => {
                keeper.remove(leases.current)
            }
            EndReason::Dropped | EndReason::Expired | EndReason::NotMoved => {
                keeper.revoke_later(leases.current)
            }
        }
        if let Some(next) = leases.next {
            keeper.revoke_later(next); // a move in progress: its keys go with it
        }
        Some(removals)
    }

    /// Ends the session and revokes its lease, waiting for the server, and for the removal of
    /// its holds' keys and records (a clean release: nobody waits out a lock-delay after a
    /// closed session; the two go out together, so the handover costs one round trip).
    pub(crate) async fn close(&self, reason: EndReason) -> Result<()> {
        let Some(removals) = self.end_removing(reason) else {
            return Err(Error::AlreadyClosed("the session was already closed"));
        };
        let removed = async {
            for removal in &removals {
                removal.finished().await;
            }
        };
        let leases = self.service.client.lease_client();
        // Fixed from now (no move adopts after the end). From here the lease is ours to revoke,
        // whatever happens to this future: dropped before etcd confirmed it, the revoke goes on
        // in the background.
        let lease = self.current_lease();
        let mut guard = RevokeGuard {
            session: self,
            done: false,
        };
        let revoke = self.service.write("revoking the session's lease", || {
            crate::keeper::revoke_once(leases.clone(), lease)
        });
        let limit = self.service.config.request_timeout;
        let (revoked, _) = tokio::join!(revoke, tokio::time::timeout(limit, removed));
        // On an error, the guard tries again in the background (else the lease would run out
        // on its own within the TTL).
        guard.done = revoked.is_ok();
        revoked
    }
}

/// How long the first try of a move's request may take: short, so that a try stuck on a member
/// that stopped leaves time for others before the session's deadline (a TTL minus a tenth
/// after the last acknowledged keep-alive), but three round trips of the keep-alives at least,
/// so that a link that is merely slow gets its answers.
fn first_move_try(ttl: Duration, rtt: Duration) -> Duration {
    (ttl / 6).max(rtt * 3).max(Duration::from_millis(250))
}

/// The leases of a session: the one its keys are bound to, and a fresh one being moved to.
#[derive(Debug, Clone, Copy)]
struct Leases {
    current: i64,
    next: Option<i64>,
}

impl SessionCore {
    /// Moves the session's keys from lease `from`, whose keep-alives stalled, to a fresh lease,
    /// then keeps that one alive instead.
    ///
    /// Why: a stalled keep-alive is typically one a follower forwarded to a leader that stopped
    /// (SIGSTOP, a starved CPU, a slow disk). Renewing `from` through another path would keep
    /// the session alive only until that leader returns: it still believes `from` expired and
    /// can make the cluster revoke it (etcd issue 15247; even 3.5.30 under load). A lease
    /// granted now is one it has never seen. So `from` is not renewed anywhere else (the keeper
    /// still renews it where it stalled, as before), and the session's deadline stays that of
    /// `from` until every key is on the fresh lease: a put on an existing key keeps its create
    /// revision, so the queue order and the fencing tokens stay.
    ///
    /// Requests go in rounds of two short tries (a try stuck on the stopped member must leave
    /// time for others), twice as long each round (a link that is merely slow still gets its
    /// answers), until the session's deadline passes. Once the fresh lease is granted, the move
    /// ends in one of two ways: adopted, or the session ended (by its deadline, or at once,
    /// [`EndReason::NotMoved`], when a key cannot be moved for a reason that trying again does
    /// not cure).
    pub(crate) async fn move_to_fresh_lease(self: Arc<Self>, from: i64) {
        let keeper = &self.service.keeper;
        let limit = self.service.config.request_timeout;
        let mut per_try = first_move_try(self.ttl, keeper.rtt()).min(limit);
        let secs = self.ttl.as_secs() as i64;
        let lease_client = self.service.client.lease_client();
        let (fresh, granted_at) = loop {
            let Some(within) = self.time_left() else {
                return; // the session ended, or ends by its deadline
            };
            let mut granted_at = Instant::now();
            let context = "granting a fresh lease for the session";
            let grant = self
                .service
                .write_in_tries(context, within.min(per_try * 2), per_try, || {
                    granted_at = Instant::now();
                    let mut leases = lease_client.clone();
                    async move { leases.grant(secs, None).await }
                })
                .await;
            match grant {
                Ok(grant) if grant.ttl() == secs => break (grant.id(), granted_at),
                Ok(grant) => return keeper.revoke_later(grant.id()),
                Err(e) if e.is_transient() => per_try = (per_try * 2).min(limit),
                Err(e) => {
                    // The stalled stream may still recover; otherwise the deadline decides.
                    tracing::warn!(error = %e.report(), "a stalled session was refused a fresh lease");
                    return;
                }
            }
        };
        {
            let mut leases = self.leases();
            if self.ended().is_some() || leases.current != from || leases.next.is_some() {
                drop(leases);
                return keeper.revoke_later(fresh);
            }
            // From now on, puts bind their keys to it, and the keeper keeps it alive (by the
            // deadline of its own grant until it is adopted): keys move onto it before the
            // session relies on it.
            leases.next = Some(fresh);
            let own = Deadline::new(granted_at + self.ttl - crate::keeper::margin(self.ttl));
            let weak = Arc::downgrade(&self) as Weak<dyn LeaseOwner>;
            keeper.add(fresh, self.ttl, granted_at, Arc::new(own), weak);
        }
        // Every key bound to `from`: the lockers that hold or wait, each after the put it has
        // in flight (a put sent from now on binds to `fresh` already).
        let mut lockers: Vec<Arc<dyn Member>> =
            self.lockers().values().filter_map(Weak::upgrade).collect();
        while !lockers.is_empty() {
            let Some(within) = self.time_left() else {
                return; // ended: `end` revokes `fresh` too
            };
            let mut moves = tokio::task::JoinSet::new();
            for locker in lockers.drain(..) {
                moves.spawn(async move {
                    let limit = within.min(per_try * 2);
                    let moved = locker.move_key(from, fresh, limit, per_try).await;
                    (locker, moved)
                });
            }
            while let Some(done) = moves.join_next().await {
                match done {
                    Ok((_, Ok(()))) => {}
                    Ok((locker, Err(e))) if e.is_transient() => lockers.push(locker),
                    Ok((_, Err(e))) => return self.not_moved(&e.to_string()),
                    Err(e) => return self.not_moved(&e.to_string()),
                }
            }
            per_try = (per_try * 2).min(limit);
        }
        {
            let mut leases = self.leases();
            if self.ended().is_some() {
                return; // `end` revokes `fresh` too
            }
            *leases = Leases {
                current: fresh,
                next: None,
            };
            let own = granted_at + self.ttl - crate::keeper::margin(self.ttl);
            self.deadline.extend_to(own);
            keeper.adopt(fresh, self.deadline.clone());
        }
        keeper.revoke_later(from);
        tracing::info!(
            from = format_args!("{from:016x}"),
            to = format_args!("{fresh:016x}"),
            "the session's keep-alives stalled: its keys moved to a fresh lease"
        );
    }

    /// How long the session has until its deadline; `None` once it ended or the deadline
    /// passed.
    fn time_left(&self) -> Option<Duration> {
        let at = self.deadline.instant()?;
        let left = at.saturating_duration_since(Instant::now());
        (self.ended().is_none() && !left.is_zero()).then_some(left)
    }

    /// A key of a moving session cannot be moved: its keys are split between two leases, so
    /// the session ends (its holds fire first, then both leases are revoked).
    fn not_moved(&self, error: &str) {
        tracing::warn!(
            error,
            "a key of a stalled session could not be moved to its fresh lease"
        );
        self.end(EndReason::NotMoved);
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
            let lease = self.session.current_lease();
            self.session.service.keeper.revoke_later(lease);
        }
    }
}

impl OpenSession for SessionCore {
    fn close_for(
        &self,
        reason: EndReason,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>> {
        Box::pin(self.close(reason))
    }
}

impl LeaseOwner for SessionCore {
    fn end_for(&self, reason: EndReason) -> bool {
        self.end(reason)
    }

    fn move_keys(
        self: Arc<Self>,
        from: i64,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(self.move_to_fresh_lease(from))
    }
}

impl fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSession")
            .field("lease", &format_args!("{:016x}", self.current_lease()))
            .field("ttl", &self.ttl)
            .field("ended", &self.ended())
            .finish()
    }
}

/// A session of the `etcd:` backend: one etcd lease with the session's TTL. See
/// [`lock_core::backend::Session`].
pub struct EtcdSession {
    pub(crate) core: Arc<SessionCore>,
}

impl EtcdSession {
    pub(crate) fn new(core: Arc<SessionCore>) -> Self {
        EtcdSession { core }
    }

    /// The id of the session's etcd lease.
    pub fn lease_id(&self) -> i64 {
        self.core.current_lease()
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
