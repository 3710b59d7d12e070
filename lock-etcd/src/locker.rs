//! The lock recipe, and the semaphore's (a lock of `limit` permits).
//!
//! Each locker owns one key, `<prefix><id>/<lease>-<locker>`, bound to its session's lease.
//! The keys of an id form its queue, ordered by create revision; the first key holds the lock
//! and its create revision is the fencing token.
//!
//! - **acquire**: one txn puts our key and counts the id's keys: if ours is the only one, the
//!   lock is ours, in one round trip. Where this service already sees contention for the id
//!   (another local locker taking or waiting for it), a plain put joins the queue instead.
//! - **lock-delay**: beside its key the locker puts a record (`crate::delay`), in the same
//!   txn; the count above covers the records too, so a newcomer is not granted at once while a
//!   hold that vanished without a clean release is being waited out.
//! - **wait**: the service's watch keeps a copy of the id's queue and records (one read when
//!   its first local waiter arrives, then the id's watch). When our key becomes the first with
//!   no lock-delay before it, we are woken, and only we are. The copy can lag behind the
//!   cluster: our own key may already be gone (its lease revoked on the server) while we are
//!   granted on it. Our record is what protects the next holder then: it waits until we must
//!   know. Without a record (`lock-delay=0`), one linearizable read of our own key confirms
//!   it still exists before we take the lock.
//! - **unlock**: `lost()` fires first, then one txn deletes our key and our record *if the
//!   key's create revision is still the one we held* (or our record alone, if the key is
//!   gone). Every delete is guarded so: the key name is reused by every attempt, and a delete
//!   given up on can land after the key was put again.
//! - **cleanup**: the locker owns its key and record through the ownership layer
//!   (`crate::ownership`: puts run to their end, lease moves, guarded deletes, background
//!   removals). A dropped or failed `unlock()`, `lock()` or `try_lock()`, a loss, and the end of
//!   the session each hand the incarnation to a background removal (retried until etcd
//!   confirms it; after the session ended, for a minute at most), and the next attempt waits
//!   for those removals first.
//! - **loss**: our key deleted by anyone else, the session's lease lost, or the session's
//!   deadline passed, all fire `lost()`.
//! - **semaphores**: the same, with `limit` permits: a key among the id's first `limit` keys
//!   (counting each stale record before it as a permit still taken) holds one; each waiter
//!   judges by its own limit (a lock's is 1). The key's value starts with `limit=N`; the txn
//!   that puts it also counts the id's keys and records and reads its first key: a first key
//!   of another limit is [`Error::LimitMismatch`] (so every party admitted agrees with the
//!   oldest), and at most `limit` keys, each with its record, grant a permit at once.
//!   Otherwise the mirror wakes one waiter per permit that comes free.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use lock_core::backend::{self, Hold, OpFuture, Signal};
use lock_core::{Error, LossCause, Result};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::hub::Interest;
use crate::keeper::EndReason;
use crate::keys::{self, IdKeys};
use crate::own::Removal;
use crate::ownership::{Incarnations, OwnedKey};
use crate::session::{Member, SessionCore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Idle,
    Acquiring,
    Held,
}

#[derive(Default)]
struct State {
    phase: Phase,
    /// Create revision of our key's current incarnation; 0 while unknown.
    rev: i64,
    /// The latest revision at which our key was seen deleted.
    deleted_at: i64,
    /// The highest fencing token this locker was ever granted (kept across attempts).
    granted: i64,
    /// Our registration for deletions of our own key.
    own: Option<Interest>,
    /// Our key's removals in progress and its put in flight (the ownership layer's).
    incarnations: Incarnations,
}

impl State {
    /// Back to Idle, no longer watching our key; a hold that ends fires `signal`, recording
    /// `cause` and `detail()`. Returns the epoch that ended, if a hold did.
    fn go_idle(
        &mut self,
        signal: &Signal,
        cause: LossCause,
        detail: impl FnOnce() -> String,
    ) -> Option<u64> {
        let ended = (self.phase == Phase::Held).then(|| signal.fire_because(cause, detail()));
        self.phase = Phase::Idle;
        self.own = None;
        ended
    }

