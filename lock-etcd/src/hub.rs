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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use etcd_client::{Event, EventType, GetOptions, WatchFilterType, WatchOptions};
use tokio::task::{AbortHandle, JoinHandle};

use crate::delay::{parse_record, Delays};
use crate::error::{once, request};
use crate::keys::{IdKeys, Kind};

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

/// A lock-delay record: its create revision and the delay its hold asked for.
#[derive(Debug, Clone, Copy)]
struct Record {
    created: i64,
    delay: Duration,
}

/// A record whose key is gone.
#[derive(Debug, Clone)]
struct Stale {
    suffix: String,
    /// Its key was the first when it went (it may have held the lock): waiters behind it wait
    /// until the record is gone.
    blocks: bool,
    delay: Duration,
}

/// A stale record to hand to [`Delays`]: its key, create revision, and when to delete it.
type Resolve = (Vec<u8>, i64, Instant);

/// The keys and records of one id, as etcd holds them at the revision the watch delivered.
struct Queue {
    keys: IdKeys,
    users: usize,
    load: Load,
    /// Queue keys: create revision → suffix, and back.
    by_rev: BTreeMap<i64, String>,
    by_suffix: HashMap<String, i64>,
    /// Lock-delay records, by suffix.
    records: HashMap<String, Record>,
    /// Stale records, by create revision.
    stale: BTreeMap<i64, Stale>,
    /// Local waiters by suffix: the create revision they wait with and how to wake them.
    waiters: HashMap<String, (i64, Wake)>,
    /// The create revision of the first key whose waiter was last woken.
    woken: i64,
    /// The stale record a waiter was last said to wait for (logged once).
    announced: i64,
    /// The revision of the last change applied per key, deleted keys included (tombstones).
    last: HashMap<Vec<u8>, i64>,
    /// The highest revision the put stream has delivered.
    puts_through: i64,
    /// Tombstones are pruned when `last` grows past this.
    prune_at: usize,
    /// The task that reads the snapshot and then pumps the id's events, and its generation.
    task: Option<AbortHandle>,
    generation: u64,
}

enum Load {
    /// Not mirrored: the lockers using the queue have not needed it yet.
    Idle,
    /// A snapshot read is on its way; events seen meanwhile wait here.
    Loading { buffer: Vec<Change> },
    /// Mirrors etcd: the snapshot was read at `since`; later events are applied.
    Ready { since: i64 },
    /// The snapshot read failed (why, and whether trying again may help): waiters report this
    /// and the next one reads again.
    Failed(String, bool),
}

/// One event of an id's put watch or of the prefix watch (a delete).
#[derive(Clone)]
struct Change {
    key: Vec<u8>,
    revision: i64,
    /// `Some((create revision, value))` for a put, `None` for a delete.
    put: Option<(i64, Vec<u8>)>,
}

impl Change {
    /// A key of a snapshot read at `since`, as a put.
    fn from_read(kv: &etcd_client::KeyValue, since: i64) -> Self {
        Change {
            key: kv.key().to_vec(),
            revision: since,
            put: Some((kv.create_revision(), kv.value().to_vec())),
        }
    }

    fn from_event(event: &Event) -> Option<Self> {
        let kv = event.kv()?;
        let put = (event.event_type() == EventType::Put)
            .then(|| (kv.create_revision(), kv.value().to_vec()));
        Some(Change {
            key: kv.key().to_vec(),
            revision: kv.mod_revision(),
            put,
        })
    }
}

impl Queue {
    fn new(keys: IdKeys) -> Self {
        Queue {
            keys,
            users: 0,
            load: Load::Idle,
            by_rev: BTreeMap::new(),
            by_suffix: HashMap::new(),
            records: HashMap::new(),
            stale: BTreeMap::new(),
            waiters: HashMap::new(),
            woken: 0,
            announced: 0,
            last: HashMap::new(),
            puts_through: 0,
            prune_at: 1024,
            task: None,
            generation: 0,
        }
    }

