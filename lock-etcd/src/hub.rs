//! One watch per service over the whole lock prefix, delivering key deletions to whoever
//! registered interest in a key: holders (their key deleted behind their back means the lock
//! is lost) and waiters (their predecessor's deletion means it may be their turn).
//!
//! The watch starts at "now", so etcd keeps it in its synced group (no 100 ms catch-up
//! batches). Whoever registers interest must check the key afterwards: a deletion before
//! registration is seen by that check, one after it by the watch. When the watch is re-created
//! after a connection loss, every registered key is checked again, so nothing slips through the
//! gap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use etcd_client::{EventType, WatchFilterType, WatchOptions};
use tokio::task::JoinHandle;

use crate::error::{once, request};

/// Called with the revision at which the key was deleted (or seen absent).
type Callback = Arc<dyn Fn(i64) + Send + Sync>;

#[derive(Default)]
pub(crate) struct Hub {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    interests: HashMap<String, Vec<(u64, Callback)>>,
}

/// A registration; dropping it unregisters.
pub(crate) struct Interest {
    hub: Weak<Hub>,
    key: String,
    token: u64,
}

impl Drop for Interest {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            let mut st = hub.state();
            if let Some(list) = st.interests.get_mut(&self.key) {
                list.retain(|(t, _)| *t != self.token);
                if list.is_empty() {
                    st.interests.remove(&self.key);
                }
            }
        }
    }
}

impl Hub {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `callback` whenever `key` is deleted, until the returned [`Interest`] is dropped.
    pub(crate) fn register(
        self: &Arc<Self>,
        key: &str,
        callback: impl Fn(i64) + Send + Sync + 'static,
    ) -> Interest {
        let callback: Callback = Arc::new(callback);
        let mut st = self.state();
        st.next += 1;
        let token = st.next;
        st.interests
            .entry(key.to_owned())
            .or_default()
            .push((token, callback));
        Interest {
            hub: Arc::downgrade(self),
            key: key.to_owned(),
            token,
        }
    }

    fn deleted(&self, key: &str, revision: i64) {
        let callbacks: Vec<Callback> = match self.state().interests.get(key) {
            Some(list) => list.iter().map(|(_, c)| c.clone()).collect(),
            None => return,
        };
        for callback in callbacks {
            callback(revision);
        }
    }

    fn keys(&self) -> Vec<String> {
        self.state().interests.keys().cloned().collect()
    }

    /// Opens the watch (waiting until etcd confirms it) and spawns the task that keeps it.
    pub(crate) async fn start(
        self: &Arc<Self>,
        client: &etcd_client::Client,
        prefix: &str,
        limit: Duration,
    ) -> lock_core::Result<JoinHandle<()>> {
        let stream = open(client, prefix, limit).await?;
        let (hub, client, prefix) = (Arc::downgrade(self), client.clone(), prefix.to_owned());
        Ok(tokio::spawn(run(hub, client, prefix, limit, stream)))
    }
}

async fn open(
    client: &etcd_client::Client,
    prefix: &str,
    limit: Duration,
) -> lock_core::Result<etcd_client::WatchStream> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_filters([WatchFilterType::NoPut]);
    let watch = client.watch_client();
    let mut stream = request("watching the lock prefix", limit, || {
        let (mut watch, options) = (watch.clone(), options.clone());
        async move { watch.watch(prefix, Some(options)).await }
    })
    .await?;
    // The first message confirms the watch.
    match once("watching the lock prefix", limit, stream.message()).await? {
        Some(resp) if resp.created() && !resp.canceled() => Ok(stream),
        Some(resp) => Err(lock_core::Error::backend(
            crate::SERVICE_ETCD,
            format!(
                "etcd refused the watch on the lock prefix: {}",
                resp.cancel_reason()
            ),
        )),
        None => Err(lock_core::Error::backend(
            crate::SERVICE_ETCD,
            "etcd closed the watch on the lock prefix",
        )),
    }
}

async fn run(
    hub: Weak<Hub>,
    client: etcd_client::Client,
    prefix: String,
    limit: Duration,
    mut stream: etcd_client::WatchStream,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // Deliver events until the stream breaks.
        loop {
            match stream.message().await {
                Ok(Some(resp)) if !resp.canceled() => {
                    let Some(hub) = hub.upgrade() else { return };
                    for event in resp.events() {
                        if event.event_type() == EventType::Delete {
                            if let Some(kv) = event.kv() {
                                if let Ok(key) = kv.key_str() {
                                    hub.deleted(key, kv.mod_revision());
                                }
                            }
                        }
                    }
                    backoff = Duration::from_millis(50);
                }
                _ => break,
            }
        }
        // Re-create the watch, then check every registered key once.
        tracing::warn!("watch on the lock prefix lost; re-creating it");
        loop {
            if hub.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            let Ok(s) = open(&client, &prefix, limit).await else {
                continue;
            };
            stream = s;
            let Some(h) = hub.upgrade() else { return };
            if recheck(&h, &client, limit).await.is_ok() {
                break;
            }
        }
    }
}

async fn recheck(
    hub: &Hub,
    client: &etcd_client::Client,
    limit: Duration,
) -> lock_core::Result<()> {
    let kv = client.kv_client();
    for key in hub.keys() {
        let resp = request("checking a lock key", limit, || {
            let (mut kv, key) = (kv.clone(), key.clone());
            async move {
                kv.get(key, Some(etcd_client::GetOptions::new().with_count_only()))
                    .await
            }
        })
        .await?;
        if resp.count() == 0 {
            let revision = resp.header().map_or(0, |h| h.revision());
            hub.deleted(&key, revision);
        }
    }
    Ok(())
}