    /// Back to Idle where no hold can end (the attempt had not been granted).
    fn stop_attempt(&mut self, signal: &Signal) {
        self.go_idle(signal, LossCause::Unknown, String::new);
    }
}

pub(crate) struct LockerCore {
    serial: u64,
    id: String,
    /// A semaphore's limit (its key's value says it); `None` for a lock or an election.
    limit: Option<u32>,
    /// The id's keys, shared with the hub's queue while this locker uses it.
    keys: IdKeys,
    /// What follows the id's range in our key (and the records' prefix in our record).
    suffix: String,
    /// Our key and record (the ownership layer), and our session.
    owned: OwnedKey,
    signal: Arc<Signal>,
    state: Mutex<State>,
    wake: Notify,
}

impl LockerCore {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn session(&self) -> &Arc<SessionCore> {
        &self.owned.session
    }

    pub(crate) fn keys(&self) -> &IdKeys {
        &self.keys
    }

    pub(crate) fn key(&self) -> &str {
        &self.owned.key
    }

    /// Sets the value our key's next put writes (an election candidate's).
    pub(crate) fn set_value(&self, value: Vec<u8>) {
        self.owned.set_value(value);
    }

    /// Sends a txn of the recipe (see [`OwnedKey::txn`]).
    pub(crate) async fn txn(&self, context: &'static str, txn: Txn) -> Result<TxnResponse> {
        self.owned.txn(context, txn).await
    }

    /// The fencing token of the hold this locker has now, if it holds.
    pub(crate) fn held_token(&self) -> Option<u64> {
        let st = self.state();
        (st.phase == Phase::Held).then_some(st.rev as u64)
    }

    fn canceled(&self) -> Error {
        match self.session().ended() {
            Some(reason) => Error::Canceled(reason.describe().to_owned()),
            None => Error::Canceled("the lock key was deleted while waiting".to_owned()),
        }
    }

    /// The session ended: a hold is lost, and its key and record go (a waiter wakes up to
    /// notice, and its attempt removes its own). Returns the removal of the hold's, to wait
    /// for.
    pub(crate) fn session_ended(&self, reason: EndReason) -> Option<Removal> {
        let mut st = self.state();
        let mut removal = None;
        if st.phase == Phase::Held {
            let lease = self.session().current_lease();
            st.go_idle(&self.signal, reason.cause(), || {
                format!("{} (lease {lease:016x})", reason.describe())
            });
            let rev = st.rev;
            removal = Some(self.owned.remove_later(&mut st.incarnations, rev));
        }
        drop(st);
        self.wake.notify_one();
        removal
    }

