//! The election recipe: the lock recipe (`crate::locker`) whose key holds the candidate's value,
//! in the layout of etcd's Go `concurrency.Election` (and `etcdctl elect`).
//!
//! An election named `N` is the queue of lock id `N`: keys `<prefix><encoded N>/…`, ordered by
//! create revision; the first key leads, its value is the leader's value, its create revision
//! the term's fencing token. Go's `Election` with prefix `<prefix>N` uses the same range the
//! same way, so each side waits for the other's candidates, sees the other's leader and value,
//! and is elected when the other resigns.
//!
//! - **campaign**: the lock recipe's `lock()`, with the proposed value as the key's value (one
//!   wake-up per handover, no reads of the queue; the lock-delay after a leader that vanished
//!   without resigning).
//! - **proclaim**: one txn puts the new value on our key if its create revision is still our
//!   term's (Go's `Proclaim`).
//! - **leader**: one read of the range's first key by create revision (Go's `Leader`).
//! - **observe**: like Go's `Observe`, a read of the first key, then a watch on the range from
//!   that revision: a put on the leader's key is a new value, a put while nobody leads is a new
//!   leader, the leader's delete is followed by one read of the first key *at that revision*
//!   (its successor, or nobody). Every change is published once, in revision order. A watch
//!   that breaks is opened again from the last revision handled; only if etcd compacted that
//!   history away (a watch broken for long) is the observer told the state it finds then.
//!
//! etcd's view of who leads is the first key, as for Go's recipe: after a leader vanished
//! without resigning (its lease revoked), `leader()` and observers name its successor at once,
//! while the successor's `campaign()` returns only after the lock-delay.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    WatchOptions,
};
use lock_core::backend::{self, Hold, OpFuture, Publisher};
use lock_core::{Error, Leader, Observer, Result};

use crate::error::request;
use crate::keys::IdKeys;
use crate::locker::EtcdLocker;
use crate::session::SessionCore;

/// A party of an election of the `etcd:` backend; see [`lock_core::backend::Election`].
pub struct EtcdElection {
    locker: EtcdLocker,
}

/// The first key of the queue: its name, create revision and value.
type First = Option<(Vec<u8>, i64, Vec<u8>)>;

impl EtcdElection {
    pub(crate) fn new(locker: EtcdLocker) -> Self {
        EtcdElection { locker }
    }

    /// The locker whose holds are this party's terms.
    pub fn locker(&self) -> &EtcdLocker {
        &self.locker
    }

    fn session(&self) -> &Arc<SessionCore> {
        self.locker.core().session()
    }
}

/// Where an election's state is read: the cluster, the election's keys, the request timeout.
struct Source {
    client: etcd_client::Client,
    keys: IdKeys,
    limit: Duration,
}

impl Source {
    fn of(locker: &EtcdLocker) -> Self {
        let service = &locker.core().session().service;
        Source {
            client: service.client.clone(),
            keys: locker.core().keys().clone(),
            limit: service.config.request_timeout,
        }
    }

    /// The first key of the queue by create revision, at revision `at` (now if 0), and the
    /// revision read at.
    async fn first(&self, at: i64) -> Result<(First, i64)> {
        let mut options = GetOptions::new()
            .with_range(self.keys.end.to_vec())
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        if at > 0 {
            options = options.with_revision(at);
        }
        let (kv, range) = (self.client.kv_client(), self.keys.range.clone());
        let resp = request("reading the election's leader", self.limit, || {
            let (mut kv, options, range) = (kv.clone(), options.clone(), range.clone());
            async move { kv.get(range.as_bytes(), Some(options)).await }
        })
        .await?;
        let rev = resp.header().map_or(at, |h| h.revision());
        let first = resp
            .kvs()
            .first()
            .map(|kv| (kv.key().to_vec(), kv.create_revision(), kv.value().to_vec()));
        Ok((first, rev))
    }
}

fn leader_of(first: &First) -> Option<Leader> {
    first
        .as_ref()
        .map(|(_, created, value)| Leader::new(value.clone(), *created as u64))
}

