//! One watch per service over the whole lock prefix, serving two kinds of interest:
//!
//! - **key deletions**: a holder registers its key (deleted behind its back means the lock is
//!   lost) and a waiter its own key (deleted means its attempt is over);
//! - **queues**: while a local locker waits for an id, the hub mirrors that id's keys and its
//!   lock-delay records (see `crate::delay`): one snapshot read, the prefix watch's deletes,
//!   and the puts of a watch on that id alone (opened before the read, closed with the
//!   mirror), so a service receives no put events for ids it does not wait for. When the first
//!   key changes, the waiter that owns the new first key is woken, and nobody else: a release
//!   costs one delete on the wire, one event and one wake-up here.
//!
//! **Stale records.** A record whose key is gone marks a hold that ended without a clean
//! release (a clean one deletes both in one transaction). If that key was the first (it may
//! have held the lock), no waiter behind it is granted while the record lasts; the hub hands it
//! to [`Delays`], which deletes it once its delay has passed (a key that was never the first
//! never held: its record goes at once). The holder deletes it sooner when it learns of its
//! loss.
//!
//! The copy of an id's queue is `crate::mirror` (what it holds, how it applies the changes,
//! whom it wakes); the hub keeps one per id in use and runs its snapshot read and watches.
//! The two streams are not ordered with respect to each other, so the mirror orders changes
//! per key by revision (a delete that overtakes its key's put leaves a tombstone, pruned once
//! the put stream has passed it), and a waiter counts as first only once its own put is in the
//! mirror: the put stream is ordered, so by then every earlier put of the id has arrived too; a
//! late delete only delays a wake-up. A key and its record are put in one transaction (so they
//! arrive in one response of the put stream) and a clean release deletes both in one (one
//! response of the prefix watch: etcd never splits a revision's events), so a record is never
//! seen without its key unless the key went alone.
//!
//! Watches start at "now", so etcd keeps them in its synced group (no 100 ms catch-up
//! batches). Whoever registers interest in a key must check the key afterwards: a deletion
//! before registration is seen by that check, one after it by the watch. When the prefix watch
//! is re-created after a connection loss, every registered key is checked again and every
//! queue is read again, so nothing slips through the gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use etcd_client::{Event, GetOptions, WatchFilterType, WatchOptions};
use tokio::task::{AbortHandle, JoinHandle};

use crate::delay::Delays;
use crate::error::{once, request};
use crate::keys::IdKeys;
use crate::mirror::{Change, Load, Mirror, Resolve};

/// Called with the revision at which the key was deleted (or seen absent).
type Callback = Arc<dyn Fn(i64) + Send + Sync>;

pub(crate) use crate::mirror::Wake;

#[derive(Default)]
pub(crate) struct Hub {
    state: Mutex<State>,
    link: OnceLock<Link>,
    wakeups: AtomicU64,
    loads: AtomicU64,
}

/// What loading a queue and ending lock-delays need.
struct Link {
    client: etcd_client::Client,
    limit: Duration,
    delays: Arc<Delays>,
}

#[derive(Default)]
struct State {
    next: u64,
    interests: HashMap<String, Vec<(u64, Callback)>>,
    /// Mirrored ids, by queue range (`<prefix><encoded id>/`).
    queues: HashMap<Arc<str>, Queue>,
    generation: u64,
}

/// One id the hub mirrors: its [`Mirror`], the lockers using it, and the task that reads the
/// snapshot and then pumps the id's events, with its generation.
struct Queue {
    mirror: Mirror,
    users: usize,
    task: Option<AbortHandle>,
    generation: u64,
}

impl Queue {
    fn new(keys: IdKeys) -> Self {
        Queue {
            mirror: Mirror::new(keys),
            users: 0,
            task: None,
            generation: 0,
        }
    }

