//! The lock recipe.
//!
//! Each locker owns one key, `<prefix><id>/<lease>-<locker>`, bound to its session's lease.
//! Waiters are ordered by the keys' create revisions:
//!
//! - **acquire**: one txn puts our key (if absent) and reads the two newest keys of the id.
//!   If ours is the only one, the lock is ours: one round trip. The fencing token is our key's
//!   create revision.
//! - **wait**: otherwise the key created just before ours is our predecessor. We register with
//!   the service's delete-watch for it, then re-check in one txn (our key still there? who is our
//!   predecessor now?), and sleep until that key is deleted. Only the waiter right behind a
//!   deleted key wakes up: no herd.
//! - **unlock**: `lost()` fires first, then a txn deletes our key if its create revision is
//!   still ours.
//! - **loss**: our key deleted by anyone else, the session's lease lost, or the session's
//!   deadline passed, all fire `lost()`.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, KvClient, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use lock_core::{Error, Held, Locker, OpFuture, Result, Signal};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::request;
use crate::hub::Interest;
use crate::keys;
use crate::session::SessionCore;

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
    /// Our registration for deletions of our own key.
    own: Option<Interest>,
    /// Removal of our key after an abandoned attempt or a failed unlock.
    cleanup: Option<JoinHandle<()>>,
}

pub(crate) struct LockerCore {
    serial: u64,
    id: String,
    invalid_id: Option<String>,
    range: String,
    key: String,
    session: Arc<SessionCore>,
    signal: Arc<Signal>,
    state: Mutex<State>,
    wake: Notify,
}

/// A predecessor: key and create revision.
type Pred = Option<(String, i64)>;

impl LockerCore {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kv(&self) -> KvClient {
        self.session.service.client.kv_client()
    }

    fn limit(&self) -> Duration {
        self.session.service.config.request_timeout
    }

