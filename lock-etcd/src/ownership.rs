//! Key ownership, the layer every recipe stands on: one key a locker owns (and its lock-delay
//! record), bound to its session's lease.
//!
//! - **put**: the ops that put the key (bound to the lease a put should use now) and its record
//!   ([`OwnedKey::puts`]); a request that may create the key runs to its end in a task of its
//!   own even if the attempt awaiting it is dropped, and what it created is written down
//!   ([`OwnedKey::start_put`], [`OwnedKey::finish_put`]), so that a removal or a lease move
//!   never guesses;
//! - **move**: the key follows its session to a fresh lease, after the put in flight landed;
//! - **guarded delete**: only the incarnation meant, by its create revision (`crate::own`);
//! - **background removal**: retried until etcd confirms it, written down for the exit flush
//!   (`crate::exit`), and waited for by the next put ([`Incarnations::removing`]).
//!
//! What changes (the removals in progress, the put in flight) is an [`Incarnations`] the
//! recipe keeps under its own lock, so that a change of the recipe's state and of the key's
//! ownership is one step (a hold that ends and the removal of its key, for example).

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, KvClient, PutOptions, Txn, TxnOp, TxnResponse};
use lock_core::{Error, Result};
use tokio::sync::Notify;

use crate::own::{release, remove, Removal};
use crate::session::SessionCore;

/// A key a locker owns, and its lock-delay record: what does not change.
pub(crate) struct OwnedKey {
    pub(crate) key: String,
    /// The lock-delay record and its value; `None` with `lock-delay=0`.
    pub(crate) record: Option<(Vec<u8>, String)>,
    pub(crate) session: Arc<SessionCore>,
    /// Notified whenever one of the removals finishes.
    cleaned: Arc<Notify>,
    /// The key's value for a recipe that publishes one (an election candidate's); `None`: who
    /// took the key, for people reading the keys.
    value: Mutex<Option<Vec<u8>>>,
}

/// What changes of a key's ownership; kept under the recipe's lock.
#[derive(Default)]
pub(crate) struct Incarnations {
    /// Removals of earlier incarnations (after an abandoned attempt or an unlock that did not
    /// finish), each until it has finished; the next put waits for all of them. They stay
    /// listed while anyone waits: a wait that is dropped (a timed-out `lock()`) must not make
    /// the next attempt skip them.
    cleanups: Vec<Arc<AtomicBool>>,
    /// The put (or try txn) of the current attempt, which runs to its end even if the attempt
    /// is dropped: the removal of an abandoned attempt waits for its outcome.
    put: Option<Arc<PutOutcome>>,
}

impl Incarnations {
    /// Whether a removal of an earlier incarnation is still in progress.
    pub(crate) fn removing(&mut self) -> bool {
        self.cleanups.retain(|done| !done.load(SeqCst));
        !self.cleanups.is_empty()
    }

    /// The put in flight, for a move to wait for.
    pub(crate) fn put(&self) -> Option<Arc<PutOutcome>> {
        self.put.clone()
    }

    /// Forgets the put of an attempt that is over (a new one starts afresh).
    pub(crate) fn new_attempt(&mut self) {
        self.put = None;
    }
}

/// What a put of the key created: it runs in a task of its own, so that an attempt dropped
/// while the put is in flight does not leave the removal guessing. Reading the key at once
/// would miss a put that lands a moment later, and that key would then queue (or hold) for
/// the session's whole life.
#[derive(Default)]
pub(crate) struct PutOutcome {
    /// `None` while in flight; then the create revision of the incarnation it made or found,
    /// or `Some(None)` if it made none or its outcome is unknown (the removal then reads).
    created: Mutex<Option<Option<i64>>>,
    done: Notify,
}

impl PutOutcome {
    fn finish(&self, created: Option<i64>) {
        let mut slot = self.created.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(created);
        drop(slot);
        self.done.notify_waiters();
    }

    /// Waits for the put's outcome: the create revision it made or found, if known.
    pub(crate) async fn created(&self) -> Option<i64> {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if let Some(created) = *self.created.lock().unwrap_or_else(|e| e.into_inner()) {
                return created;
            }
            done.await;
        }
    }
}