    /// Our key was deleted at `revision` (by us, by someone else, or by lease expiry).
    fn key_deleted(&self, revision: i64) {
        let mut st = self.state();
        st.deleted_at = st.deleted_at.max(revision);
        if st.phase == Phase::Held && revision > st.rev {
            let (key, token) = (&self.owned.key, st.rev);
            let ended = st.go_idle(&self.signal, LossCause::Removed, || {
                format!(
                    "key {key} (created at revision {token}) was deleted at revision {revision}, \
                     not by this locker (it deletes only incarnations it no longer holds, \
                     guarded by their create revision)"
                )
            });
            tracing::warn!(id = %self.id, token, revision, "lock lost: its key was deleted");
            if let Some(epoch) = ended {
                self.ask_about_lease(epoch);
            }
            // We know now: our record goes, and with it the lock-delay of those behind us.
            self.owned.remove_later(&mut st.incarnations, token);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Asks etcd whether our lease still exists, and adds the answer to the loss of `epoch`:
    /// a key deleted while its lease lives was deleted by a request; with the lease gone, the
    /// server expired or revoked it.
    fn ask_about_lease(&self, epoch: u64) {
        let (client, lease, signal, limit, keeper) = (
            self.session().service.client.clone(),
            self.session().current_lease(),
            self.signal.clone(),
            self.owned.limit(),
            self.session().service.keeper.clone(),
        );
        self.session().service.runtime.spawn(async move {
            let alive = crate::keeper::lease_alive(&client, lease, limit).await;
            if alive == Some(false) {
                // The session is over: end it now rather than at the next keep-alive, so that
                // its waiters and later calls learn it at once.
                keeper.lease_gone(lease);
            }
            let answer = match alive {
                Some(true) => format!(
                    "etcd says lease {lease:016x} is alive: the key was deleted by a delete request"
                ),
                Some(false) => format!(
                    "etcd says lease {lease:016x} is gone: it expired or was revoked on the server"
                ),
                None => {
                    format!("etcd did not say within {limit:?} whether lease {lease:016x} lives")
                }
            };
            tracing::warn!(
                lease = format_args!("{lease:016x}"),
                "lost lock's key deleted: {answer}"
            );
            signal.explain(epoch, &answer);
        });
    }

    fn precheck(&self) -> Result<()> {
        self.session().check_open()
    }

    /// Waits for the removal of every earlier incarnation of our key still in progress.
    async fn finish_cleanup(&self) {
        loop {
            let cleaned = self.owned.cleaned().notified();
            tokio::pin!(cleaned);
            cleaned.as_mut().enable();
            if !self.state().incarnations.removing() {
                return;
            }
            cleaned.await;
        }
    }

    /// Idle → Acquiring, watching our own key from now on.
    fn begin(self: &Arc<Self>) -> Result<()> {
        let mut st = self.state();
        if st.phase != Phase::Idle {
            return Err(Error::AlreadyLocked);
        }
        let weak = Arc::downgrade(self);
        st.own = Some(
            self.session()
                .service
                .hub
                .register(&self.owned.key, move |rev| {
                    if let Some(core) = weak.upgrade() {
                        core.key_deleted(rev);
                    }
                }),
        );
        let mut incarnations = std::mem::take(&mut st.incarnations);
        incarnations.new_attempt();
        *st = State {
            phase: Phase::Acquiring,
            own: st.own.take(),
            incarnations,
            granted: st.granted,
            ..State::default()
        };
        Ok(())
    }

    /// Records our key's create revision; fails if it was already deleted again.
    fn set_rev(&self, rev: i64) -> Result<()> {
        let mut st = self.state();
        st.rev = rev;
        if st.deleted_at > rev {
            return Err(self.canceled());
        }
        if rev <= st.granted {
            // Our put found an incarnation this locker already held (its removal has not
            // landed): granting it again would hand out its token again. The failed attempt
            // hands it to a guarded removal; the next attempt waits for that.
            tracing::warn!(id = %self.id, token = rev, "an incarnation already held is still there; not granting it again");
            return Err(Error::Canceled(format!(
                "this locker's earlier hold (fencing token {rev}) is still being released; try again"
            )));
        }
        Ok(())
    }

    /// Acquiring → Held.
    fn grant(&self) -> Result<Hold> {
        let mut st = self.state();
        if self.session().ended().is_some() || st.deleted_at > st.rev {
            return Err(self.canceled());
        }
        st.phase = Phase::Held;
        st.granted = st.granted.max(st.rev);
        tracing::debug!(id = %self.id, token = st.rev, "lock acquired");
        Ok(Hold::new(
            self.signal.clone(),
            self.signal.epoch(),
            Some(self.session().deadline.clone()),
            st.rev as u64,
        ))
    }

    /// Runs `put` (a request that may create our key, bound to the lease it is given) to its
    /// end even if the attempt awaiting it is dropped, and records what it created (`created`
    /// reads that from its answer): see [`OwnedKey::finish_put`].
    async fn detached<T, Fut>(
        self: &Arc<Self>,
        created: fn(&T) -> Option<i64>,
        put: impl FnOnce(i64) -> Fut,
    ) -> Result<T>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let (outcome, lease) = self.owned.start_put(&mut self.state().incarnations);
        self.owned.finish_put(outcome, created, put(lease)).await
    }

    /// Binds our key to the session's fresh lease (see [`OwnedKey::move_to`]).
    pub(crate) async fn move_key(
        &self,
        from: i64,
        to: i64,
        limit: Duration,
        per_try: Duration,
    ) -> Result<()> {
        let put = {
            let st = self.state();
            if st.phase == Phase::Idle {
                // No key, or one being removed: if it is bound to `from`, it goes with it.
                return Ok(());
            }
            st.incarnations.put()
        };
        self.owned.move_to(put, from, to, limit, per_try).await
    }

    /// One txn puts our key and our record and counts what the id's range holds, records
    /// included (etcd counts from its index, reading no values). Only ours: the lock is ours
    /// (`true`) — no other key, and no hold that ended behind its holder's back. Returns our
    /// key's create revision (an earlier send's, if that put arrived but its answer did not).
    async fn put_if_free(&self, lease: i64) -> Result<(i64, bool)> {
        let mut ops = self.owned.puts(lease);
        ops.push(TxnOp::get(
            self.keys.records.to_vec(),
            Some(
                GetOptions::new()
                    .with_range(self.keys.end.to_vec())
                    .with_count_only(),
            ),
        ));
        let resp = self
            .owned
            .txn("taking the lock", Txn::new().and_then(ops))
            .await?;
        let ours = 1 + i64::from(self.owned.record.is_some());
        let alone = resp.op_responses().into_iter().any(|op| match op {
            TxnOpResponse::Get(get) => get.count() == ours,
            _ => false,
        });
        Ok((key_created(&resp), alone))
    }

    /// For a semaphore: one txn puts our key and our record, counts the id's keys and its
    /// records (etcd counts from its index), and reads the first key (whose value names the
    /// semaphore's limit).
    async fn put_counted(&self, lease: i64) -> Result<TxnResponse> {
        let mut ops = self.owned.puts(lease);
        let count = || GetOptions::new().with_count_only();
        ops.push(TxnOp::get(
            &*self.keys.range,
            Some(count().with_range(self.keys.end.to_vec())),
        ));
        ops.push(TxnOp::get(
            self.keys.records.to_vec(),
            Some(count().with_range(self.keys.range.as_bytes().to_vec())),
        ));
        let first = GetOptions::new()
            .with_range(self.keys.end.to_vec())
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        ops.push(TxnOp::get(&*self.keys.range, Some(first)));
        self.owned
            .txn("taking a permit", Txn::new().and_then(ops))
            .await
    }

    /// Whether a [`put_counted`](Self::put_counted) answer grants a permit at once: the
    /// semaphore's limit is ours (else [`Error::LimitMismatch`]), at most `limit` keys are
    /// there (ours the youngest), and every record belongs to one of them (none stale: a
    /// hold that ended behind its holder's back keeps its permit until its lock-delay has
    /// passed, which the mirror tells exactly; then we wait for its word).
    fn permit_at_once(&self, resp: &TxnResponse, rev: i64, limit: u32) -> Result<bool> {
        let ops = resp.op_responses();
        let get = |i: usize| match ops.get(i) {
            Some(TxnOpResponse::Get(get)) => Some(get),
            _ => None,
        };
        let puts = 1 + usize::from(self.owned.record.is_some());
        let (Some(keys), Some(records), Some(first)) = (get(puts), get(puts + 1), get(puts + 2))
        else {
            return Ok(false);
        };
        if let Some(kv) = first.kvs().first().filter(|kv| kv.create_revision() != rev) {
            let theirs = keys::limit_of(kv.value()).unwrap_or(1);
            if theirs != limit as usize {
                return Err(Error::LimitMismatch {
                    id: self.id.clone(),
                    ours: limit,
                    theirs: u32::try_from(theirs).unwrap_or(u32::MAX),
                });
            }
        }
        // Every party of the semaphore writes a record beside its key, or none does.
        let expected = match self.owned.record {
            Some(_) => keys.count(),
            None => 0,
        };
        Ok(keys.count() <= i64::from(limit) && records.count() == expected)
    }

    /// One txn puts our key and our record: queues behind the id's others. Returns the key's
    /// create revision (an earlier attempt's, if that put arrived but its answer did not).
    async fn enqueue(&self, lease: i64) -> Result<i64> {
        let txn = Txn::new().and_then(self.owned.puts(lease));
        let resp = self.owned.txn("taking the lock", txn).await?;
        Ok(key_created(&resp))
    }

    async fn acquire(self: &Arc<Self>) -> Result<Hold> {
        // Where this service already sees contention for the id, a plain put joins the queue;
        // otherwise one txn takes a free lock outright. A semaphore always counts (and checks
        // the limit).
        let (mut queue, busy) = self.session().service.hub.join(&self.keys);
        let core = self.clone();
        let rev = if let Some(limit) = self.limit {
            let put = |lease| async move { core.put_counted(lease).await };
            let resp = self.detached(|resp| Some(key_created(resp)), put).await?;
            let rev = key_created(&resp);
            if self.permit_at_once(&resp, rev, limit)? {
                self.set_rev(rev)?;
                return self.grant();
            }
            rev
        } else if busy {
            self.detached(
                |rev| Some(*rev),
                |lease| async move { core.enqueue(lease).await },
            )
            .await?
        } else {
            let put = |lease| async move { core.put_if_free(lease).await };
            let (rev, free) = self.detached(|(rev, _)| Some(*rev), put).await?;
            if free {
                self.set_rev(rev)?;
                return self.grant();
            }
            rev
        };
        self.set_rev(rev)?;
        let weak: Weak<LockerCore> = Arc::downgrade(self);
        queue.wait(
            &self.suffix,
            rev,
            Arc::new(move || {
                if let Some(core) = weak.upgrade() {
                    core.wake.notify_one();
                }
            }),
            self.limit.map_or(1, |l| l as usize),
        );
        tracing::debug!(id = %self.id, key = %self.owned.key, token = rev, "waiting for the lock");
        // How long to wait before looking again when etcd disagrees with the mirror.
        let mut recheck = Duration::from_millis(50);
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let first = queue.may_hold(&self.suffix, rev)?;
            // With a record, the mirror's word is enough (see the module docs); without one,
            // etcd confirms that our key still exists.
            if first && (self.owned.record.is_some() || self.confirm_first(rev).await?) {
                return self.grant();
            }
            if self.session().ended().is_some() || self.state().deleted_at > rev {
                return Err(self.canceled());
            }
            if first {
                // The mirror says first and etcd does not: the mirror is behind, and the
                // events that move it on are on their way. Look again when they arrive, or
                // soon anyway.
                let _ = tokio::time::timeout(recheck, notified).await;
                recheck = (recheck * 2).min(Duration::from_secs(1));
            } else {
                notified.await;
            }
        }
    }