    /// Applies a batch of changes (one watch response, or the snapshot and what was buffered
    /// while it was read), then finds the records left without their key by it: the stale
    /// records to hand to [`Delays`].
    fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> Vec<Resolve> {
        // Keys deleted in this batch (and whether each was the first), and records put in it.
        let mut deleted: Vec<(String, bool)> = Vec::new();
        let mut put: Vec<String> = Vec::new();
        for change in changes {
            let Some((kind, suffix)) = self.keys.classify(&change.key) else {
                continue;
            };
            if self
                .last
                .get(&change.key)
                .is_some_and(|&seen| seen >= change.revision)
            {
                continue; // older than what we know of this key: the other stream was faster
            }
            self.last.insert(change.key.clone(), change.revision);
            let suffix = suffix.to_owned();
            if change.put.is_some() {
                self.puts_through = self.puts_through.max(change.revision);
            }
            match (kind, change.put) {
                (Kind::Queue, Some((created, _))) => {
                    if let Some(old) = self.by_suffix.insert(suffix.clone(), created) {
                        if old == created {
                            continue; // a value update of a key we know
                        }
                        self.by_rev.remove(&old);
                    }
                    self.by_rev.insert(created, suffix);
                }
                (Kind::Queue, None) => {
                    if let Some(created) = self.by_suffix.remove(&suffix) {
                        let was_first = self.by_rev.keys().next() == Some(&created);
                        self.by_rev.remove(&created);
                        deleted.push((suffix, was_first));
                    }
                    self.prune();
                }
                (Kind::Record, Some((created, value))) => {
                    let delay = parse_record(&value);
                    self.records
                        .insert(suffix.clone(), Record { created, delay });
                    put.push(suffix);
                }
                (Kind::Record, None) => {
                    if let Some(record) = self.records.remove(&suffix) {
                        self.stale.remove(&record.created);
                    }
                    self.prune();
                }
            }
        }
        let now = Instant::now();
        let mut resolve = Vec::new();
        for (suffix, blocks) in deleted {
            if let Some(record) = self.records.get(&suffix).copied() {
                resolve.push(self.mark_stale(suffix, record, blocks, now));
            }
        }
        for suffix in put {
            // A record whose key's delete overtook their put: the key went alone (a clean
            // release would have deleted the record with it). It held if no older key was
            // there throughout.
            match self.records.get(&suffix).copied() {
                Some(record)
                    if !self.by_suffix.contains_key(&suffix)
                        && !self.stale.contains_key(&record.created) =>
                {
                    let blocks = self.by_rev.range(..record.created).next().is_none();
                    resolve.push(self.mark_stale(suffix, record, blocks, now));
                }
                _ => {}
            }
        }
        resolve
    }

    /// Prunes tombstones once there are many: one no later than the put stream's position can
    /// go, since no put it must stop is still to come. (Doubling the threshold keeps this O(1)
    /// per change on average.)
    fn prune(&mut self) {
        if self.last.len() <= self.prune_at {
            return;
        }
        let through = self.puts_through;
        let (keys, by_suffix, records) = (&self.keys, &self.by_suffix, &self.records);
        self.last.retain(|key, &mut seen| {
            seen > through
                || match keys.classify(key) {
                    Some((Kind::Queue, suffix)) => by_suffix.contains_key(suffix),
                    Some((Kind::Record, suffix)) => records.contains_key(suffix),
                    None => false,
                }
        });
        self.prune_at = (2 * self.last.len()).max(1024);
    }

    /// Records `suffix`'s record as stale: it is deleted `delay` from now if it blocks, at once
    /// if its key never held the lock.
    fn mark_stale(
        &mut self,
        suffix: String,
        record: Record,
        blocks: bool,
        now: Instant,
    ) -> Resolve {
        let key = self.keys.record(&suffix);
        if blocks {
            tracing::debug!(
                range = %self.keys.range,
                token = record.created,
                lock_delay = ?record.delay,
                "a hold ended without a clean release (its key is gone, its record is not): \
                 nobody behind it is granted the lock until its lock-delay has passed or its \
                 holder says it knows"
            );
        }
        let at = match blocks {
            true => now + record.delay,
            false => now,
        };
        self.stale.insert(
            record.created,
            Stale {
                suffix,
                blocks,
                delay: record.delay,
            },
        );
        (key, record.created, at)
    }

