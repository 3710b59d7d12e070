//! One watch per service over the whole lock prefix, serving two kinds of interest:
//!
//! - **key deletions**: a holder registers its key (deleted behind its back means the lock is
//!   lost) and a waiter its own key (deleted means its attempt is over);
//! - **queues**: while a local locker waits for an id, the hub mirrors that id's keys, ordered
//!   by create revision: one snapshot read, the prefix watch's deletes, and the puts of a
//!   watch on that id alone (opened before the read, closed with the mirror), so a service
//!   receives no put events for ids it does not wait for. When the first key changes, the
//!   waiter that owns the new first key is woken, and nobody else: a release costs one delete
//!   on the wire and one wake-up here; the woken waiter confirms with one small read that
//!   etcd agrees (the mirror can lag behind the cluster), before it takes the lock.
//!
//! The two streams are not ordered with respect to each other, so the mirror orders changes
//! per key by revision (a delete that overtakes its key's put leaves a tombstone), and a waiter
//! counts as first only once its own put is in the mirror: the put stream is ordered, so by
//! then every earlier put of the id has arrived too. A late delete only delays a wake-up.
//!
//! Watches start at "now", so etcd keeps them in its synced group (no 100 ms catch-up
//! batches). Whoever registers interest in a key must check the key afterwards: a deletion
//! before registration is seen by that check, one after it by the watch. When the watch is
//! re-created after a connection loss, every registered key is checked again and every queue is
//! read again, so nothing slips through the gap.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use etcd_client::{Event, EventType, GetOptions, WatchFilterType, WatchOptions};
use tokio::task::{AbortHandle, JoinHandle};

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
    queues: HashMap<Arc<str>, Queue>,
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
    /// The revision of the last change applied per key, deleted keys included (tombstones).
    last: HashMap<String, i64>,
    /// The highest revision the put stream has delivered.
    puts_through: i64,
    /// Tombstones are pruned when `last` grows past this.
    prune_at: usize,
    /// The task that reads the snapshot and then pumps the id's puts, and its generation.
    task: Option<AbortHandle>,
    generation: u64,
}