    /// Whether etcd itself says, now, that our key still exists as created at `rev`: a
    /// linearizable read of that one key. With what the mirror showed — no key older than
    /// ours, which stays true once true, since a key created later has a higher revision — it
    /// means our key is the first at the read's revision. The mirror comes from a watch, which
    /// can lag behind the cluster (a member that is behind, a slow link): granting on it alone
    /// once gave a hold to a key etcd had already deleted — its lease revoked on the server —
    /// while the next key's owner held the lock. etcd's Go `concurrency.Mutex` reads its key
    /// the same way before it returns. A read that fails for a reason that may pass counts as
    /// "not yet"; the wait goes on.
    async fn confirm_first(&self, rev: i64) -> Result<bool> {
        let (kv, key) = (self.owned.kv(), self.owned.key.as_str());
        let options = GetOptions::new().with_keys_only();
        let read = crate::error::request("confirming the lock", self.owned.limit(), || {
            let (mut kv, options) = (kv.clone(), options.clone());
            async move { kv.get(key, Some(options)).await }
        })
        .await;
        match read {
            Ok(resp) => Ok(resp
                .kvs()
                .first()
                .is_some_and(|own| own.create_revision() == rev)),
            Err(e) if e.is_transient() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One acquisition attempt: checks, waits for the removal of earlier incarnations of our
    /// key, watches our key, runs `op`, and abandons (handing our key to a background removal
    /// the next attempt waits for) if `op` fails or is dropped. Within `limit` in all, when
    /// given: the removal of this attempt's key is not waited for.
    async fn attempt<T, F, Fut>(self: &Arc<Self>, op: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.precheck()?;
        self.finish_cleanup().await;
        self.begin()?;
        let mut attempt = Attempt {
            core: self,
            finished: false,
        };
        let result = op().await;
        attempt.finished = result.is_ok();
        match result {
            Err(e) if crate::error::is_lease_not_found(&e) => Err(self.lease_refused(e).await),
            result => result,
        }
    }

    /// etcd refused our put because it does not know the lease it named: if the cluster
    /// confirms the lease is gone, the session ends (as a keep-alive answer would end it) and
    /// the attempt fails as any attempt of an ended session does; else `e` stands.
    async fn lease_refused(&self, e: Error) -> Error {
        let session = self.session();
        let lease = session.current_lease();
        let (client, limit) = (&session.service.client, self.owned.limit());
        if crate::keeper::lease_alive(client, lease, limit).await == Some(false) {
            session.service.keeper.lease_gone(lease);
            return Error::AlreadyClosed(EndReason::LeaseGone.describe());
        }
        e
    }

    async fn try_acquire(self: &Arc<Self>) -> Result<Option<Hold>> {
        let core = self.clone();
        if let Some(limit) = self.limit {
            let put = |lease| async move { core.put_counted(lease).await };
            let resp = self.detached(|resp| Some(key_created(resp)), put).await?;
            let rev = key_created(&resp);
            self.set_rev(rev)?;
            if self.permit_at_once(&resp, rev, limit)? {
                return self.grant().map(Some);
            }
            // Taken, or (records in the way) perhaps not: busy either way; our key goes.
            self.abandon();
            return Ok(None);
        }
        let resp = self
            .detached(created_by_try, |lease| async move {
                // Free: nothing in the id's range, neither keys nor records (a hold that ended
                // behind its holder's back keeps the lock from others until its lock-delay
                // has passed).
                let keys = &core.keys;
                let free = Compare::create_revision(keys.records.to_vec(), CompareOp::Equal, 0)
                    .with_range(keys.end.to_vec());
                let key = core.owned.key.as_str();
                let queue = GetOptions::new().with_prefix().with_count_only();
                let txn = Txn::new()
                    .when([free])
                    .and_then(core.owned.puts(lease))
                    .or_else([
                        TxnOp::get(key, Some(GetOptions::new().with_keys_only())),
                        TxnOp::get(&*keys.range, Some(queue)),
                    ]);
                core.owned.txn("trying the lock", txn).await
            })
            .await?;
        if !resp.succeeded() {
            if let Some(created) = own_key_created(&resp) {
                // An earlier send of this txn put our key and its answer was lost: take that
                // incarnation away again rather than leave it queued.
                self.set_rev(created).ok();
                self.abandon();
                return Ok(None);
            }
            self.state().stop_attempt(&self.signal);
            if queue_is_empty(&resp) {
                // Only records are in the way: someone must end their lock-delays, and no
                // waiter may be there to do it.
                let (hub, keys) = (self.session().service.hub.clone(), self.keys.clone());
                self.session()
                    .service
                    .runtime
                    .spawn(async move { hub.look_for_stale(&keys).await });
            }
            return Ok(None);
        }
        self.set_rev(header_revision(&resp))?;
        self.grant().map(Some)
    }

    /// Back to Idle, removing our key's current incarnation in the background (the next
    /// attempt waits for that).
    fn abandon(&self) {
        let mut st = self.state();
        st.go_idle(&self.signal, LossCause::Unlocked, || {
            "the locker was dropped".to_owned()
        });
        let rev = st.rev;
        // Registered under the same lock that made us idle: a next attempt cannot begin (and
        // put the key) before this removal is one it waits for.
        self.owned.remove_later(&mut st.incarnations, rev);
    }

    /// Removes the incarnation of our key created at `rev` in the background (see
    /// [`OwnedKey::remove_later`]).
    fn remove_later(&self, rev: i64) {
        let mut st = self.state();
        self.owned.remove_later(&mut st.incarnations, rev);
    }
}

/// A locker of the `etcd:` backend; see [`lock_core::backend::Locker`].
pub struct EtcdLocker {
    core: Arc<LockerCore>,
    /// What the handles keep of this locker (its session's handle among it): dropped after the
    /// locker's `Drop` handed its key to the removal.
    party: backend::Party,
}

impl EtcdLocker {
    pub(crate) fn new(
        serial: u64,
        id: &str,
        limit: Option<u32>,
        session: Arc<SessionCore>,
        party: backend::Party,
    ) -> Self {
        let keys = IdKeys::new(&session.service.config.prefix, id);
        let suffix = keys::locker_suffix(session.lease, serial);
        let key = keys.key(&suffix);
        let record = session
            .lock_delay()
            .map(|delay| (keys.record(&suffix), crate::delay::record_value(delay)));
        let owned = OwnedKey::new(key, record, session);
        if let Some(limit) = limit {
            owned.set_value(keys::limit_value(limit, &owned.session.service.owner));
        }
        EtcdLocker {
            party,
            core: Arc::new(LockerCore {
                serial,
                id: id.to_owned(),
                limit,
                keys,
                suffix,
                owned,
                signal: Arc::new(Signal::new()),
                state: Mutex::new(State::default()),
                wake: Notify::new(),
            }),
        }
    }

    /// The key this locker's holds are made of: `<prefix><encoded id>/<lease hex>-<n>`, bound
    /// to its session's lease. A hold is this key with the create revision that is its fencing
    /// token (see [`crate::guard`]).
    pub fn key(&self) -> &str {
        &self.core.owned.key
    }

    pub(crate) fn weak(&self) -> Weak<LockerCore> {
        Arc::downgrade(&self.core)
    }

    pub(crate) fn core(&self) -> &LockerCore {
        &self.core
    }

    fn span(&self, op: &'static str) -> tracing::Span {
        tracing::debug_span!("lock_etcd", op, id = %self.core.id, lease = format_args!("{:016x}", self.core.session().current_lease()))
    }
}

/// Abandons the attempt if `lock()`/`try_lock()` fails or is dropped before it finished.
struct Attempt<'a> {
    core: &'a LockerCore,
    finished: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.core.abandon();
        }
    }
}

