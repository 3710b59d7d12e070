//! What a service's sessions and lockers share: its client, configuration, keeper, hub, the
//! writes in flight, and the list of its open sessions. Below the sessions (which keep it) and
//! the service handle (which makes it and closes the sessions).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use lock_core::Result;
use tokio::task::JoinHandle;

use crate::config::EtcdConfig;
use crate::error::request;
use crate::exit::Debts;
use crate::hub::Hub;
use crate::keeper::{EndReason, Keeper};

/// What the service needs of an open session: to close it when the service closes.
pub(crate) trait OpenSession: Send + Sync {
    /// Closes the session for `reason`, revoking its lease and removing its keys.
    fn close_for(&self, reason: EndReason)
        -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>;
}

/// How many writes (lease grants and revokes, lock puts and deletes) one service keeps in
/// flight at most.
pub(crate) const MAX_WRITES_IN_FLIGHT: usize = 64;

pub(crate) struct ServiceCore {
    pub(crate) client: etcd_client::Client,
    pub(crate) config: EtcdConfig,
    pub(crate) hub: Arc<Hub>,
    pub(crate) keeper: Arc<Keeper>,
    /// The background removals not finished yet, which the exit flush pays if the runtime
    /// stops first (see the `exit` module).
    pub(crate) debts: Arc<Debts>,
    pub(crate) runtime: tokio::runtime::Handle,
    /// What each lock key holds: who took it, for people reading the keys.
    pub(crate) owner: String,
    pub(crate) endpoints: Arc<Mutex<BTreeSet<String>>>,
    /// Open sessions; `None` once the service is closed.
    pub(crate) sessions: Mutex<Option<HashMap<u64, Weak<dyn OpenSession>>>>,
    pub(crate) next_key: AtomicU64,
    pub(crate) tasks: Vec<JoinHandle<()>>,
    /// Bounds this service's writes in flight (see [`ServiceCore::write`]).
    pub(crate) writes: tokio::sync::Semaphore,
}

impl ServiceCore {
    pub(crate) fn sessions(&self) -> MutexGuard<'_, Option<HashMap<u64, Weak<dyn OpenSession>>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Relaxed)
    }

    /// Sends a write through [`request`] once one of [`MAX_WRITES_IN_FLIGHT`] slots is free.
    /// Thousands of lockers or sessions starting at once would otherwise push etcd's apply
    /// backlog over its limit, and it would answer `too many requests` to most of them (each
    /// then retries after a backoff); queued here, they reach etcd as fast as it applies them.
    pub(crate) async fn write<T, F, Fut>(&self, context: &'static str, call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let _permit = self.writes.acquire().await.ok();
        request(context, self.config.request_timeout, call).await
    }

    /// [`write`](Self::write) in short tries (`per_try` each) for at most `limit`: for work
    /// racing a session's deadline, where a try stuck on a member that stopped must not use up
    /// the time left.
    pub(crate) async fn write_in_tries<T, F, Fut>(
        &self,
        context: &'static str,
        limit: Duration,
        per_try: Duration,
        call: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let _permit = self.writes.acquire().await.ok();
        crate::error::request_in_tries(context, limit, per_try, call).await
    }

    pub(crate) fn forget_session(&self, key: u64) {
        if let Some(s) = self.sessions().as_mut() {
            s.remove(&key);
        }
    }
}

impl Drop for ServiceCore {
    fn drop(&mut self) {
        self.keeper.stop();
        for task in &self.tasks {
            task.abort();
        }
    }
}