enum Load {
    /// Not mirrored: the lockers using the queue have not needed it yet.
    Idle,
    /// A snapshot read is on its way; changes seen meanwhile wait here.
    Loading { buffer: Vec<Change> },
    /// Mirrors etcd: the snapshot was read at `since`; later changes are applied.
    Ready { since: i64 },
    /// The snapshot read failed (why, and whether trying again may help): waiters report this
    /// and the next one reads again.
    Failed(String, bool),
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
            last: HashMap::new(),
            puts_through: 0,
            prune_at: 1024,
            task: None,
            generation: 0,
        }
    }

    fn apply(&mut self, change: Change) {
        let (key, revision) = match &change {
            Change::Put { key, revision, .. } | Change::Delete { key, revision } => {
                (key, *revision)
            }
        };
        if self.last.get(key).is_some_and(|&seen| seen >= revision) {
            return; // older than what we know of this key: the other stream was faster
        }
        self.last.insert(key.clone(), revision);
        match change {
            Change::Put { key, created, .. } => {
                self.puts_through = self.puts_through.max(revision);
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
                if self.last.len() > self.prune_at {
                    // A tombstone no later than the put stream's position can go: no put it
                    // must stop is still to come. (Doubling the threshold keeps this O(1)
                    // per change on average.)
                    let (keys, through) = (&self.by_key, self.puts_through);
                    self.last
                        .retain(|k, &mut seen| keys.contains_key(k) || seen > through);
                    self.prune_at = (2 * self.last.len()).max(1024);
                }
            }
        }
    }

    /// Applies a change seen by the watch (or keeps it until the snapshot arrives).
    fn observe(&mut self, change: Change) {
        match &mut self.load {
            Load::Loading { buffer, .. } => buffer.push(change),
            Load::Ready { since } if change.revision() > *since => self.apply(change),
            Load::Ready { .. } | Load::Idle | Load::Failed(..) => {}
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

    /// Forgets the mirror and stops its task; the caller starts a new one (or drops it).
    fn reload(&mut self, generation: u64) {
        self.generation = generation;
        self.load = Load::Loading { buffer: Vec::new() };
        self.by_rev.clear();
        self.by_key.clear();
        self.last.clear();
        self.puts_through = 0;
        self.prune_at = 1024;
        self.woken = 0;
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Starts the task that mirrors `range` for `generation`.
    fn spawn(&mut self, hub: &Arc<Hub>, range: &Arc<str>, generation: u64) {
        let task = tokio::spawn(mirror(Arc::downgrade(hub), range.clone(), generation));
        self.task = Some(task.abort_handle());
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
    range: Arc<str>,
    waiting: Option<String>,
}

impl QueueUse {
    /// Wakes `wake` when `key`, created at `rev`, becomes the first key of the queue; starts
    /// mirroring the queue if it is not mirrored yet.
    pub(crate) fn wait(&mut self, key: &str, rev: i64, wake: Wake) {
        let mut st = self.hub.state();
        let st = &mut *st;
        let Some(queue) = st.queues.get_mut(&self.range) else {
            return;
        };
        queue.waiters.insert(key.to_owned(), (rev, wake));
        self.waiting = Some(key.to_owned());
        if matches!(queue.load, Load::Idle | Load::Failed(..)) {
            st.generation += 1;
            let generation = st.generation;
            queue.reload(generation);
            queue.spawn(&self.hub, &self.range, generation);
        }
    }

    /// Whether `key`, created at `rev`, is the first key of the id (so its locker holds the
    /// lock); `Ok(false)` also while the queue is being read.
    ///
    /// # Errors
    ///
    /// When the queue could not be read from etcd.
    pub(crate) fn is_first(&self, key: &str, rev: i64) -> lock_core::Result<bool> {
        let st = self.hub.state();
        let Some(queue) = st.queues.get(&self.range) else {
            return Ok(false);
        };
        match &queue.load {
            Load::Ready { .. } => Ok(queue
                .by_rev
                .first_key_value()
                .is_some_and(|(&created, first)| created == rev && first == key)),
            Load::Loading { .. } | Load::Idle => Ok(false),
            Load::Failed(reason, true) => Err(lock_core::Error::backend_transient(
                crate::SERVICE_ETCD,
                reason.clone(),
            )),
            Load::Failed(reason, false) => Err(lock_core::Error::backend(
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
            if let Some(task) = queue.task.take() {
                task.abort();
            }
            st.queues.remove(&*self.range);
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
    pub(crate) fn join(self: &Arc<Self>, range: &Arc<str>) -> (QueueUse, bool) {
        let mut st = self.state();
        let queue = st.queues.entry(range.clone()).or_insert_with(Queue::new);
        let busy = queue.users > 0
            || match &queue.load {
                Load::Idle => false,
                Load::Ready { .. } => !queue.by_rev.is_empty(),
                Load::Loading { .. } | Load::Failed(..) => true,
            };
        queue.users += 1;
        drop(st);
        let queue = QueueUse {
            hub: self.clone(),
            range: range.clone(),
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
            Load::Loading { buffer } if queue.generation == generation => std::mem::take(buffer),
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
                // `e` says "etcd backend: <what we did>: <why>"; the error made from this
                // adds the backend's name again, so keep only what is underneath.
                let reason = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                queue.load = Load::Failed(reason, e.is_transient());
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

    /// Delivers one response of the prefix watch (deletes) or of an id's put watch.
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
        let mut st = self.state();
        for (range, queue) in &mut st.queues {
            if matches!(queue.load, Load::Loading { .. }) && queue.task.is_none() {
                let generation = queue.generation;
                queue.spawn(self, range, generation);
            }
        }
    }

    /// Whether the mirror of `range` is still the one of `generation`.
    fn is_current(&self, range: &str, generation: u64) -> bool {
        self.state()
            .queues
            .get(range)
            .is_some_and(|q| q.generation == generation)
    }

    /// An id's put watch broke: read its queue again.
    fn restart(self: &Arc<Self>, range: &Arc<str>, generation: u64) {
        let mut st = self.state();
        st.generation += 1;
        let next = st.generation;
        if let Some(queue) = st.queues.get_mut(range) {
            if queue.generation == generation {
                queue.task = None; // this very task, which is ending
                queue.reload(next);
                queue.spawn(self, range, next);
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
        let stream = open(client, prefix, deletes(), limit).await?;
        let (hub, client, prefix) = (Arc::downgrade(self), client.clone(), prefix.to_owned());
        Ok(tokio::spawn(run(hub, client, prefix, limit, stream)))
    }
}

/// The prefix watch's options: deletes only (puts come from the ids' own watches).
fn deletes() -> WatchOptions {
    WatchOptions::new()
        .with_prefix()
        .with_filters([WatchFilterType::NoPut])
}

/// Mirrors the queue of `range` for `generation`: opens the id's put watch, reads the
/// snapshot, installs it, then delivers the puts until the watch breaks (then starts over)
/// or the task is aborted (the mirror was dropped or superseded).
async fn mirror(hub: Weak<Hub>, range: Arc<str>, generation: u64) {
    let Some((client, limit)) = hub.upgrade().and_then(|h| {
        h.loads.fetch_add(1, Relaxed);
        h.link.get().map(|l| (l.client.clone(), l.limit))
    }) else {
        return;
    };
    let puts = WatchOptions::new()
        .with_prefix()
        .with_filters([WatchFilterType::NoDelete]);
    let mut stream = match open(&client, &range, puts, limit).await {
        Ok(stream) => stream,
        Err(e) => {
            if let Some(hub) = hub.upgrade() {
                hub.install(&range, generation, Err(e));
            }
            return;
        }
    };
    let kv = client.kv_client();
    let result = request("reading the lock's queue", limit, || {
        let (mut kv, range) = (kv.clone(), range.clone());
        async move {
            kv.get(
                &*range,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
        }
    })
    .await;
    let loaded = result.is_ok();
    match hub.upgrade() {
        Some(hub) => hub.install(&range, generation, result),
        None => return,
    }
    if !loaded {
        return;
    }
    while let Ok(Some(resp)) = stream.message().await {
        let Some(hub) = hub.upgrade() else { return };
        if resp.canceled() || !hub.is_current(&range, generation) {
            break;
        }
        hub.deliver(resp.events());
    }
    if let Some(hub) = hub.upgrade() {
        tracing::debug!(range = %range, "watch on a lock's queue lost; reading the queue again");
        hub.restart(&range, generation);
    }
}

async fn open(
    client: &etcd_client::Client,
    prefix: &str,
    options: WatchOptions,
    limit: Duration,
) -> lock_core::Result<etcd_client::WatchStream> {
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
        None => Err(lock_core::Error::backend_transient(
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
            let Ok(s) = open(&client, &prefix, deletes(), limit).await else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, created: i64, revision: i64) -> Change {
        Change::Put {
            key: key.to_owned(),
            created,
            revision,
        }
    }

    fn delete(key: &str, revision: i64) -> Change {
        Change::Delete {
            key: key.to_owned(),
            revision,
        }
    }

    fn ready() -> Queue {
        let mut queue = Queue::new();
        queue.load = Load::Ready { since: 0 };
        queue
    }

    fn first(queue: &Queue) -> Option<(i64, &str)> {
        queue
            .by_rev
            .first_key_value()
            .map(|(r, k)| (*r, k.as_str()))
    }

    #[test]
    fn a_delete_that_overtakes_its_put_leaves_no_key() {
        let mut queue = ready();
        queue.observe(delete("a", 7)); // from the prefix watch, before…
        queue.observe(put("a", 5, 5)); // …the put from the id's watch
        assert_eq!(first(&queue), None);
        // A new incarnation of the same key is not stopped by the tombstone.
        queue.observe(put("a", 9, 9));
        assert_eq!(first(&queue), Some((9, "a")));
    }

    #[test]
    fn a_late_value_update_does_not_revive_a_deleted_key() {
        let mut queue = ready();
        queue.observe(put("a", 5, 5));
        queue.observe(delete("a", 8));
        queue.observe(put("a", 5, 6)); // a re-sent put of the same incarnation, late
        assert_eq!(first(&queue), None);
    }

    #[test]
    fn only_the_new_first_keys_waiter_is_woken_and_once() {
        let mut queue = ready();
        let woken = Arc::new(Mutex::new(Vec::new()));
        for (key, rev) in [("a", 5), ("b", 6), ("c", 7)] {
            queue.observe(put(key, rev, rev));
            let log = woken.clone();
            let wake: Wake = Arc::new(move || log.lock().unwrap().push(key));
            queue.waiters.insert(key.to_owned(), (rev, wake));
        }
        let wake_head = |queue: &mut Queue| {
            if let Some(w) = queue.head_waiter() {
                w();
            }
        };
        wake_head(&mut queue); // "a" is first
        wake_head(&mut queue); // still "a": no second wake-up
        queue.observe(delete("b", 8)); // a waiter leaves: "a" still first
        wake_head(&mut queue);
        queue.observe(delete("a", 9));
        wake_head(&mut queue);
        assert_eq!(*woken.lock().unwrap(), ["a", "c"]);
    }

    #[test]
    fn changes_before_the_snapshot_are_ignored_and_later_ones_replayed() {
        let mut queue = Queue::new();
        queue.reload(1);
        queue.observe(delete("x", 3)); // buffered while loading
        queue.observe(delete("y", 12));
        let Load::Loading { buffer, .. } = std::mem::replace(&mut queue.load, Load::Idle) else {
            unreachable!()
        };
        // The snapshot at revision 10: x (re-created at 4, after the delete at 3) and y.
        queue.apply(put("x", 4, 10));
        queue.apply(put("y", 6, 10));
        queue.load = Load::Ready { since: 10 };
        for change in buffer {
            queue.observe(change);
        }
        assert_eq!(first(&queue), Some((4, "x")));
        assert_eq!(queue.by_key.len(), 1);
    }

    #[test]
    fn tombstones_are_pruned_once_the_put_stream_has_passed_them() {
        let mut queue = ready();
        for n in 0..5000 {
            queue.observe(put(&format!("k{n}"), n + 1, n + 1));
        }
        for n in 0..5000 {
            queue.observe(delete(&format!("k{n}"), 10_000 + n));
        }
        // More keys come and go; the put stream moves past the early tombstones.
        for n in 0..10_000 {
            queue.observe(put(&format!("m{n}"), 20_000 + 2 * n, 20_000 + 2 * n));
            queue.observe(delete(&format!("m{n}"), 20_001 + 2 * n));
        }
        assert!(queue.by_rev.is_empty());
        assert!(
            queue.last.len() <= 1025,
            "{} tombstones kept",
            queue.last.len()
        );
    }
}
