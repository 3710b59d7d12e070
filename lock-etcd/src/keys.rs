//! The key layout.
//!
//! - **Queue keys** `<prefix><encoded id>/<lease>-<locker>`: one per locker that holds or waits,
//!   bound to its session's lease, ordered by create revision. This is the layout of etcd's Go
//!   `concurrency.Mutex` (and `etcdctl lock`, and the server's Lock RPC), whose prefix for id
//!   `ID` is `<prefix><encoded ID>/`.
//!   A semaphore's keys are an id's queue keys whose value starts with `limit=N`; an election's
//!   hold the candidate's value (as Go's `concurrency.Election` does). One id is one queue:
//!   give a lock, a semaphore and an election distinct ids.
//! - **Lock-delay records** `<prefix><encoded id>.\xff<lease>-<locker>`: one beside each queue
//!   key of a locker whose service has a lock-delay (see `crate::delay`), put and deleted in the
//!   same transactions as the key, bound to no lease. A record whose key is gone marks a hold
//!   that ended without a clean release.
//!
//! Ids are percent-encoded so they contain no `/` (and `%` and control characters are
//! escaped): the keys of id `a` (`<prefix>a/…`) and of id `a/b` (`<prefix>a%2Fb/…`) never share
//! a prefix, and every id maps to exactly one range. The records of id `e` sort right below its
//! queue (`.` is the byte before `/`, and `\xff` is never part of UTF-8, so no other id's key
//! falls in between): one watch on `[<prefix>e.\xff, <prefix>e0)` sees both, in revision
//! order, and nothing else. No etcd recipe reads them (they lie outside `<prefix>e/`).

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::Arc;

/// The key range of one id: `<prefix><encoded id>/`.
pub(crate) fn id_prefix(prefix: &str, id: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + id.len() + 1);
    out.push_str(prefix);
    for c in id.chars() {
        match c {
            '%' | '/' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c if c.is_control() => {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('/');
    out
}

/// What follows an id's range (or its records' prefix) in one locker's key (or record).
pub(crate) fn locker_suffix(lease: i64, locker: u64) -> String {
    format!("{lease:016x}-{locker:x}")
}

/// The keys of one id: its queue range, the prefix of its lock-delay records, and the end of
/// the range that holds both.
#[derive(Debug, Clone)]
pub(crate) struct IdKeys {
    /// `<prefix><encoded id>/`: the queue.
    pub(crate) range: Arc<str>,
    /// `<prefix><encoded id>.\xff`: the lock-delay records, right below the queue.
    pub(crate) records: Arc<[u8]>,
    /// `<prefix><encoded id>0`: the end (exclusive) of the queue, and of both together.
    pub(crate) end: Arc<[u8]>,
}

impl IdKeys {
    pub(crate) fn new(prefix: &str, id: &str) -> Self {
        let range = id_prefix(prefix, id);
        let stem = &range.as_bytes()[..range.len() - 1];
        let records = [stem, b".\xff"].concat();
        let end = [stem, b"0"].concat();
        IdKeys {
            range: range.into(),
            records: records.into(),
            end: end.into(),
        }
    }

    /// A locker's queue key.
    pub(crate) fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.range)
    }

    /// A locker's lock-delay record.
    pub(crate) fn record(&self, suffix: &str) -> Vec<u8> {
        [&self.records[..], suffix.as_bytes()].concat()
    }

    /// What `key` (from the watch on this id) is: a queue key or a record, and its suffix.
    pub(crate) fn classify<'k>(&self, key: &'k [u8]) -> Option<(Kind, &'k str)> {
        let (kind, rest) = if let Some(rest) = key.strip_prefix(self.range.as_bytes()) {
            (Kind::Queue, rest)
        } else {
            (Kind::Record, key.strip_prefix(&self.records[..])?)
        };
        Some((kind, std::str::from_utf8(rest).ok()?))
    }
}

/// The queue range (`<prefix><encoded id>/`) of the id a key under the prefix belongs to: a
/// queue key's own, or a record's (`<prefix><encoded id>.\xff…` → `<prefix><encoded id>/`).
pub(crate) fn range_of(key: &[u8]) -> Option<Cow<'_, str>> {
    // A record's suffix holds no `\xff` and no `/`: its last `.\xff` ends the id.
    if let Some(at) = key.windows(2).rposition(|w| w == b".\xff") {
        let stem = std::str::from_utf8(&key[..at]).ok()?;
        return Some(Cow::Owned(format!("{stem}/")));
    }
    let end = key.iter().rposition(|&b| b == b'/')?;
    std::str::from_utf8(&key[..=end]).ok().map(Cow::Borrowed)
}