/// Finishes a [`PutOutcome`] as "unknown" if its task ends without an answer (it panicked, or
/// its runtime shut down).
struct PutDone(Arc<PutOutcome>);

impl Drop for PutDone {
    fn drop(&mut self) {
        self.0.finish(None);
    }
}

/// How long the first try of a background removal may take before it is sent again.
const REMOVAL_TRY: Duration = Duration::from_millis(500);

/// How long a removal goes on trying after its session ended.
const REMOVE_AFTER_END: Duration = Duration::from_secs(60);

/// Marks a removal finished and wakes whoever waits for it, when the removal task ends.
struct Finished(Arc<AtomicBool>, Arc<Notify>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
        self.1.notify_waiters();
    }
}

impl OwnedKey {
    pub(crate) fn new(
        key: String,
        record: Option<(Vec<u8>, String)>,
        session: Arc<SessionCore>,
    ) -> Self {
        OwnedKey {
            key,
            record,
            session,
            cleaned: Arc::new(Notify::new()),
            value: Mutex::new(None),
        }
    }

    /// Sets the value the next put of the key writes.
    pub(crate) fn set_value(&self, value: Vec<u8>) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    }

    pub(crate) fn kv(&self) -> KvClient {
        self.session.service.client.kv_client()
    }

    /// The request timeout.
    pub(crate) fn limit(&self) -> Duration {
        self.session.service.config.request_timeout
    }

    /// Sends a txn (again while the cluster is unavailable: every txn of the recipes is
    /// idempotent).
    pub(crate) async fn txn(&self, context: &'static str, txn: Txn) -> Result<TxnResponse> {
        let kv = self.kv();
        self.session
            .service
            .write(context, || {
                let (mut kv, txn) = (kv.clone(), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await
    }

    /// Notified whenever a removal finishes: enable it, then check
    /// [`Incarnations::removing`] under the recipe's lock, then await it.
    pub(crate) fn cleaned(&self) -> &Notify {
        &self.cleaned
    }

    /// Starts a put of the key: notes it as in flight and returns the lease it must bind to.
    /// Called under the recipe's lock, which a lease move reads after it chose its fresh lease:
    /// either the move sees this put (and waits for it), or this put binds to the fresh lease.
    pub(crate) fn start_put(&self, inc: &mut Incarnations) -> (Arc<PutOutcome>, i64) {
        let outcome = Arc::new(PutOutcome::default());
        inc.put = Some(outcome.clone());
        (outcome, self.session.lease_for_put())
    }

    /// Runs `put` (started with [`start_put`](OwnedKey::start_put)) to its end in a task of
    /// its own, even if the attempt awaiting it is dropped, and records what it created
    /// (`created` reads that from its answer).
    pub(crate) async fn finish_put<T, Fut>(
        &self,
        outcome: Arc<PutOutcome>,
        created: fn(&T) -> Option<i64>,
        put: Fut,
    ) -> Result<T>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let task = self.session.service.runtime.spawn(async move {
            let done = PutDone(outcome);
            let result = put.await;
            done.0.finish(result.as_ref().ok().and_then(created));
            result
        });
        task.await.unwrap_or_else(|e| {
            Err(Error::Canceled(format!(
                "the request taking the lock did not finish: {e}"
            )))
        })
    }

    /// The ops that put the key (bound to `lease`, reporting what it replaced) and the record.
    pub(crate) fn puts(&self, lease: i64) -> Vec<TxnOp> {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let value = self.value.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let value = value.unwrap_or_else(|| {
            format!("{} since={since}", self.session.service.owner).into_bytes()
        });
        let options = PutOptions::new().with_lease(lease).with_prev_key();
        let mut ops = vec![TxnOp::put(self.key.as_str(), value, Some(options))];
        if let Some((record, value)) = &self.record {
            ops.push(TxnOp::put(record.clone(), value.as_str(), None));
        }
        ops
    }

    /// Binds the key, if it exists and is bound to lease `from`, to lease `to` (the session
    /// moves to a fresh lease), after `put` (the one in flight, if any) has landed. A put on an
    /// existing key keeps its create revision: the queue order and the fencing token stay.
    pub(crate) async fn move_to(
        &self,
        put: Option<Arc<PutOutcome>>,
        from: i64,
        to: i64,
        limit: Duration,
        per_try: Duration,
    ) -> Result<()> {
        if let Some(put) = put {
            put.created().await;
        }
        let key = self.key.as_str();
        let txn = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, from)])
            .and_then([TxnOp::put(
                key,
                "",
                Some(PutOptions::new().with_lease(to).with_ignore_value()),
            )]);
        let kv = self.kv();
        let context = "moving the lock's key to the session's fresh lease";
        self.session
            .service
            .write_in_tries(context, limit, per_try, || {
                let (mut kv, txn) = (kv.clone(), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await
            .map(drop)
    }

    /// Deletes the incarnation of the key created at `rev`, and only that one, with the
    /// record: a delete sent earlier and given up on can still land after the key was put
    /// again, so an unguarded one could remove a newer hold's key. `Ok(false)`: that
    /// incarnation was gone already (its record, if left, goes now).
    pub(crate) async fn delete(&self, context: &'static str, rev: i64) -> Result<bool> {
        let record = self.record.as_ref().map(|(record, _)| record.as_slice());
        let resp = self.txn(context, release(&self.key, record, rev)).await?;
        Ok(resp.succeeded())
    }

    /// Removes the incarnation of the key created at `rev` (`0`: whichever exists now, if any,
    /// after the put in flight landed) and the record, in the background, retrying until etcd
    /// confirms it: while the session lives, and for [`REMOVE_AFTER_END`] once it ended (its
    /// lease takes the key with it, but not the record, which keeps others waiting out a
    /// lock-delay until it goes). The next put waits for it ([`Incarnations::removing`]).
    pub(crate) fn remove_later(&self, inc: &mut Incarnations, rev: i64) -> Removal {
        let done = Arc::new(AtomicBool::new(false));
        let removal = Removal(done.clone(), self.cleaned.clone());
        if self.session.ended().is_some() && self.record.is_none() {
            done.store(true, SeqCst);
            return removal; // the lease is revoked or expiring: the key goes with it
        }
        let (kv, key, record, session, put) = (
            self.kv(),
            self.key.clone(),
            self.record.as_ref().map(|(record, _)| record.clone()),
            self.session.clone(),
            inc.put.take().filter(|_| rev == 0),
        );
        // Short tries at first: every delete is guarded, so one that lands late is harmless,
        // and a connection that went silent (a partition that healed) costs little. Each try
        // that times out doubles the next one's time, up to `request-timeout`: a slow network
        // that works still gets its answer.
        let (limit, mut per_try) = (self.limit(), self.limit().min(REMOVAL_TRY));
        let finished = Finished(done.clone(), self.cleaned.clone());
        // Written down until it finishes: if the runtime stops first, the exit flush removes it.
        let debts = self.session.service.debts.clone();
        let owed = debts.owe(&key, record.as_deref(), rev);
        self.session.service.runtime.spawn(async move {
            let _finished = finished; // however the task ends
            let mut rev = rev;
            if let Some(put) = put {
                // The attempt's put may still be in flight: remove what it creates.
                rev = put.created().await.unwrap_or(0);
                debts.learnt(owed, rev);
            }
            let mut pause = Duration::from_millis(50);
            let mut ended_at = None;
            loop {
                let attempt = remove(kv.clone(), &key, record.as_deref(), &mut rev);
                match tokio::time::timeout(per_try, attempt).await {
                    Ok(Ok(_)) => return debts.paid(owed),
                    Ok(Err(_)) => {}
                    Err(_) => per_try = (per_try * 2).min(limit),
                }
                if session.ended().is_some() {
                    let since: &mut Instant = ended_at.get_or_insert_with(Instant::now);
                    if record.is_none() || since.elapsed() >= REMOVE_AFTER_END {
                        // The lease takes the key; others end the record's delay.
                        return debts.paid(owed);
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        });
        inc.cleanups.retain(|done| !done.load(SeqCst));
        inc.cleanups.push(done);
        removal
    }
}
