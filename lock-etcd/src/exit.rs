//! What a service owes etcd when the tokio runtime it runs on stops first: a program that
//! returns from `main` (or panics) while it holds locks, or drops every handle of a service
//! without closing it. Sessions and holds ended by dropping hand their keys, records and
//! leases to background tasks; a runtime that stops drops those tasks, and the keys would stay
//! until the lease expired, then the records would keep others waiting out a lock-delay.
//!
//! So every background removal is written down here while it runs (an IOU), and the keeper's
//! loop carries a [`Flush`]: dropped before the loop finished, it pays what is owed — the
//! removals (guarded as usual) and every lease still kept, queued for revoking or being
//! revoked — from a thread of its own, on a fresh connection, within [`EXIT_BUDGET`], and
//! waits for it. (A service dropped without `close()` while the runtime runs aborts the loop
//! too: its queued revokes, which the abort used to lose, are paid the same way.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::EtcdConfig;
use crate::own::remove;

/// The longest the exit flush may hold up the thread that dropped the keeper's loop (the
/// runtime's shutdown, or a service dropped unclosed with work pending): connecting, the
/// removals and the revokes together. Against a cluster that answers it takes a few
/// milliseconds.
pub(crate) const EXIT_BUDGET: Duration = Duration::from_secs(1);

/// The background removals of a service that have not finished.
#[derive(Debug, Default)]
pub(crate) struct Debts {
    next: AtomicU64,
    removals: Mutex<HashMap<u64, Owed>>,
}

#[derive(Debug, Clone)]
struct Owed {
    key: String,
    record: Option<Vec<u8>>,
    /// The incarnation to remove (`0`: whichever exists).
    rev: i64,
}

impl Debts {
    fn removals(&self) -> MutexGuard<'_, HashMap<u64, Owed>> {
        self.removals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes down a removal of `key` (created at `rev`) and `record`; returns its number.
    pub(crate) fn owe(&self, key: &str, record: Option<&[u8]>, rev: i64) -> u64 {
        let id = self.next.fetch_add(1, Relaxed);
        let (key, record) = (key.to_owned(), record.map(<[u8]>::to_vec));
        self.removals().insert(id, Owed { key, record, rev });
        id
    }

    /// The removal numbered `id` learnt which incarnation it removes.
    pub(crate) fn learnt(&self, id: u64, rev: i64) {
        if let Some(owed) = self.removals().get_mut(&id) {
            owed.rev = rev;
        }
    }

    /// The removal numbered `id` finished (or gave up: the lease takes its key).
    pub(crate) fn paid(&self, id: u64) {
        self.removals().remove(&id);
    }
}

/// Carried by the keeper's loop: pays what the service owes if the loop is dropped before it
/// finished (see the module's docs).
pub(crate) struct Flush {
    /// The leases owed (the keeper's: kept, queued for revoking, being revoked).
    pub(crate) leases: Box<dyn Fn() -> Vec<i64> + Send>,
    pub(crate) debts: Arc<Debts>,
    pub(crate) config: EtcdConfig,
    /// The loop ended by itself (the service closed): nothing is owed that it did not pay.
    pub(crate) finished: bool,
}

impl Drop for Flush {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let leases = (self.leases)();
        let removals: Vec<Owed> = self.debts.removals().drain().map(|(_, o)| o).collect();
        if leases.is_empty() && removals.is_empty() {
            return;
        }
        let config = self.config.clone();
        let paying = std::thread::Builder::new()
            .name("lock-etcd-exit".into())
            .spawn(move || pay(&config, &leases, &removals));
        // Joined: the process may be about to exit. Bounded by `EXIT_BUDGET`.
        if let Ok(paying) = paying {
            let _ = paying.join();
        }
    }
}

/// Removes `removals` and revokes `leases` on a connection of its own, within `EXIT_BUDGET`.
fn pay(config: &EtcdConfig, leases: &[i64], removals: &[Owed]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let mut config = config.clone();
    config.dial_timeout = config.dial_timeout.min(EXIT_BUDGET / 2);
    let paying = async {
        let (client, _probes) = crate::connect::connect(&config).await.ok()?;
        // All at once: each removal and each revoke is a commit, and commits are what is slow
        // on a busy cluster. In any order: a revoke that lands before its key's removal takes
        // the key, and the guarded removal then deletes the record alone.
        let mut paying = tokio::task::JoinSet::new();
        for owed in removals.iter().cloned() {
            let kv = client.kv_client();
            paying.spawn(async move {
                let mut rev = owed.rev;
                let removing = remove(kv, &owed.key, owed.record.as_deref(), &mut rev);
                (true, removing.await.is_ok())
            });
        }
        for &lease in leases {
            let mut leases_client = client.lease_client();
            paying.spawn(async move { (false, leases_client.revoke(lease).await.is_ok()) });
        }
        let (mut removed, mut revoked) = (0, 0);
        while let Some(paid) = paying.join_next().await {
            match paid {
                Ok((true, true)) => removed += 1,
                Ok((false, true)) => revoked += 1,
                _ => {}
            }
        }
        Some((removed, revoked))
    };
    // The timer is made inside the runtime (it needs its driver).
    let paid = runtime.block_on(async { tokio::time::timeout(EXIT_BUDGET, paying).await });
    match paid {
        Ok(Some((removed, revoked))) => tracing::debug!(
            removed,
            revoked,
            "the runtime stopped first: removed the keys and records and revoked the leases owed"
        ),
        _ => tracing::warn!(
            "the runtime stopped first, and etcd could not be reached within {EXIT_BUDGET:?}: \
             locks held end with their leases' TTL and lock-delay"
        ),
    }
}
