//! One watch per service over the whole lock prefix, serving two kinds of interest:
//!
//! - **key deletions**: a holder registers its key (deleted behind its back means the lock is
//!   lost) and a waiter its own key (deleted means its attempt is over);
//! - **queues**: while a local locker waits for an id, the hub mirrors that id's keys, ordered
//!   by create revision, from one snapshot read plus the watch's puts and deletes. When the
//!   first key changes, the waiter that owns the new first key is woken, and nobody else: a
//!   release costs one delete on the wire and one wake-up here, with no read to confirm it
//!   (the mirror is etcd's state at the event's revision).
//!
//! The watch starts at "now", so etcd keeps it in its synced group (no 100 ms catch-up
//! batches). Whoever registers interest in a key must check the key afterwards: a deletion
//! before registration is seen by that check, one after it by the watch. When the watch is
//! re-created after a connection loss, every registered key is checked again and every queue is
//! read again, so nothing slips through the gap.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use etcd_client::{Event, EventType, GetOptions, WatchOptions};
use tokio::task::JoinHandle;

use crate::error::{once, request};

/// Called with the revision at which the key was deleted (or seen absent).
type Callback = Arc<dyn Fn(i64) + Send + Sync>;

/// Wakes a waiting locker.
pub(crate) type Wake = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
pub(crate) struct Hub {
    state: Mutex<State>,
    link: OnceLock<Link>,
    wakeups: AtomicU64,
    loads: AtomicU64,
}

/// What loading a queue needs.
struct Link {
    client: etcd_client::Client,
    limit: Duration,
}

#[derive(Default)]
struct State {
    next: u64,
    interests: HashMap<String, Vec<(u64, Callback)>>,
    /// Mirrored ids, by key range (`<prefix><encoded id>/`).
    queues: HashMap<String, Queue>,
    generation: u64,
}

/// The keys of one id, as etcd holds them at the revisions the watch delivered.
struct Queue {
    users: usize,
    load: Load,
    by_rev: BTreeMap<i64, String>,
    by_key: HashMap<String, i64>,
    /// Local waiters by key: the create revision they wait with and how to wake them.
    waiters: HashMap<String, (i64, Wake)>,
    /// The create revision of the first key whose waiter was last woken.
    woken: i64,
}

enum Load {
    /// Not mirrored: the lockers using the queue have not needed it yet.
    Idle,
    /// A snapshot read is on its way; changes seen meanwhile wait here.
    Loading {
        generation: u64,
        buffer: Vec<Change>,
    },
    /// Mirrors etcd: the snapshot was read at `since`; later changes are applied.
    Ready { since: i64 },
    /// The snapshot read failed: waiters report this and the next one reads again.
    Failed(String),
}

enum Change {
    Put {
        key: String,
        created: i64,
        revision: i64,
    },
    Delete {
        key: String,
        revision: i64,
    },
}

impl Change {
    fn revision(&self) -> i64 {
        match self {
            Change::Put { revision, .. } | Change::Delete { revision, .. } => *revision,
        }
    }
}

impl Queue {
    fn new() -> Self {
        Queue {
            users: 0,
            load: Load::Idle,
            by_rev: BTreeMap::new(),
            by_key: HashMap::new(),
            waiters: HashMap::new(),
            woken: 0,
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Put { key, created, .. } => {
                if let Some(old) = self.by_key.insert(key.clone(), created) {
                    if old == created {
                        return; // a value update of a key we know
                    }
                    self.by_rev.remove(&old);
                }
                self.by_rev.insert(created, key);
            }
            Change::Delete { key, .. } => {
                if let Some(created) = self.by_key.remove(&key) {
                    self.by_rev.remove(&created);
                }
            }
        }
    }

    /// Applies a change seen by the watch (or keeps it until the snapshot arrives).
    fn observe(&mut self, change: Change) {
        match &mut self.load {
            Load::Loading { buffer, .. } => buffer.push(change),
            Load::Ready { since } if change.revision() > *since => self.apply(change),
            Load::Ready { .. } | Load::Idle | Load::Failed(_) => {}
        }
    }

    /// The waiter owning the first key, if it was not woken for that key yet.
    fn head_waiter(&mut self) -> Option<Wake> {
        if !matches!(self.load, Load::Ready { .. }) {
            return None;
        }
        let (&created, key) = self.by_rev.first_key_value()?;
        if created == self.woken {
            return None;
        }
        let (rev, wake) = self.waiters.get(key)?;
        if *rev != created {
            return None;
        }
        self.woken = created;
        Some(wake.clone())
    }