/// Which of an id's keys a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Queue,
    Record,
}

/// The value a semaphore's key starts with: its limit (`limit=N `), then who took it.
pub(crate) fn limit_value(limit: u32, owner: &str) -> Vec<u8> {
    format!("limit={limit} {owner}").into_bytes()
}

/// The limit a queue key's value names (`limit=N` first), if any: a semaphore's key, whose
/// parties check their own limit against it. Waiters never take it from a value (an
/// election's value is the application's).
pub(crate) fn limit_of(value: &[u8]) -> Option<usize> {
    let rest = value.strip_prefix(b"limit=")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverse of the id encoding: proof that it loses nothing.
    fn decode_id(encoded: &str) -> Option<String> {
        let mut bytes = Vec::with_capacity(encoded.len());
        let mut it = encoded.bytes();
        while let Some(b) = it.next() {
            if b == b'%' {
                let hex = [it.next()?, it.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            } else {
                bytes.push(b);
            }
        }
        String::from_utf8(bytes).ok()
    }

    #[test]
    fn a_semaphores_limit_is_read_from_its_keys_value() {
        assert_eq!(limit_of(&limit_value(4, "host=h pid=1")), Some(4));
        assert_eq!(limit_of(b"limit=12"), Some(12));
        assert_eq!(limit_of(b"host=h pid=1 since=1"), None); // a lock's key
        assert_eq!(limit_of(b"10.0.0.1:80"), None); // an election's value
        assert_eq!(limit_of(b"limit=x"), None);
    }

    #[test]
    fn ids_never_share_a_range() {
        let ids = ["a", "a/b", "a/", "a%2Fb", "a%", "/", "", "x\ny", "ünï ✓"];
        let ranges: Vec<String> = ids.iter().map(|id| id_prefix("p/", id)).collect();
        for (i, a) in ranges.iter().enumerate() {
            for (j, b) in ranges.iter().enumerate() {
                if i != j {
                    assert!(
                        !b.starts_with(a.as_str()),
                        "{:?} is inside {:?}",
                        ids[j],
                        ids[i]
                    );
                }
            }
        }
    }

    /// The watch range of an id, `[records, end)`, holds its records and its queue and no key
    /// of any other id, whatever the ids.
    #[test]
    fn an_ids_watch_range_holds_its_keys_and_no_other_ids() {
        let ids = [
            "a", "a.", "a.b", "a0", "a/", "a b", "a.\u{ff}", "aé", "a\u{7f}", "a%", "b",
        ];
        let all: Vec<IdKeys> = ids.iter().map(|id| IdKeys::new("p/", id)).collect();
        for (i, keys) in all.iter().enumerate() {
            let inside = |k: &[u8]| k >= &keys.records[..] && k < &keys.end[..];
            for (j, other) in all.iter().enumerate() {
                let (queue, record) = (other.key("00ab-1"), other.record("00ab-1"));
                assert_eq!(
                    inside(queue.as_bytes()),
                    i == j,
                    "{:?} in {:?}",
                    ids[j],
                    ids[i]
                );
                assert_eq!(
                    inside(&record),
                    i == j,
                    "{:?} record in {:?}",
                    ids[j],
                    ids[i]
                );
                if i == j {
                    assert_eq!(
                        keys.classify(queue.as_bytes()),
                        Some((Kind::Queue, "00ab-1"))
                    );
                    assert_eq!(keys.classify(&record), Some((Kind::Record, "00ab-1")));
                }
            }
        }
    }

    #[test]
    fn encoding_round_trips() {
        for id in ["a", "a/b", "a%2Fb", "x\ny\u{0}", "ünï ✓ 🔒", "100%"] {
            let range = id_prefix("", id);
            let encoded = range.strip_suffix('/').unwrap();
            assert!(!encoded.contains('/'));
            assert_eq!(decode_id(encoded).as_deref(), Some(id));
        }
    }
}
