//! The queue mirror: one id's keys and lock-delay records as etcd holds them, built from a
//! snapshot read and the watches' events (the hub runs those), and the local waiters for the
//! id, of which it names the one to wake.
//!
//! The two streams (the prefix watch's deletes, the id's watch's puts) are not ordered with
//! respect to each other, so the mirror orders changes per key by revision: a delete that
//! overtakes its key's put leaves a tombstone, pruned once the put stream has passed it. A
//! record whose key is gone marks a hold that ended without a clean release: if that key was
//! the first, no waiter behind it is woken while the record lasts (see `crate::hub`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Event, EventType};

use crate::delay::parse_record;
use crate::keys::{IdKeys, Kind};

/// Wakes a waiting locker.
pub(crate) type Wake = Arc<dyn Fn() + Send + Sync>;

/// A lock-delay record: its create revision and the delay its hold asked for.
#[derive(Debug, Clone, Copy)]
struct Record {
    created: i64,
    delay: Duration,
}

/// A record whose key is gone.
#[derive(Debug, Clone)]
pub(crate) struct Stale {
    suffix: String,
    /// Its key was the first when it went (it may have held the lock): waiters behind it wait
    /// until the record is gone.
    blocks: bool,
    delay: Duration,
}

/// A stale record to hand to [`Delays`]: its key, create revision, and when to delete it.
pub(crate) type Resolve = (Vec<u8>, i64, Instant);

/// The keys and records of one id, as etcd holds them at the revision the watch delivered,
/// and the local waiters for it.
pub(crate) struct Mirror {
    pub(crate) keys: IdKeys,
    pub(crate) load: Load,
    /// Queue keys: create revision → suffix, and back.
    pub(crate) by_rev: BTreeMap<i64, String>,
    /// The most permits any local waiter of the id was made for (1 for a lock or an election):
    /// how many of the first keys may have held, when one vanishes without its record.
    limit: usize,
    by_suffix: HashMap<String, i64>,
    /// Lock-delay records, by suffix.
    records: HashMap<String, Record>,
    /// Stale records, by create revision.
    pub(crate) stale: BTreeMap<i64, Stale>,
    /// Local waiters by suffix: the create revision they wait with, how to wake them, and
    /// their limit (each judges by its own: a lock's or an election's waiter takes only the
    /// first place, whatever other keys say).
    waiters: HashMap<String, (i64, Wake, usize)>,
    /// The create revisions of the keys whose waiters were woken (at most the limit's first).
    woken: Vec<i64>,
    /// The stale record a waiter was last said to wait for (logged once).
    announced: i64,
    /// The revision of the last change applied per key, deleted keys included (tombstones).
    last: HashMap<Vec<u8>, i64>,
    /// The highest revision the put stream has delivered.
    puts_through: i64,
    /// Tombstones are pruned when `last` grows past this.
    prune_at: usize,
}

pub(crate) enum Load {
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
pub(crate) struct Change {
    pub(crate) key: Vec<u8>,
    pub(crate) revision: i64,
    /// `Some((create revision, value))` for a put, `None` for a delete.
    pub(crate) put: Option<(i64, Vec<u8>)>,
}

impl Change {
    /// A key of a snapshot read at `since`, as a put.
    pub(crate) fn from_read(kv: &etcd_client::KeyValue, since: i64) -> Self {
        Change {
            key: kv.key().to_vec(),
            revision: since,
            put: Some((kv.create_revision(), kv.value().to_vec())),
        }
    }