    /// Installs the snapshot read at `since` (each key as a put), then what the watch
    /// delivered meanwhile.
    ///
    /// A record without its key in the snapshot is a hold that ended behind its holder's back
    /// at some time before now: stale, for its whole delay from now.
    fn install(&mut self, since: i64, snapshot: Vec<Change>, buffer: Vec<Change>) -> Vec<Resolve> {
        let mut resolve = self.apply(snapshot);
        self.load = Load::Ready { since };
        let later = buffer.into_iter().filter(|c| c.revision > since);
        resolve.extend(self.apply(later));
        resolve
    }

    /// Applies a watch response (or keeps it until the snapshot arrives).
    fn observe(&mut self, changes: Vec<Change>) -> Vec<Resolve> {
        match &mut self.load {
            Load::Loading { buffer } => {
                buffer.extend(changes);
                Vec::new()
            }
            Load::Ready { since } => {
                let since = *since;
                self.apply(changes.into_iter().filter(|c| c.revision > since))
            }
            Load::Idle | Load::Failed(..) => Vec::new(),
        }
    }

    /// The stale record that keeps the key created at `created` from the lock, if any.
    fn blocked_by(&self, created: i64) -> Option<(i64, &Stale)> {
        self.stale
            .range(..created)
            .find(|(_, stale)| stale.blocks)
            .map(|(rev, stale)| (*rev, stale))
    }

    /// The waiter owning the first key, if it may have the lock and was not woken for that key
    /// yet.
    fn head_waiter(&mut self) -> Option<Wake> {
        if !matches!(self.load, Load::Ready { .. }) {
            return None;
        }
        let (&created, suffix) = self.by_rev.first_key_value()?;
        if created == self.woken {
            return None;
        }
        let (rev, wake) = self.waiters.get(suffix)?;
        if *rev != created {
            return None;
        }
        let wake = wake.clone();
        if let Some((token, stale)) = self.blocked_by(created) {
            if self.announced != token {
                tracing::debug!(
                    range = %self.keys.range,
                    waiter = created,
                    vanished = token,
                    vanished_key = %stale.suffix,
                    lock_delay = ?stale.delay,
                    "a waiter is first in line, behind a hold that ended without a clean release: \
                     waiting out its lock-delay"
                );
                self.announced = token;
            }
            return None;
        }
        self.woken = created;
        Some(wake)
    }