    fn reload(&mut self, generation: u64) {
        self.load = Load::Loading {
            generation,
            buffer: Vec::new(),
        };
        self.by_rev.clear();
        self.by_key.clear();
        self.woken = 0;
    }
}

/// A registration for deletions of one key; dropping it unregisters.
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

/// One locker's use of an id's queue; the queue is mirrored while it has users.
pub(crate) struct QueueUse {
    hub: Arc<Hub>,
    range: String,
    waiting: Option<String>,
}

impl QueueUse {
    /// Wakes `wake` when `key`, created at `rev`, becomes the first key of the queue; starts
    /// mirroring the queue if it is not mirrored yet.
    pub(crate) fn wait(&mut self, key: &str, rev: i64, wake: Wake) {
        let mut st = self.hub.state();
        st.generation += 1;
        let generation = st.generation;
        let Some(queue) = st.queues.get_mut(&self.range) else {
            return;
        };
        queue.waiters.insert(key.to_owned(), (rev, wake));
        self.waiting = Some(key.to_owned());
        if matches!(queue.load, Load::Idle | Load::Failed(_)) {
            queue.reload(generation);
            drop(st);
            tokio::spawn(load(
                Arc::downgrade(&self.hub),
                self.range.clone(),
                generation,
            ));
        }
    }

    /// Whether `key`, created at `rev`, is the first key of the id (so its locker holds the
    /// lock); `Ok(false)` also while the queue is being read.
    ///
    /// # Errors
    ///
    /// When the queue could not be read from etcd.
    pub(crate) fn is_first(&self, key: &str, rev: i64) -> lock_core::Result<bool> {
        let mut st = self.hub.state();
        let Some(queue) = st.queues.get_mut(&self.range) else {
            return Ok(false);
        };
        match &queue.load {
            Load::Ready { .. } => Ok(queue
                .by_rev
                .first_key_value()
                .is_some_and(|(&created, first)| created == rev && first == key)),
            Load::Loading { .. } | Load::Idle => Ok(false),
            Load::Failed(reason) => Err(lock_core::Error::backend(
                crate::SERVICE_ETCD,
                reason.clone(),
            )),
        }
    }
}