/// Publishes each change of the election `keys` until the observer is gone or the session
/// ends.
async fn observe(
    source: Source,
    session: Arc<SessionCore>,
    publisher: Publisher,
    mut last: Option<Leader>,
    mut current: First,
    mut rev: i64,
) {
    let session_done = backend::done(
        session.end_signal.clone(),
        0,
        Some(session.deadline.clone()),
    );
    tokio::pin!(session_done);
    let publish = |now: Option<Leader>, last: &mut Option<Leader>| {
        if now != *last {
            publisher.publish(now.clone());
            *last = now;
        }
    };
    let Source {
        client,
        keys,
        limit,
    } = &source;
    let mut backoff = Duration::from_millis(50);
    let mut compacted = false;
    loop {
        let watch = async {
            let options = WatchOptions::new()
                .with_range(keys.end.to_vec())
                .with_start_revision(rev + 1);
            let limit = *limit;
            let (watch, range) = (client.watch_client(), keys.range.clone());
            let stream = request("watching the election", limit, || {
                let (mut watch, options, range) = (watch.clone(), options.clone(), range.clone());
                async move { watch.watch(range.as_bytes(), Some(options)).await }
            });
            let mut stream = stream.await?;
            while let Some(resp) = stream
                .message()
                .await
                .map_err(|e| Error::backend_transient(crate::SERVICE_ETCD, e))?
            {
                if resp.compact_revision() > 0 {
                    compacted = true;
                }
                if resp.canceled() || compacted {
                    break;
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let is_leader = current.as_ref().is_some_and(|(key, created, _)| {
                        key == kv.key() && *created == kv.create_revision()
                    });
                    match event.event_type() {
                        EventType::Put if is_leader || current.is_none() => {
                            current = Some((
                                kv.key().to_vec(),
                                kv.create_revision(),
                                kv.value().to_vec(),
                            ));
                        }
                        EventType::Delete
                            if current.as_ref().is_some_and(|(key, _, _)| key == kv.key()) =>
                        {
                            current = source.first(kv.mod_revision()).await?.0;
                        }
                        _ => {
                            rev = rev.max(kv.mod_revision());
                            continue;
                        }
                    }
                    rev = rev.max(kv.mod_revision());
                    publish(leader_of(&current), &mut last);
                }
                backoff = Duration::from_millis(50);
            }
            Ok::<(), Error>(())
        };
        tokio::select! {
            () = publisher.closed() => return,
            () = &mut session_done => {
                publisher.fail(Error::Canceled("the observer's session ended".into()));
                return;
            }
            outcome = watch => {
                if let Err(e) = outcome {
                    tracing::debug!(range = %keys.range, error = %e, "the election's watch broke; opening it again");
                }
            }
        }
        // Pause before the watch is opened again.
        tokio::select! {
            () = publisher.closed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
        // The watch goes on from the last revision handled; only if etcd compacted that
        // history away does it start again from what etcd holds now.
        if compacted {
            if let Ok((now, at)) = source.first(0).await {
                (current, rev, compacted) = (now, at, false);
                publish(leader_of(&current), &mut last);
            }
        }
    }
}

impl backend::Locker for EtcdElection {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        self.locker.lock()
    }
    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        self.locker.try_lock()
    }
    fn unlock(&self, token: u64) -> OpFuture<'_, Result<()>> {
        self.locker.unlock(token)
    }
    fn release(&self, token: u64) {
        self.locker.release(token);
    }
    fn id(&self) -> &str {
        self.locker.id()
    }
    fn party(&self) -> &backend::Party {
        self.locker.party()
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(&self.locker)
    }
}

impl backend::Election for EtcdElection {
    fn propose(&self, value: Vec<u8>) {
        self.locker.core().set_value(value);
    }

    fn proclaim(&self, token: u64, value: Vec<u8>) -> OpFuture<'_, Result<()>> {
        OpFuture::boxed(async move {
            let core = self.locker.core();
            self.session().check_open()?;
            if core.held_token() != Some(token) {
                return Err(Error::NotHeld);
            }
            let key = core.key();
            let txn = Txn::new()
                .when([Compare::create_revision(
                    key,
                    CompareOp::Equal,
                    token as i64,
                )])
                .and_then([TxnOp::put(
                    key,
                    value.clone(),
                    Some(PutOptions::new().with_ignore_lease()),
                )]);
            let resp = core.txn("proclaiming the leader's value", txn).await?;
            if !resp.succeeded() {
                return Err(Error::NotHeld);
            }
            core.set_value(value);
            Ok(())
        })
    }

    fn leader(&self) -> OpFuture<'_, Result<Option<Leader>>> {
        OpFuture::boxed(async move {
            let (first, _) = Source::of(&self.locker).first(0).await?;
            Ok(leader_of(&first))
        })
    }

    fn observe(&self) -> OpFuture<'_, Result<Observer>> {
        OpFuture::boxed(async move {
            let session = self.session().clone();
            session.check_open()?;
            let source = Source::of(&self.locker);
            let (current, rev) = source.first(0).await?;
            let (publisher, observer) = Observer::channel();
            let now = leader_of(&current);
            publisher.publish(now.clone());
            let runtime = session.service.runtime.clone();
            runtime.spawn(observe(source, session, publisher, now, current, rev));
            Ok(observer)
        })
    }

    fn into_locker(self: Arc<Self>) -> Arc<dyn backend::Locker> {
        self
    }
}

impl fmt::Debug for EtcdElection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdElection")
            .field("locker", &self.locker)
            .finish()
    }
}
