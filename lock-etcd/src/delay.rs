//! The lock-delay: a hold whose key vanished without a clean release is granted to nobody else
//! until its holder must know it lost it.
//!
//! etcd can revoke a lease before its TTL (a leader that was stopped or starved past the TTL
//! comes back, etcd issues 15247 / 12528), and anyone can delete a key. Either way the holder
//! learns late — from its watch, or at its own deadline (TTL − margin after its last
//! acknowledged keep-alive) if it is cut off — while the next waiter sees the key go at once.
//! Chubby and Consul answer this with a lock-delay; here it is computed from the holder's own
//! deadline:
//!
//! - Beside its queue key, a locker puts a **record** (`crate::keys`), in the same transaction
//!   and bound to no lease, whose value is the delay its holds ask for: by default the
//!   session's TTL (its deadline is at most TTL − margin after the last keep-alive it sent
//!   before the key vanished; the margin covers clocks that run at slightly different rates).
//! - Every clean end deletes the key and the record in one transaction (`unlock()`, a dropped
//!   `Held`, a closed or dropped session or service, an abandoned attempt). A holder that
//!   learns of its loss deletes its record then: it knows.
//! - A record whose key is gone is **stale**: the hold ended behind its holder's back. A waiter
//!   is not granted while a stale record older than its own key may have been a holder; the
//!   service that sees it deletes it once the delay has passed since it saw it ([`Delays`]),
//!   or at once if the key was never the first (never held). Newcomers see it too: taking the
//!   lock at once needs the id's whole range, records included, to hold nothing but their own.
//!
//! With `lock-delay=0` a service writes no records: its holds get no delay (and its waiters
//! confirm with a read that their key is still first before they take the lock, as before).

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use lock_core::{Error, Result};

use crate::error::request;

/// How long a hold that ended without a clean release keeps the lock from others: the
/// `lock-delay` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockDelay {
    /// The holder's session TTL (`lock-delay=auto`, the default): the longest its deadline can
    /// run on after its key vanished.
    #[default]
    Auto,
    /// A fixed delay (`lock-delay=5s`), as Consul's: shorter than the TTL protects less (a
    /// holder cut off may still believe it holds when the next is granted), longer waits
    /// longer.
    Fixed(Duration),
    /// No delay (`lock-delay=0`): a waiter is granted as soon as the key is gone, and a holder
    /// cut off when etcd revokes its lease early may overlap with the next holder until it
    /// finds out (the fencing token then protects the resource).
    Off,
}

impl LockDelay {
    /// Parses the option's value: `auto`, `0` (or `off`), or a duration.
    pub(crate) fn parse(value: &str) -> Result<Self> {
        match value.trim() {
            "auto" => Ok(LockDelay::Auto),
            "0" | "off" => Ok(LockDelay::Off),
            other => match humantime::parse_duration(other) {
                Ok(d) if d.is_zero() => Ok(LockDelay::Off),
                Ok(d) => Ok(LockDelay::Fixed(d)),
                Err(_) => Err(Error::InvalidConnectionString(format!(
                    "option `lock-delay`: `{other}` is not `auto`, `0` or a duration like `5s`"
                ))),
            },
        }
    }

    /// The delay a hold of a session with `ttl` asks for; `None` when off.
    pub(crate) fn for_ttl(self, ttl: Duration) -> Option<Duration> {
        match self {
            LockDelay::Auto => Some(ttl),
            LockDelay::Fixed(d) => Some(d),
            LockDelay::Off => None,
        }
    }
}

impl fmt::Display for LockDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockDelay::Auto => f.write_str("auto"),
            LockDelay::Fixed(d) => write!(f, "{}ms", d.as_millis()),
            LockDelay::Off => f.write_str("0"),
        }
    }
}

/// The value of a record: the delay its holds ask for.
pub(crate) fn record_value(delay: Duration) -> String {
    format!("lock-delay-ms={}", delay.as_millis())
}

/// The delay a record asks for. A record this version cannot read asks for the longest delay
/// a session may have: safe, if slow.
pub(crate) fn parse_record(value: &[u8]) -> Duration {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| {
            v.split_whitespace()
                .find_map(|w| w.strip_prefix("lock-delay-ms="))
        })
        .and_then(|ms| ms.parse().ok())
        .map_or(UNREADABLE, Duration::from_millis)
}

/// The delay of a record whose value cannot be read.
const UNREADABLE: Duration = Duration::from_secs(60);

/// How long a service tries to delete a stale record before it leaves it to others.
const RESOLVE_FOR: Duration = Duration::from_secs(60);

/// Stale records this service deletes once their delay has passed. One task per record, each
/// started once (whichever waiter, mirror or `try_lock` sees it first), each ending when the
/// record is gone or after [`RESOLVE_FOR`] of failed tries.
pub(crate) struct Delays {
    client: etcd_client::Client,
    limit: Duration,
    pending: Mutex<HashSet<(Vec<u8>, i64)>>,
}

impl Delays {
    pub(crate) fn new(client: etcd_client::Client, limit: Duration) -> Self {
        Delays {
            client,
            limit,
            pending: Mutex::new(HashSet::new()),
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashSet<(Vec<u8>, i64)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes stale record `key` (created at `created`) once `at` has passed; a record re-made
    /// since (another create revision) is left alone. Does nothing if this service already
    /// waits to delete it.
    pub(crate) fn resolve(self: &Arc<Self>, key: Vec<u8>, created: i64, at: Instant) {
        if !self.pending().insert((key.clone(), created)) {
            return;
        }
        let delays = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let txn = Txn::new()
                .when([Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    created,
                )])
                .and_then([TxnOp::delete(key.clone(), None)]);
            let kv = delays.client.kv_client();
            let give_up = Instant::now() + RESOLVE_FOR;
            let mut pause = Duration::from_millis(100);
            loop {
                let deleted = request("ending a lock-delay", delays.limit, || {
                    let (mut kv, txn) = (kv.clone(), txn.clone());
                    async move { kv.txn(txn).await }
                })
                .await;
                if deleted.is_ok() || Instant::now() + pause >= give_up {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            delays.pending().remove(&(key, created));
        });
    }
}

impl fmt::Debug for Delays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delays")
            .field("pending", &self.pending().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_takes_auto_zero_and_durations() {
        assert_eq!(LockDelay::parse("auto").unwrap(), LockDelay::Auto);
        assert_eq!(LockDelay::parse("0").unwrap(), LockDelay::Off);
        assert_eq!(LockDelay::parse("0s").unwrap(), LockDelay::Off);
        assert_eq!(
            LockDelay::parse("1m 30s").unwrap(),
            LockDelay::Fixed(Duration::from_secs(90))
        );
        assert_eq!(
            LockDelay::parse("250ms").unwrap(),
            LockDelay::Fixed(Duration::from_millis(250))
        );
        for bad in ["", "soon", "5", "-1s", "5 parsecs"] {
            assert!(LockDelay::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_record_says_its_delay_and_an_unreadable_one_asks_for_the_longest() {
        let value = record_value(Duration::from_millis(3000));
        assert_eq!(parse_record(value.as_bytes()), Duration::from_secs(3));
        assert_eq!(parse_record(b"garbage"), UNREADABLE);
    }
}