impl Drop for QueueUse {
    fn drop(&mut self) {
        let mut st = self.hub.state();
        let Some(queue) = st.queues.get_mut(&self.range) else {
            return;
        };
        if let Some(key) = &self.waiting {
            queue.waiters.remove(key);
        }
        queue.users -= 1;
        if queue.users == 0 {
            st.queues.remove(&self.range);
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

    /// Starts using the queue of `range`. Returns whether the id looks contended from here:
    /// another local locker is taking or waiting for it, or the mirrored queue has keys. Then
    /// a new locker queues with a plain put instead of asking whether the id is free.
    pub(crate) fn join(self: &Arc<Self>, range: &str) -> (QueueUse, bool) {
        let mut st = self.state();
        let queue = st.queues.entry(range.to_owned()).or_insert_with(Queue::new);
        let busy = queue.users > 0
            || match &queue.load {
                Load::Idle => false,
                Load::Ready { .. } => !queue.by_rev.is_empty(),
                Load::Loading { .. } | Load::Failed(_) => true,
            };
        queue.users += 1;
        drop(st);
        let queue = QueueUse {
            hub: self.clone(),
            range: range.to_owned(),
            waiting: None,
        };
        (queue, busy)
    }

    /// How many waiters were woken because their key became the first of its id.
    pub(crate) fn wakeups(&self) -> u64 {
        self.wakeups.load(Relaxed)
    }

    /// How many times a queue was read from etcd.
    pub(crate) fn loads(&self) -> u64 {
        self.loads.load(Relaxed)
    }

    fn install(
        &self,
        range: &str,
        generation: u64,
        result: lock_core::Result<etcd_client::GetResponse>,
    ) {
        let mut st = self.state();
        let Some(queue) = st.queues.get_mut(range) else {
            return;
        };
        let buffer = match &mut queue.load {
            Load::Loading {
                generation: g,
                buffer,
            } if *g == generation => std::mem::take(buffer),
            _ => return, // superseded
        };
        let wakes: Vec<Wake> = match result {
            Ok(resp) => {
                let since = resp.header().map_or(0, |h| h.revision());
                for kv in resp.kvs() {
                    if let Ok(key) = kv.key_str() {
                        queue.apply(Change::Put {
                            key: key.to_owned(),
                            created: kv.create_revision(),
                            revision: since,
                        });
                    }
                }
                queue.load = Load::Ready { since };
                for change in buffer {
                    queue.observe(change);
                }
                queue.head_waiter().into_iter().collect()
            }
            Err(e) => {
                queue.load = Load::Failed(format!("reading the lock's queue: {e}"));
                queue.waiters.values().map(|(_, w)| w.clone()).collect()
            }
        };
        drop(st);
        self.wake(wakes);
    }

    fn wake(&self, wakes: Vec<Wake>) {
        for wake in wakes {
            self.wakeups.fetch_add(1, Relaxed);
            wake();
        }
    }

    /// Delivers one watch response.
    fn deliver(&self, events: &[Event]) {
        let mut deleted: Vec<(Callback, i64)> = Vec::new();
        let mut touched: Vec<&str> = Vec::new();
        let mut st = self.state();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            let revision = kv.mod_revision();
            let is_delete = event.event_type() == EventType::Delete;
            if is_delete {
                if let Some(list) = st.interests.get(key) {
                    deleted.extend(list.iter().map(|(_, c)| (c.clone(), revision)));
                }
            }
            let Some(end) = key.rfind('/') else { continue };
            let range = &key[..=end];
            if let Some(queue) = st.queues.get_mut(range) {
                queue.observe(if is_delete {
                    Change::Delete {
                        key: key.to_owned(),
                        revision,
                    }
                } else {
                    Change::Put {
                        key: key.to_owned(),
                        created: kv.create_revision(),
                        revision,
                    }
                });
                if !touched.contains(&range) {
                    touched.push(range);
                }
            }
        }
        let wakes: Vec<Wake> = touched
            .iter()
            .filter_map(|range| st.queues.get_mut(*range)?.head_waiter())
            .collect();
        drop(st);
        for (callback, revision) in deleted {
            callback(revision);
        }
        self.wake(wakes);
    }

    fn keys(&self) -> Vec<String> {
        self.state().interests.keys().cloned().collect()
    }

    /// The watch broke: every mirror may miss changes until it is read again.
    fn invalidate(&self) {
        let mut st = self.state();
        st.generation += 1;
        let generation = st.generation;
        for queue in st.queues.values_mut() {
            if !matches!(queue.load, Load::Idle) {
                queue.reload(generation);
            }
        }
    }

    /// Reads every queue again (after the watch was re-created).
    fn reload_all(self: &Arc<Self>) {
        let st = self.state();
        for (range, queue) in &st.queues {
            if let Load::Loading { generation, .. } = queue.load {
                tokio::spawn(load(Arc::downgrade(self), range.clone(), generation));
            }
        }
    }

    /// Opens the watch (waiting until etcd confirms it) and spawns the task that keeps it.
    pub(crate) async fn start(
        self: &Arc<Self>,
        client: &etcd_client::Client,
        prefix: &str,
        limit: Duration,
    ) -> lock_core::Result<JoinHandle<()>> {
        let _ = self.link.set(Link {
            client: client.clone(),
            limit,
        });
        let stream = open(client, prefix, limit).await?;
        let (hub, client, prefix) = (Arc::downgrade(self), client.clone(), prefix.to_owned());
        Ok(tokio::spawn(run(hub, client, prefix, limit, stream)))
    }
}

/// Reads the keys of `range` and installs them as its queue's snapshot.
async fn load(hub: Weak<Hub>, range: String, generation: u64) {
    let Some((kv, limit)) = hub.upgrade().and_then(|h| {
        h.loads.fetch_add(1, Relaxed);
        h.link.get().map(|l| (l.client.kv_client(), l.limit))
    }) else {
        return;
    };
    let result = request("reading the lock's queue", limit, || {
        let (mut kv, range) = (kv.clone(), range.clone());
        async move {
            kv.get(
                range.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
        }
    })
    .await;
    if let Some(hub) = hub.upgrade() {
        hub.install(&range, generation, result);
    }
}

async fn open(
    client: &etcd_client::Client,
    prefix: &str,
    limit: Duration,
) -> lock_core::Result<etcd_client::WatchStream> {
    let options = WatchOptions::new().with_prefix();
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
                    hub.deliver(resp.events());
                    backoff = Duration::from_millis(50);
                }
                _ => break,
            }
        }
        // Re-create the watch, then check every registered key and read every queue again.
        tracing::warn!("watch on the lock prefix lost; re-creating it");
        match hub.upgrade() {
            Some(h) => h.invalidate(),
            None => return,
        }
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
            h.invalidate();
            h.reload_all();
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
            async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
        })
        .await?;
        if resp.count() == 0 {
            let revision = resp.header().map_or(0, |h| h.revision());
            let callbacks: Vec<Callback> = match hub.state().interests.get(&key) {
                Some(list) => list.iter().map(|(_, c)| c.clone()).collect(),
                None => continue,
            };
            for callback in callbacks {
                callback(revision);
            }
        }
    }
    Ok(())
}