    pub(crate) fn from_event(event: &Event) -> Option<Self> {
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

impl Mirror {
    pub(crate) fn new(keys: IdKeys) -> Self {
        Mirror {
            keys,
            load: Load::Idle,
            by_rev: BTreeMap::new(),
            limit: 1,
            by_suffix: HashMap::new(),
            records: HashMap::new(),
            stale: BTreeMap::new(),
            waiters: HashMap::new(),
            woken: Vec::new(),
            announced: 0,
            last: HashMap::new(),
            puts_through: 0,
            prune_at: 1024,
        }
    }

    /// Applies a batch of changes (one watch response, or the snapshot and what was buffered
    /// while it was read), then finds the records left without their key by it: the stale
    /// records to hand to [`Delays`].
    pub(crate) fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> Vec<Resolve> {
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
                        // It may have held if it was among the first `limit` keys.
                        let held = self.by_rev.keys().take(self.limit).any(|&c| c == created);
                        self.by_rev.remove(&created);
                        deleted.push((suffix, held));
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
                    let blocks = self.by_rev.range(..record.created).count() < self.limit;
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
    pub(crate) fn install(
        &mut self,
        since: i64,
        snapshot: Vec<Change>,
        buffer: Vec<Change>,
    ) -> Vec<Resolve> {
        let mut resolve = self.apply(snapshot);
        self.load = Load::Ready { since };
        let later = buffer.into_iter().filter(|c| c.revision > since);
        resolve.extend(self.apply(later));
        resolve
    }

    /// Applies a watch response (or keeps it until the snapshot arrives).
    pub(crate) fn observe(&mut self, changes: Vec<Change>) -> Vec<Resolve> {
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

    /// Wakes `wake` when the key of `suffix`, created at `rev`, may hold one of `limit`
    /// permits.
    pub(crate) fn wait(&mut self, suffix: &str, rev: i64, wake: Wake, limit: usize) {
        self.limit = self.limit.max(limit);
        self.waiters.insert(suffix.to_owned(), (rev, wake, limit));
    }

    /// Every local waiter (to wake them all: the queue could not be read).
    pub(crate) fn every_waiter(&self) -> Vec<Wake> {
        self.waiters.values().map(|(_, w, _)| w.clone()).collect()
    }

    /// Forgets the waiter of `suffix`.
    pub(crate) fn unwait(&mut self, suffix: &str) {
        self.waiters.remove(suffix);
    }

    /// The stale records that may have held a permit, older than the key created at `created`:
    /// each keeps one permit from the keys behind it while it lasts.
    fn blocking(&self, created: i64) -> impl Iterator<Item = (i64, &Stale)> {
        self.stale
            .range(..created)
            .filter(|(_, stale)| stale.blocks)
            .map(|(rev, stale)| (*rev, stale))
    }

    /// The stale record that keeps the key created at `created` from the last of `limit`
    /// permits, if any.
    pub(crate) fn blocked_by(&self, created: i64, limit: usize) -> Option<(i64, &Stale)> {
        let ahead = self.by_rev.range(..created).count();
        if ahead >= limit {
            return None; // behind keys, not records
        }
        self.blocking(created).nth(limit - ahead - 1)
    }

    /// Whether the key of `suffix`, created at `created`, may hold one of `limit` permits:
    /// fewer than `limit` keys and blocking stale records are older than it.
    pub(crate) fn may_hold(&self, suffix: &str, created: i64, limit: usize) -> bool {
        let ahead = self.by_rev.range(..created).take(limit).count();
        self.by_suffix.get(suffix) == Some(&created)
            && ahead < limit
            && self.blocking(created).take(limit - ahead).count() < limit - ahead
    }

    /// The waiters owning keys that may now hold a permit (each by its own limit) and were not
    /// woken for them yet: for locks, the first key's, once.
    pub(crate) fn wakeable(&mut self) -> Vec<Wake> {
        if !matches!(self.load, Load::Ready { .. }) {
            return Vec::new();
        }
        let first: Vec<i64> = self.by_rev.keys().take(self.limit).copied().collect();
        self.woken.retain(|c| first.contains(c));
        let mut wakes = Vec::new();
        for created in first {
            if self.woken.contains(&created) {
                continue;
            }
            let Some(suffix) = self.by_rev.get(&created) else {
                continue;
            };
            let Some(&(rev, ref wake, limit)) = self.waiters.get(suffix) else {
                continue;
            };
            if rev != created {
                continue;
            }
            let wake = wake.clone();
            if !self.may_hold(suffix, created, limit) {
                if let Some((token, stale)) = self.blocked_by(created, limit) {
                    if self.announced != token {
                        tracing::debug!(
                            range = %self.keys.range,
                            waiter = created,
                            vanished = token,
                            vanished_key = %stale.suffix,
                            lock_delay = ?stale.delay,
                            "a waiter is next in line, behind a hold that ended without a clean \
                             release: waiting out its lock-delay"
                        );
                        self.announced = token;
                    }
                }
                continue;
            }
            self.woken.push(created);
            wakes.push(wake);
        }
        wakes
    }

    /// Forgets what it mirrored, to load it again.
    pub(crate) fn reset(&mut self) {
        self.load = Load::Loading { buffer: Vec::new() };
        self.by_rev.clear();
        self.by_suffix.clear();
        self.records.clear();
        self.stale.clear();
        self.last.clear();
        self.puts_through = 0;
        self.prune_at = 1024;
        self.woken.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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

    fn ready() -> Mirror {
        let mut queue = Mirror::new(keys());
        queue.load = Load::Ready { since: 0 };
        queue
    }

    fn first(queue: &Mirror) -> Option<(i64, &str)> {
        queue
            .by_rev
            .first_key_value()
            .map(|(r, k)| (*r, k.as_str()))
    }

    /// Waiters of a lock for `suffixes` (with their create revisions), logging who is woken.
    fn waiters(
        queue: &mut Mirror,
        suffixes: &[(&'static str, i64)],
    ) -> Arc<Mutex<Vec<&'static str>>> {
        waiters_of(queue, suffixes, 1)
    }

    /// Waiters with `limit` permits for `suffixes`, logging who is woken.
    fn waiters_of(
        queue: &mut Mirror,
        suffixes: &[(&'static str, i64)],
        limit: usize,
    ) -> Arc<Mutex<Vec<&'static str>>> {
        let woken = Arc::new(Mutex::new(Vec::new()));
        for &(suffix, rev) in suffixes {
            let log = woken.clone();
            let wake: Wake = Arc::new(move || log.lock().unwrap().push(suffix));
            queue.wait(suffix, rev, wake, limit);
        }
        woken
    }

    fn wake_head(queue: &mut Mirror) {
        for w in queue.wakeable() {
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
        assert!(
            queue.blocked_by(11, 1).is_some(),
            "b may have held: it blocks"
        );
    }

    #[test]
    fn changes_before_the_snapshot_are_ignored_and_later_ones_replayed() {
        let mut queue = Mirror::new(keys());
        queue.reset();
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

    fn put_permit(suffix: &str, created: i64, limit: u32) -> Change {
        Change {
            key: keys().key(suffix).into_bytes(),
            revision: created,
            put: Some((created, crate::keys::limit_value(limit, "host=h pid=1"))),
        }
    }

    /// A semaphore of 3: the first three keys' waiters are woken, each once; a release wakes
    /// the one waiter whose key becomes third, and nobody else.
    #[test]
    fn a_semaphore_wakes_one_waiter_per_permit() {
        let mut queue = ready();
        for (suffix, created) in [("a", 5), ("b", 6), ("c", 7), ("d", 8), ("e", 9)] {
            queue.observe(vec![put_permit(suffix, created, 3)]);
        }
        let woken = waiters_of(
            &mut queue,
            &[("a", 5), ("b", 6), ("c", 7), ("d", 8), ("e", 9)],
            3,
        );
        wake_head(&mut queue);
        assert_eq!(*woken.lock().unwrap(), ["a", "b", "c"]);
        wake_head(&mut queue);
        assert_eq!(*woken.lock().unwrap(), ["a", "b", "c"], "woken twice");
        queue.observe(vec![delete("b", 10)]);
        wake_head(&mut queue);
        assert_eq!(*woken.lock().unwrap(), ["a", "b", "c", "d"]);
        assert!(queue.may_hold("d", 8, 3) && !queue.may_hold("e", 9, 3));
    }

    /// A waiter of a lock or an election takes only the first place, whatever the other keys'
    /// values say: an election's value (any bytes, `limit=3` too) never admits two leaders.
    #[test]
    fn a_lock_waiter_waits_to_be_first_whatever_values_say() {
        let mut queue = ready();
        for (suffix, created) in [("a", 5), ("b", 6), ("c", 7)] {
            queue.observe(vec![put_permit(suffix, created, 3)]);
        }
        let woken = waiters(&mut queue, &[("a", 5), ("b", 6), ("c", 7)]);
        wake_head(&mut queue);
        assert_eq!(*woken.lock().unwrap(), ["a"]);
        assert!(!queue.may_hold("b", 6, 1));
    }

    /// A permit whose key vanished without its record (a hold that ended behind its holder's
    /// back) stays taken until the record goes: the waiter next in line waits for it.
    #[test]
    fn a_semaphores_vanished_holder_keeps_its_permit_for_the_lock_delay() {
        let mut queue = ready();
        for (suffix, created) in [("a", 5), ("b", 6), ("c", 7)] {
            queue.observe(vec![
                put_permit(suffix, created, 2),
                put_record(suffix, created, 3000),
            ]);
        }
        let woken = waiters_of(&mut queue, &[("c", 7)], 2);
        wake_head(&mut queue);
        assert!(
            woken.lock().unwrap().is_empty(),
            "c was woken behind two holders"
        );
        let resolve = queue.observe(vec![delete("b", 8)]); // b held a permit, and vanished
        assert_eq!(resolve.len(), 1);
        assert!(resolve[0].2 >= Instant::now() + Duration::from_millis(2900));
        wake_head(&mut queue);
        assert!(
            woken.lock().unwrap().is_empty(),
            "c was woken during b's lock-delay"
        );
        assert!(!queue.may_hold("c", 7, 2));
        queue.observe(vec![delete_record("b", 9)]);
        wake_head(&mut queue);
        assert_eq!(*woken.lock().unwrap(), ["c"]);
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
        let mut queue = Mirror::new(keys());
        queue.reset();
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
        let mut queue = Mirror::new(keys());
        queue.reset();
        let resolve = queue.install(10, snapshot, Vec::new());
        assert!(resolve[0].2 <= Instant::now());
        assert!(queue.blocked_by(7, 1).is_none());
    }
}