    /// Sends a txn (again while the cluster is unavailable: every txn here is idempotent).
    async fn txn(&self, context: &'static str, txn: Txn) -> Result<TxnResponse> {
        let kv = self.kv();
        request(context, self.limit(), || {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    fn canceled(&self) -> Error {
        match self.session.ended() {
            Some(reason) => Error::Canceled(reason.describe().to_owned()),
            None => Error::Canceled("the lock key was deleted while waiting".to_owned()),
        }
    }

    /// The session ended: a hold is lost; a waiter wakes up to notice.
    pub(crate) fn session_ended(&self) {
        let mut st = self.state();
        if st.phase == Phase::Held {
            st.phase = Phase::Idle;
            st.own = None;
            self.signal.fire();
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Our key was deleted at `revision` (by us, by someone else, or by lease expiry).
    fn key_deleted(&self, revision: i64) {
        let mut st = self.state();
        st.deleted_at = st.deleted_at.max(revision);
        if st.phase == Phase::Held && revision > st.rev {
            st.phase = Phase::Idle;
            st.own = None;
            self.signal.fire();
            tracing::warn!(id = %self.id, token = st.rev, revision, "lock lost: its key was deleted");
        }
        drop(st);
        self.wake.notify_one();
    }

    fn precheck(&self) -> Result<()> {
        if let Some(reason) = &self.invalid_id {
            return Err(Error::InvalidId(reason.clone()));
        }
        self.session.check_open()
    }

    /// Waits for the removal of a key left by an earlier, abandoned attempt.
    async fn finish_cleanup(&self) {
        let pending = self.state().cleanup.take();
        if let Some(task) = pending {
            let _ = task.await;
        }
    }

    /// Idle → Acquiring, watching our own key from now on.
    fn begin(self: &Arc<Self>) -> Result<()> {
        let mut st = self.state();
        if st.phase != Phase::Idle {
            return Err(Error::AlreadyLocked);
        }
        let weak = Arc::downgrade(self);
        st.own = Some(self.session.service.hub.register(&self.key, move |rev| {
            if let Some(core) = weak.upgrade() {
                core.key_deleted(rev);
            }
        }));
        *st = State {
            phase: Phase::Acquiring,
            own: st.own.take(),
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
        Ok(())
    }

    /// Acquiring → Held.
    fn grant(&self) -> Result<Held> {
        let mut st = self.state();
        if self.session.ended().is_some() || st.deleted_at > st.rev {
            return Err(self.canceled());
        }
        st.phase = Phase::Held;
        tracing::debug!(id = %self.id, token = st.rev, "lock acquired");
        Ok(Held::new(
            self.signal.clone(),
            self.signal.epoch(),
            Some(self.session.deadline.clone()),
            st.rev as u64,
        ))
    }

    fn newest_two(&self) -> TxnOp {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(2);
        TxnOp::get(self.range.as_str(), Some(options))
    }

    fn put_own_key(&self) -> TxnOp {
        let options = PutOptions::new().with_lease(self.session.lease);
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let owner = format!("{} since={since}", self.session.service.owner);
        TxnOp::put(self.key.as_str(), owner, Some(options))
    }

    async fn acquire(self: &Arc<Self>) -> Result<Held> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([self.put_own_key(), self.newest_two()])
            .or_else([TxnOp::get(self.key.as_str(), None)]);
        let resp = self.txn("taking the lock", txn).await?;
        let (rev, mut pred, mut check) = if resp.succeeded() {
            let rev = header_revision(&resp);
            let pred = range(&resp, 1)
                .into_iter()
                .find(|(_, created)| *created < rev);
            let check = pred.is_some();
            (rev, pred, check)
        } else {
            // Our key exists already (an earlier attempt's put whose answer was lost).
            let rev = range(&resp, 0).first().map_or(0, |(_, created)| *created);
            (rev, None, true)
        };
        self.set_rev(rev)?;
        loop {
            let _watching = pred
                .as_ref()
                .map(|(key, created)| self.watch_predecessor(key, *created));
            if check {
                let now = self.predecessor(rev).await?;
                if now != pred {
                    pred = now;
                    continue; // watch the new predecessor, then check again
                }
            }
            if pred.is_none() {
                return self.grant();
            }
            tracing::debug!(id = %self.id, key = %self.key, waits_for = ?pred.as_ref().map(|p| &p.0), "waiting for the lock");
            self.wait_for_wake(rev).await?;
            check = true;
        }
    }

    fn watch_predecessor(self: &Arc<Self>, key: &str, created: i64) -> Interest {
        let weak: Weak<LockerCore> = Arc::downgrade(self);
        self.session.service.hub.register(key, move |deleted| {
            if deleted > created {
                if let Some(core) = weak.upgrade() {
                    core.wake.notify_one();
                }
            }
        })
    }

    /// In one txn: is our key (incarnation `rev`) still there, and which key is right before it?
    async fn predecessor(&self, rev: i64) -> Result<Pred> {
        let options = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(rev - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1)
            .with_keys_only();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.as_str(),
                CompareOp::Equal,
                rev,
            )])
            .and_then([TxnOp::get(self.range.as_str(), Some(options))]);
        let resp = self.txn("waiting for the lock", txn).await?;
        if !resp.succeeded() {
            return Err(self.canceled());
        }
        Ok(range(&resp, 0).into_iter().next())
    }

    async fn wait_for_wake(&self, rev: i64) -> Result<()> {
        let notified = self.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.session.ended().is_some() || self.state().deleted_at > rev {
            return Err(self.canceled());
        }
        notified.await;
        Ok(())
    }

    /// One acquisition attempt: checks, waits for an earlier attempt's cleanup, watches our key,
    /// runs `op`, and abandons (removing our key) if `op` fails or is dropped.
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
        attempt.finished = true;
        if result.is_err() {
            self.abandon();
            self.finish_cleanup().await;
        }
        result
    }

    async fn try_acquire(&self) -> Result<Option<Held>> {
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.range.as_str(), CompareOp::Equal, 0).with_prefix(),
            ])
            .and_then([self.put_own_key()]);
        let resp = self.txn("trying the lock", txn).await?;
        if !resp.succeeded() {
            let mut st = self.state();
            st.phase = Phase::Idle;
            st.own = None;
            return Ok(None);
        }
        self.set_rev(header_revision(&resp))?;
        self.grant().map(Some)
    }

    /// Back to Idle, removing our key in the background (awaited by the next attempt).
    fn abandon(&self) {
        let mut st = self.state();
        if st.phase == Phase::Held {
            self.signal.fire();
        }
        st.phase = Phase::Idle;
        st.own = None;
        if self.session.ended().is_some() {
            return; // the lease is revoked or expiring: the key goes with it
        }
        let (mut kv, key, session, limit) = (
            self.kv(),
            self.key.clone(),
            self.session.clone(),
            self.limit(),
        );
        let task = self.session.service.runtime.spawn(async move {
            while session.ended().is_none() {
                match tokio::time::timeout(limit, kv.delete(key.as_str(), None)).await {
                    Ok(Ok(_)) => return,
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        st.cleanup = Some(task);
    }
}

/// A locker of the `etcd:` backend; see [`lock_core::Locker`].
pub struct EtcdLocker {
    core: Arc<LockerCore>,
}

impl EtcdLocker {
    pub(crate) fn new(serial: u64, id: &str, session: Arc<SessionCore>) -> Self {
        let prefix = &session.service.config.prefix;
        let range = keys::id_prefix(prefix, id);
        let key = keys::locker_key(&range, session.lease, serial);
        EtcdLocker {
            core: Arc::new(LockerCore {
                serial,
                id: id.to_owned(),
                invalid_id: lock_core::validate_id(id).err().map(|e| match e {
                    Error::InvalidId(reason) => reason,
                    other => other.to_string(),
                }),
                range,
                key,
                session,
                signal: Arc::new(Signal::new()),
                state: Mutex::new(State::default()),
                wake: Notify::new(),
            }),
        }
    }

    pub(crate) fn weak(&self) -> Weak<LockerCore> {
        Arc::downgrade(&self.core)
    }

    pub(crate) fn core(&self) -> &LockerCore {
        &self.core
    }

    fn span(&self, op: &'static str) -> tracing::Span {
        tracing::debug_span!("lock_etcd", op, id = %self.core.id, lease = format_args!("{:016x}", self.core.session.lease))
    }

    /// The etcd key this locker creates when it locks.
    pub fn key(&self) -> &str {
        &self.core.key
    }
}

/// Abandons the attempt if `lock()`/`try_lock()` is dropped before it finished.
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

impl Locker for EtcdLocker {
    fn lock(&self) -> OpFuture<'_, Result<Held>> {
        let span = self.span("lock");
        OpFuture::boxed(Instrument::instrument(
            async move {
                let core = &self.core;
                core.attempt(|| async {
                    match core.session.timeout {
                        None => core.acquire().await,
                        Some(limit) => tokio::time::timeout(limit, core.acquire())
                            .await
                            .unwrap_or(Err(Error::Timeout(limit))),
                    }
                })
                .await
            },
            span,
        ))
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Held>>> {
        let span = self.span("try_lock");
        OpFuture::boxed(Instrument::instrument(
            async move {
                let core = &self.core;
                core.attempt(|| core.try_acquire()).await
            },
            span,
        ))
    }

    fn unlock(&self) -> OpFuture<'_, Result<()>> {
        let span = self.span("unlock");
        OpFuture::boxed(Instrument::instrument(
            async move {
                let core = &self.core;
                core.session.check_open()?;
                let rev = {
                    let mut st = core.state();
                    if st.phase != Phase::Held {
                        return Err(Error::NotHeld);
                    }
                    st.phase = Phase::Idle;
                    st.own = None;
                    core.signal.fire();
                    st.rev
                };
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        core.key.as_str(),
                        CompareOp::Equal,
                        rev,
                    )])
                    .and_then([TxnOp::delete(core.key.as_str(), None)]);
                tracing::debug!(id = %core.id, token = rev, "unlocking");
                match core.txn("releasing the lock", txn).await {
                    Ok(resp) if resp.succeeded() => Ok(()),
                    Ok(_) => Err(Error::NotHeld),
                    Err(e) => {
                        core.abandon(); // keep trying in the background
                        Err(e)
                    }
                }
            },
            span,
        ))
    }

    fn id(&self) -> &str {
        &self.core.id
    }
}

impl Drop for EtcdLocker {
    fn drop(&mut self) {
        let phase = self.core.state().phase;
        if phase != Phase::Idle {
            self.core.abandon();
        }
        self.core.session.forget_locker(self.core.serial);
    }
}

impl fmt::Debug for EtcdLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLocker")
            .field("id", &self.core.id)
            .field("key", &self.core.key)
            .field("phase", &self.core.state().phase)
            .finish()
    }
}

fn header_revision(resp: &TxnResponse) -> i64 {
    resp.header().map_or(0, |h| h.revision())
}

/// The (key, create revision) pairs of the `n`th response of a txn, if it was a get.
fn range(resp: &TxnResponse, n: usize) -> Vec<(String, i64)> {
    match resp.op_responses().into_iter().nth(n) {
        Some(TxnOpResponse::Get(get)) => get
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.create_revision(),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}