/// Hands the released incarnation to a background removal if `unlock()` is dropped before
/// etcd confirmed the delete.
struct Release<'a> {
    core: &'a LockerCore,
    rev: i64,
    finished: bool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.core.remove_later(self.rev);
        }
    }
}

impl backend::Locker for EtcdLocker {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        let span = self.span("lock");
        OpFuture::boxed(Instrument::instrument(
            async move {
                let core = &self.core;
                core.attempt(|| core.acquire()).await
            },
            span,
        ))
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        let span = self.span("try_lock");
        OpFuture::boxed(Instrument::instrument(
            async move {
                let core = &self.core;
                core.attempt(|| core.try_acquire()).await
            },
            span,
        ))
    }

    fn unlock(&self, token: u64) -> OpFuture<'_, Result<()>> {
        let span = self.span("unlock");
        OpFuture::boxed(Instrument::instrument(
            async move {
                let core = &self.core;
                core.session().check_open()?;
                let rev = {
                    let mut st = core.state();
                    if st.phase != Phase::Held || token != st.rev as u64 {
                        return Err(Error::NotHeld);
                    }
                    st.go_idle(&core.signal, LossCause::Unlocked, || "unlock()".to_owned());
                    st.rev
                };
                tracing::debug!(id = %core.id, token = rev, "unlocking");
                // From here the key is ours to remove, whatever happens to this future.
                let mut release = Release {
                    core,
                    rev,
                    finished: false,
                };
                let deleted = core.owned.delete("releasing the lock", rev).await;
                release.finished = deleted.is_ok();
                match deleted {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(Error::NotHeld),
                    Err(e) => Err(e), // `release` keeps trying in the background
                }
            },
            span,
        ))
    }

    fn release(&self, token: u64) {
        let core = &self.core;
        let mut st = core.state();
        if st.phase != Phase::Held || st.rev as u64 != token {
            return; // released or lost already
        }
        st.go_idle(&core.signal, LossCause::Unlocked, || {
            "the Held was dropped".to_owned()
        });
        tracing::debug!(id = %core.id, token, "releasing a dropped hold");
        let rev = st.rev;
        // Under the lock that made us idle, as `abandon` does: a next attempt waits for it.
        core.owned.remove_later(&mut st.incarnations, rev);
    }

    fn id(&self) -> &str {
        &self.core.id
    }

    fn party(&self) -> &backend::Party {
        &self.party
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl Drop for EtcdLocker {
    fn drop(&mut self) {
        let phase = self.core.state().phase;
        if phase != Phase::Idle {
            self.core.abandon();
        }
        self.core.session().forget_locker(self.core.serial);
    }
}

impl fmt::Debug for EtcdLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLocker")
            .field("id", &self.core.id)
            .field("key", &self.core.owned.key)
            .field("phase", &self.core.state().phase)
            .finish()
    }
}