    /// Forgets the mirror and stops its task; the caller starts a new one (or drops it).
    fn reload(&mut self, generation: u64) {
        self.generation = generation;
        self.load = Load::Loading { buffer: Vec::new() };
        self.by_rev.clear();
        self.by_suffix.clear();
        self.records.clear();
        self.stale.clear();
        self.last.clear();
        self.puts_through = 0;
        self.prune_at = 1024;
        self.woken = 0;
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Starts the task that mirrors this queue for `generation`.
    fn spawn(&mut self, hub: &Arc<Hub>, generation: u64) {
        let task = tokio::spawn(mirror(Arc::downgrade(hub), self.keys.clone(), generation));
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
    /// Wakes `wake` when the key of `suffix`, created at `rev`, becomes the first key of the
    /// queue with no lock-delay before it; starts mirroring the queue if it is not mirrored yet.
    pub(crate) fn wait(&mut self, suffix: &str, rev: i64, wake: Wake) {
        let mut st = self.hub.state();
        let st = &mut *st;
        let Some(queue) = st.queues.get_mut(&self.range) else {
            return;
        };
        queue.waiters.insert(suffix.to_owned(), (rev, wake));
        self.waiting = Some(suffix.to_owned());
        if matches!(queue.load, Load::Idle | Load::Failed(..)) {
            st.generation += 1;
            let generation = st.generation;
            queue.reload(generation);
            queue.spawn(&self.hub, generation);
        }
    }

    /// Whether the key of `suffix`, created at `rev`, is the first key of the id with no
    /// lock-delay before it (so its locker may take the lock); `Ok(false)` also while the
    /// queue is being read.
    ///
    /// # Errors
    ///
    /// When the queue could not be read from etcd.
    pub(crate) fn is_first(&self, suffix: &str, rev: i64) -> lock_core::Result<bool> {
        let st = self.hub.state();
        let Some(queue) = st.queues.get(&self.range) else {
            return Ok(false);
        };
        match &queue.load {
            Load::Ready { .. } => Ok(queue
                .by_rev
                .first_key_value()
                .is_some_and(|(&created, first)| created == rev && first == suffix)
                && queue.blocked_by(rev).is_none()),
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
        if let Some(suffix) = &self.waiting {
            queue.waiters.remove(suffix);
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
            || match &queue.load {
                Load::Idle => false,
                Load::Ready { .. } => !queue.by_rev.is_empty() || !queue.stale.is_empty(),
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
        let resolve = queue.install(since, snapshot, Vec::new());
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
        let buffer = match &mut queue.load {
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
                let resolve = queue.install(since, snapshot, buffer);
                (queue.head_waiter().into_iter().collect(), resolve)
            }
            Err(e) => {
                // `e` says "etcd backend: <what we did>: <why>"; the error made from this
                // adds the backend's name again, so keep only what is underneath.
                let reason = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                queue.load = Load::Failed(reason, e.is_transient());
                let wakes = queue.waiters.values().map(|(_, w)| w.clone()).collect();
                (wakes, Vec::new())
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
                resolve.extend(queue.observe(changes));
                wakes.extend(queue.head_waiter());
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
        let resolve = queue.observe(changes);
        let wake = queue.head_waiter();
        drop(st);
        self.resolve(resolve);
        self.wake(wake.into_iter().collect());
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
            if !matches!(queue.load, Load::Idle) {
                queue.reload(generation);
            }
        }
    }

    /// Reads every queue again (after the prefix watch was re-created).
    fn reload_all(self: &Arc<Self>) {
        let mut st = self.state();
        for queue in st.queues.values_mut() {
            if matches!(queue.load, Load::Loading { .. }) && queue.task.is_none() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> IdKeys {
        IdKeys::new("p/", "x")
    }

    fn put(suffix: &str, created: i64, revision: i64) -> Change {
        Change {
            key: keys().key(suffix).into_bytes(),
            revision,
            put: Some((created, b"host=h pid=1".to_vec())),
        }
    }

    fn delete(suffix: &str, revision: i64) -> Change {
        Change {
            key: keys().key(suffix).into_bytes(),
            revision,
            put: None,
        }
    }

    fn put_record(suffix: &str, created: i64, delay_ms: u64) -> Change {
        Change {
            key: keys().record(suffix),
            revision: created,
            put: Some((
                created,
                crate::delay::record_value(Duration::from_millis(delay_ms)).into_bytes(),
            )),
        }
    }

    fn delete_record(suffix: &str, revision: i64) -> Change {
        Change {
            key: keys().record(suffix),
            revision,
            put: None,
        }
    }

    fn ready() -> Queue {
        let mut queue = Queue::new(keys());
        queue.load = Load::Ready { since: 0 };
        queue
    }

    fn first(queue: &Queue) -> Option<(i64, &str)> {
        queue
            .by_rev
            .first_key_value()
            .map(|(r, k)| (*r, k.as_str()))
    }

    /// Waiters for `suffixes` (with their create revisions), logging who is woken.
    fn waiters(
        queue: &mut Queue,
        suffixes: &[(&'static str, i64)],
    ) -> Arc<Mutex<Vec<&'static str>>> {
        let woken = Arc::new(Mutex::new(Vec::new()));
        for &(suffix, rev) in suffixes {
            let log = woken.clone();
            let wake: Wake = Arc::new(move || log.lock().unwrap().push(suffix));
            queue.waiters.insert(suffix.to_owned(), (rev, wake));
        }
        woken
    }

    fn wake_head(queue: &mut Queue) {
        if let Some(w) = queue.head_waiter() {
            w();
        }
    }

    #[test]
    fn only_the_new_first_keys_waiter_is_woken_and_once() {
        let mut queue = ready();
        for (key, rev) in [("a", 5), ("b", 6), ("c", 7)] {
            queue.observe(vec![put(key, rev, rev)]);
        }
        let woken = waiters(&mut queue, &[("a", 5), ("b", 6), ("c", 7)]);
        wake_head(&mut queue); // "a" is first
        wake_head(&mut queue); // still "a": no second wake-up
        queue.observe(vec![delete("b", 8)]); // a waiter leaves: "a" still first
        wake_head(&mut queue);
        queue.observe(vec![delete("a", 9)]);
        wake_head(&mut queue);
        assert_eq!(*woken.lock().unwrap(), ["a", "c"]);
    }

    #[test]
    fn a_delete_that_overtakes_its_put_leaves_no_key() {
        let mut queue = ready();
        queue.observe(vec![delete("a", 7)]); // from the prefix watch, before…
        queue.observe(vec![put("a", 5, 5)]); // …the put from the id's watch
        assert_eq!(first(&queue), None);
        // A new incarnation of the same key is not stopped by the tombstone.
        queue.observe(vec![put("a", 9, 9)]);
        assert_eq!(first(&queue), Some((9, "a")));
    }

    #[test]
    fn a_late_value_update_does_not_revive_a_deleted_key() {
        let mut queue = ready();
        queue.observe(vec![put("a", 5, 5)]);
        queue.observe(vec![delete("a", 8)]);
        queue.observe(vec![put("a", 5, 6)]); // a re-sent put of the same incarnation, late
        assert_eq!(first(&queue), None);
    }

    #[test]
    fn tombstones_are_pruned_once_the_put_stream_has_passed_them() {
        let mut queue = ready();
        for n in 0..5000 {
            queue.observe(vec![put(&format!("k{n}"), n + 1, n + 1)]);
        }
        for n in 0..5000 {
            queue.observe(vec![delete(&format!("k{n}"), 10_000 + n)]);
        }
        // More keys come and go; the put stream moves past the early tombstones.
        for n in 0..10_000 {
            queue.observe(vec![put(&format!("m{n}"), 20_000 + 2 * n, 20_000 + 2 * n)]);
            queue.observe(vec![delete(&format!("m{n}"), 20_001 + 2 * n)]);
        }
        assert!(queue.by_rev.is_empty());
        assert!(
            queue.last.len() <= 1025,
            "{} tombstones kept",
            queue.last.len()
        );
    }

    /// The prefix watch can bring a release before the put watch brings the key and record it
    /// releases: a clean release (both deleted) leaves nothing; a key that went alone leaves
    /// its record stale, blocking if no older key was there.
    #[test]
    fn deletes_that_overtake_their_puts_leave_a_stale_record_only_if_the_key_went_alone() {
        let mut queue = ready();
        queue.observe(vec![delete("a", 8), delete_record("a", 8)]);
        let resolve = queue.observe(vec![put("a", 5, 5), put_record("a", 5, 3000)]);
        assert!(resolve.is_empty() && queue.stale.is_empty() && first(&queue).is_none());

        queue.observe(vec![delete("b", 12)]); // b went alone, at 12
        let resolve = queue.observe(vec![put("b", 10, 10), put_record("b", 10, 3000)]);
        assert_eq!(resolve.len(), 1);
        assert!(queue.blocked_by(11).is_some(), "b may have held: it blocks");
    }

    #[test]
    fn changes_before_the_snapshot_are_ignored_and_later_ones_replayed() {
        let mut queue = Queue::new(keys());
        queue.reload(1);
        // Buffered while loading: x deleted at 3 (before the snapshot), y at 12 (after).
        let buffer = vec![delete("x", 3), delete("y", 12)];
        // The snapshot at revision 10: x (re-created at 4, after the delete at 3) and y.
        let kvs = vec![put("x", 4, 10), put("y", 6, 10)];
        queue.load = Load::Loading { buffer: Vec::new() };
        for change in kvs {
            queue.apply([change]);
        }
        queue.load = Load::Ready { since: 10 };
        queue.apply(buffer.into_iter().filter(|c| c.revision > 10));
        assert_eq!(first(&queue), Some((4, "x")));
        assert_eq!(queue.by_suffix.len(), 1);
    }

    /// A clean release deletes the key and its record in one revision: the next waiter is
    /// woken at once. A key that vanishes alone (its lease revoked on the server, or deleted by
    /// someone else) leaves its record stale: the next waiter waits until the record is gone.
    #[test]
    fn a_key_gone_without_its_record_keeps_the_next_waiter_waiting() {
        let mut queue = ready();
        queue.observe(vec![put("a", 5, 5), put_record("a", 5, 3000)]);
        queue.observe(vec![put("b", 6, 6), put_record("b", 6, 3000)]);
        queue.observe(vec![put("c", 7, 7), put_record("c", 7, 3000)]);
        let woken = waiters(&mut queue, &[("b", 6), ("c", 7)]);
        // a releases cleanly: b is woken.
        let resolve = queue.observe(vec![delete("a", 8), delete_record("a", 8)]);
        assert!(resolve.is_empty());
        wake_head(&mut queue);
        assert_eq!(*woken.lock().unwrap(), ["b"]);
        // b's lease goes on the server: its key goes, its record stays. c waits.
        let resolve = queue.observe(vec![delete("b", 9)]);
        assert_eq!(
            resolve.len(),
            1,
            "b's record is to be ended after its delay"
        );
        let (key, created, at) = &resolve[0];
        assert_eq!(
            (key.as_slice(), *created),
            (keys().record("b").as_slice(), 6)
        );
        assert!(*at >= Instant::now() + Duration::from_millis(2900));
        wake_head(&mut queue);
        assert_eq!(
            *woken.lock().unwrap(),
            ["b"],
            "c was woken during b's lock-delay"
        );
        // The record goes (its delay passed, or b said it knows): c is woken.
        queue.observe(vec![delete_record("b", 10)]);
        wake_head(&mut queue);
        assert_eq!(*woken.lock().unwrap(), ["b", "c"]);
    }

    /// A key that was never the first never held the lock: its record, left behind, keeps
    /// nobody waiting, and goes at once.
    #[test]
    fn a_record_of_a_key_that_never_held_blocks_nobody() {
        let mut queue = ready();
        queue.observe(vec![put("a", 5, 5), put_record("a", 5, 3000)]);
        queue.observe(vec![put("b", 6, 6), put_record("b", 6, 3000)]);
        queue.observe(vec![put("c", 7, 7), put_record("c", 7, 3000)]);
        let woken = waiters(&mut queue, &[("c", 7)]);
        let resolve = queue.observe(vec![delete("b", 8)]); // b, second, vanishes
        assert!(resolve[0].2 <= Instant::now(), "deleted at once");
        queue.observe(vec![delete("a", 9), delete_record("a", 9)]);
        wake_head(&mut queue);
        assert_eq!(*woken.lock().unwrap(), ["c"]);
    }

    /// A newcomer's snapshot cannot tell when a record's key went, nor whether it held: a
    /// record without its key and without an older key blocks, for its whole delay from now.
    #[test]
    fn a_snapshot_with_a_record_and_no_key_blocks_unless_an_older_key_is_there() {
        let kv = |key: Vec<u8>, created: i64, value: &[u8]| Change {
            key,
            revision: 10,
            put: Some((created, value.to_vec())),
        };
        let record = crate::delay::record_value(Duration::from_secs(2));
        let snapshot = vec![
            kv(keys().record("gone"), 5, record.as_bytes()),
            kv(keys().key("me").into_bytes(), 7, b""),
            kv(keys().record("me"), 7, record.as_bytes()),
        ];
        let mut queue = Queue::new(keys());
        queue.reload(1);
        let resolve = queue.install(10, snapshot.clone(), Vec::new());
        assert_eq!(resolve.len(), 1);
        assert!(resolve[0].2 >= Instant::now() + Duration::from_millis(1900));
        let woken = waiters(&mut queue, &[("me", 7)]);
        wake_head(&mut queue);
        assert!(woken.lock().unwrap().is_empty());
        queue.observe(vec![delete_record("gone", 11)]);
        wake_head(&mut queue);
        assert_eq!(*woken.lock().unwrap(), ["me"]);

        // With an older key there throughout, the orphan never held.
        let mut snapshot = snapshot;
        snapshot.insert(0, kv(keys().key("old").into_bytes(), 3, b""));
        let mut queue = Queue::new(keys());
        queue.reload(1);
        let resolve = queue.install(10, snapshot, Vec::new());
        assert!(resolve[0].2 <= Instant::now());
        assert!(queue.blocked_by(7).is_none());
    }
}