    /// Forgets the mirror and stops its task; the caller starts a new one (or drops it).
    fn reload(&mut self, generation: u64) {
        self.generation = generation;
        self.mirror.reset();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Starts the task that mirrors this queue for `generation`.
    fn spawn(&mut self, hub: &Arc<Hub>, generation: u64) {
        let keys = self.mirror.keys.clone();
        let task = tokio::spawn(mirror(Arc::downgrade(hub), keys, generation));
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
    /// The suffix it waits with, and its limit.
    waiting: Option<(String, usize)>,
}

impl QueueUse {
    /// Wakes `wake` when the key of `suffix`, created at `rev`, may hold one of `limit` permits
    /// (for a lock: becomes the first key, with no lock-delay before it); starts mirroring the
    /// queue if it is not mirrored yet.
    pub(crate) fn wait(&mut self, suffix: &str, rev: i64, wake: Wake, limit: usize) {
        let mut st = self.hub.state();
        let st = &mut *st;
        let Some(queue) = st.queues.get_mut(&self.range) else {
            return;
        };
        queue.mirror.wait(suffix, rev, wake, limit);
        self.waiting = Some((suffix.to_owned(), limit));
        if matches!(queue.mirror.load, Load::Idle | Load::Failed(..)) {
            st.generation += 1;
            let generation = st.generation;
            queue.reload(generation);
            queue.spawn(&self.hub, generation);
        }
    }

    /// Whether the key of `suffix`, created at `rev`, may hold a permit of the id: among its
    /// first keys (the first, for a lock) with no lock-delay before it taking the last
    /// permit (so its locker may take the lock); `Ok(false)` also while the queue is being
    /// read.
    ///
    /// # Errors
    ///
    /// When the queue could not be read from etcd.
    pub(crate) fn may_hold(&self, suffix: &str, rev: i64) -> lock_core::Result<bool> {
        let st = self.hub.state();
        let Some(queue) = st.queues.get(&self.range) else {
            return Ok(false);
        };
        match &queue.mirror.load {
            Load::Ready { .. } => {
                let limit = self.waiting.as_ref().map_or(1, |(_, limit)| *limit);
                Ok(queue.mirror.may_hold(suffix, rev, limit))
            }
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
        if let Some((suffix, _)) = &self.waiting {
            queue.mirror.unwait(suffix);
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

    /// Starts using the queue of `keys`. Returns whether the id looks contended from here:
    /// another local locker is taking or waiting for it, or the mirrored queue has keys or
    /// stale records. Then a new locker queues with a plain put instead of asking whether the
    /// id is free.
    pub(crate) fn join(self: &Arc<Self>, keys: &IdKeys) -> (QueueUse, bool) {
        let mut st = self.state();
        let queue = st
            .queues
            .entry(keys.range.clone())
            .or_insert_with(|| Queue::new(keys.clone()));
        let busy = queue.users > 0
            || match &queue.mirror.load {
                Load::Idle => false,
                Load::Ready { .. } => {
                    !queue.mirror.by_rev.is_empty() || !queue.mirror.stale.is_empty()
                }
                Load::Loading { .. } | Load::Failed(..) => true,
            };
        queue.users += 1;
        drop(st);
        let queue = QueueUse {
            hub: self.clone(),
            range: keys.range.clone(),
            waiting: None,
        };
        (queue, busy)
    }

    /// Reads the id's keys and records once, outside any mirror, and hands its stale records
    /// to [`Delays`]: a `try_lock` found only records in the way, and nobody may be waiting to
    /// end their lock-delay.
    pub(crate) async fn look_for_stale(&self, keys: &IdKeys) {
        let Some(link) = self.link.get() else { return };
        let Ok(resp) = read_range(&link.client, keys, link.limit).await else {
            return; // the next try looks again
        };
        let since = resp.header().map_or(0, |h| h.revision());
        let mut queue = Queue::new(keys.clone());
        let snapshot = resp
            .kvs()
            .iter()
            .map(|kv| Change::from_read(kv, since))
            .collect();
        let resolve = queue.mirror.install(since, snapshot, Vec::new());
        self.resolve(resolve);
    }

    fn resolve(&self, stale: Vec<Resolve>) {
        let Some(link) = self.link.get() else { return };
        for (key, created, at) in stale {
            link.delays.resolve(key, created, at);
        }
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
        let buffer = match &mut queue.mirror.load {
            Load::Loading { buffer } if queue.generation == generation => std::mem::take(buffer),
            _ => return, // superseded
        };
        let (wakes, resolve): (Vec<Wake>, Vec<Resolve>) = match result {
            Ok(resp) => {
                let since = resp.header().map_or(0, |h| h.revision());
                let snapshot = resp
                    .kvs()
                    .iter()
                    .map(|kv| Change::from_read(kv, since))
                    .collect();
                let resolve = queue.mirror.install(since, snapshot, buffer);
                (queue.mirror.wakeable(), resolve)
            }
            Err(e) => {
                // `e` says "etcd backend: <what we did>: <why>"; the error made from this
                // adds the backend's name again, so keep only what is underneath.
                let reason = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                queue.mirror.load = Load::Failed(reason, e.is_transient());
                (queue.mirror.every_waiter(), Vec::new())
            }
        };
        drop(st);
        self.resolve(resolve);
        self.wake(wakes);
    }

    fn wake(&self, wakes: Vec<Wake>) {
        for wake in wakes {
            self.wakeups.fetch_add(1, Relaxed);
            wake();
        }
    }

    /// Delivers one response of the prefix watch (deletes) to the interests in those keys and
    /// to the mirrors of their ids, each mirror the response's deletes at once.
    fn deliver_deletes(&self, events: &[Event]) {
        let mut deleted: Vec<(Callback, i64)> = Vec::new();
        let mut by_range: Vec<(Arc<str>, Vec<Change>)> = Vec::new();
        let mut st = self.state();
        for event in events {
            let Some(change) = Change::from_event(event) else {
                continue;
            };
            if let Some(list) = std::str::from_utf8(&change.key)
                .ok()
                .and_then(|key| st.interests.get(key))
            {
                deleted.extend(list.iter().map(|(_, c)| (c.clone(), change.revision)));
            }
            let Some(range) = crate::keys::range_of(&change.key) else {
                continue;
            };
            if let Some((range, _)) = st.queues.get_key_value(&*range) {
                match by_range.iter_mut().find(|(r, _)| r == range) {
                    Some((_, changes)) => changes.push(change),
                    None => by_range.push((range.clone(), vec![change])),
                }
            }
        }
        let mut wakes = Vec::new();
        let mut resolve = Vec::new();
        for (range, changes) in by_range {
            if let Some(queue) = st.queues.get_mut(&range) {
                resolve.extend(queue.mirror.observe(changes));
                wakes.extend(queue.mirror.wakeable());
            }
        }
        drop(st);
        for (callback, revision) in deleted {
            callback(revision);
        }
        self.resolve(resolve);
        self.wake(wakes);
    }

    /// Delivers one response of the put watch on the queue of `range` (for `generation`).
    fn deliver_puts(&self, range: &str, generation: u64, events: &[Event]) {
        let changes: Vec<Change> = events.iter().filter_map(Change::from_event).collect();
        let mut st = self.state();
        let Some(queue) = st.queues.get_mut(range) else {
            return;
        };
        if queue.generation != generation {
            return;
        }
        let resolve = queue.mirror.observe(changes);
        let wakes = queue.mirror.wakeable();
        drop(st);
        self.resolve(resolve);
        self.wake(wakes);
    }

    fn keys(&self) -> Vec<String> {
        self.state().interests.keys().cloned().collect()
    }

    /// The prefix watch broke: every mirror may miss deletes until it is read again.
    fn invalidate(&self) {
        let mut st = self.state();
        st.generation += 1;
        let generation = st.generation;
        for queue in st.queues.values_mut() {
            if !matches!(queue.mirror.load, Load::Idle) {
                queue.reload(generation);
            }
        }
    }

    /// Reads every queue again (after the prefix watch was re-created).
    fn reload_all(self: &Arc<Self>) {
        let mut st = self.state();
        for queue in st.queues.values_mut() {
            if matches!(queue.mirror.load, Load::Loading { .. }) && queue.task.is_none() {
                let generation = queue.generation;
                queue.spawn(self, generation);
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

    /// An id's watch broke: read its queue again.
    fn restart(self: &Arc<Self>, range: &str, generation: u64) {
        let mut st = self.state();
        st.generation += 1;
        let next = st.generation;
        if let Some(queue) = st.queues.get_mut(range) {
            if queue.generation == generation {
                queue.task = None; // this very task, which is ending
                queue.reload(next);
                queue.spawn(self, next);
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
            delays: Arc::new(Delays::new(client.clone(), limit)),
        });
        let stream = open(client, prefix.as_bytes(), deletes(), limit).await?;
        let (hub, client, prefix) = (Arc::downgrade(self), client.clone(), prefix.to_owned());
        Ok(tokio::spawn(run(hub, client, prefix, limit, stream)))
    }
}

/// The prefix watch's options: deletes only (an id's own watch brings its puts).
fn deletes() -> WatchOptions {
    WatchOptions::new()
        .with_prefix()
        .with_filters([WatchFilterType::NoPut])
}

/// Reads an id's keys and records (with their values: a record's says its delay).
async fn read_range(
    client: &etcd_client::Client,
    keys: &IdKeys,
    limit: Duration,
) -> lock_core::Result<etcd_client::GetResponse> {
    let kv = client.kv_client();
    request("reading the lock's queue", limit, || {
        let (mut kv, keys) = (kv.clone(), keys.clone());
        async move {
            let options = GetOptions::new().with_range(keys.end.to_vec());
            kv.get(keys.records.to_vec(), Some(options)).await
        }
    })
    .await
}

/// Mirrors the queue of `keys` for `generation`: opens the id's put watch (its keys and
/// records), reads the snapshot, installs it, then delivers the puts until the watch breaks
/// (then starts over) or the task is aborted (the mirror was dropped or superseded).
async fn mirror(hub: Weak<Hub>, keys: IdKeys, generation: u64) {
    let Some((client, limit)) = hub.upgrade().and_then(|h| {
        h.loads.fetch_add(1, Relaxed);
        h.link.get().map(|l| (l.client.clone(), l.limit))
    }) else {
        return;
    };
    let options = WatchOptions::new()
        .with_range(keys.end.to_vec())
        .with_filters([WatchFilterType::NoDelete]);
    let range = &*keys.range;
    let mut stream = match open(&client, &keys.records, options, limit).await {
        Ok(stream) => stream,
        Err(e) => {
            if let Some(hub) = hub.upgrade() {
                hub.install(range, generation, Err(e));
            }
            return;
        }
    };
    let result = read_range(&client, &keys, limit).await;
    let loaded = result.is_ok();
    match hub.upgrade() {
        Some(hub) => hub.install(range, generation, result),
        None => return,
    }
    if !loaded {
        return;
    }
    while let Ok(Some(resp)) = stream.message().await {
        let Some(hub) = hub.upgrade() else { return };
        if resp.canceled() || !hub.is_current(range, generation) {
            break;
        }
        hub.deliver_puts(range, generation, resp.events());
    }
    if let Some(hub) = hub.upgrade() {
        tracing::debug!(range = %range, "watch on a lock's queue lost; reading the queue again");
        hub.restart(range, generation);
    }
}

async fn open(
    client: &etcd_client::Client,
    key: &[u8],
    options: WatchOptions,
    limit: Duration,
) -> lock_core::Result<etcd_client::WatchStream> {
    let watch = client.watch_client();
    let mut stream = request("watching the lock prefix", limit, || {
        let (mut watch, options) = (watch.clone(), options.clone());
        async move { watch.watch(key, Some(options)).await }
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
                    hub.deliver_deletes(resp.events());
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
            let Ok(s) = open(&client, prefix.as_bytes(), deletes(), limit).await else {
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