/// The create revision of our key after a try txn: the one it put, or the one it found.
fn created_by_try(resp: &TxnResponse) -> Option<i64> {
    match resp.succeeded() {
        true => Some(header_revision(resp)),
        false => own_key_created(resp),
    }
}

fn header_revision(resp: &TxnResponse) -> i64 {
    resp.header().map_or(0, |h| h.revision())
}

/// The create revision of our key after a txn whose first op put it: the revision of the txn,
/// or, if the key was there already (an earlier send of the same txn landed), its own.
fn key_created(resp: &TxnResponse) -> i64 {
    match resp.op_responses().into_iter().next() {
        Some(TxnOpResponse::Put(put)) => put
            .prev_key()
            .map_or(header_revision(resp), |kv| kv.create_revision()),
        _ => header_revision(resp),
    }
}

/// The create revision of our key, if the else branch of a try txn found it.
fn own_key_created(resp: &TxnResponse) -> Option<i64> {
    match resp.op_responses().into_iter().next() {
        Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.create_revision()),
        _ => None,
    }
}

/// Whether the else branch of a try txn found no key in the id's queue (only records).
fn queue_is_empty(resp: &TxnResponse) -> bool {
    match resp.op_responses().into_iter().nth(1) {
        Some(TxnOpResponse::Get(get)) => get.count() == 0,
        _ => false,
    }
}

impl Member for LockerCore {
    fn session_ended(&self, reason: EndReason) -> Option<Removal> {
        LockerCore::session_ended(self, reason)
    }

    fn move_key(
        &self,
        from: i64,
        to: i64,
        limit: Duration,
        per_try: Duration,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>> {
        Box::pin(LockerCore::move_key(self, from, to, limit, per_try))
    }
}
