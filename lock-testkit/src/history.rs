//! A history of lock events from many holders, and a checker for it:
//!
//! - (a) fencing tokens strictly increase in grant order, per id;
//! - (b) no two holds of one id overlap while both holders run: a hold lasts from `Acquired`
//!   to its holder's `Lost` or `Unlocked`, and time a holder spent paused (a frozen process or
//!   runtime) does not count, since a paused holder does nothing;
//! - (c) the protected resource never accepted a write whose token is older than one it had
//!   already accepted (ordered by the resource's own revision).
//!
//! Violations come back as a readable timeline.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The lock was granted with this fencing token.
    Acquired(u64),
    /// The hold with this token was lost (`lost()` resolved, or `is_lost()` was true).
    Lost(u64),
    /// The holder released the hold with this token (recorded just before `unlock()`).
    Unlocked(u64),
    /// A write to the protected resource with this token; `accepted` at resource `revision`.
    Write {
        /// The token sent with the write.
        token: u64,
        /// Whether the resource took it.
        accepted: bool,
        /// The resource's revision of an accepted write (0 if rejected).
        revision: i64,
    },
    /// The holder was paused from `at` until `until` (it recorded this when it resumed).
    Paused {
        /// When the pause ended, as an offset from the history's start.
        until: Duration,
    },
}

/// One event: when, who, which id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Offset from the history's start.
    pub at: Duration,
    /// The client (holder) that recorded it.
    pub client: usize,
    /// The lock id.
    pub id: String,
    /// What happened.
    pub kind: Kind,
}

/// A shared, append-only log of events with monotonic timestamps.
#[derive(Debug)]
pub struct History {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// What a check found when all was well.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Grants seen.
    pub acquisitions: usize,
    /// Holds that ended by loss rather than unlock.
    pub losses: usize,
    /// Writes accepted and rejected by the resource.
    pub writes_accepted: usize,
    /// Writes the resource refused (stale tokens).
    pub writes_rejected: usize,
}

impl History {
    /// An empty history starting now.
    pub fn new() -> Self {
        History {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// The offset of `at` from the start.
    pub fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }

    /// Records an event that happened now.
    pub fn record(&self, client: usize, id: &str, kind: Kind) {
        self.record_at(Instant::now(), client, id, kind);
    }

    /// Records an event that happened at `at`.
    pub fn record_at(&self, at: Instant, client: usize, id: &str, kind: Kind) {
        let event = Event {
            at: self.offset(at),
            client,
            id: id.to_owned(),
            kind,
        };
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }

    /// Every event so far, in time order.
    pub fn events(&self) -> Vec<Event> {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        events.sort_by_key(|e| e.at);
        events
    }

    /// Checks (a), (b) and (c).
    ///
    /// # Errors
    ///
    /// Every violation, each with the timeline of the events involved.
    pub fn check(&self) -> Result<Summary, Violations> {
        check(&self.events())
    }
}

/// A hold: one grant until its end.
#[derive(Debug, Clone)]
struct Hold {
    client: usize,
    token: u64,
    start: Duration,
    end: Duration,
}

/// The violations found; `Display` prints them with their timelines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations(pub Vec<String>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} violation(s):", self.0.len())?;
        for v in &self.0 {
            writeln!(f, "{v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

fn timeline(events: &[Event], from: Duration, to: Duration, id: &str) -> String {
    let mut out = String::new();
    for e in events.iter().filter(|e| {
        e.id == id
            && e.at + Duration::from_millis(5) >= from
            && e.at <= to + Duration::from_millis(5)
    }) {
        let _ = writeln!(
            out,
            "    {:>12.6}s  client {:>3}  {:?}",
            e.at.as_secs_f64(),
            e.client,
            e.kind
        );
    }
    out
}

/// The time in `[start, end]` during which `client` was not paused.
fn running(
    pauses: &[(usize, Duration, Duration)],
    client: usize,
    start: Duration,
    end: Duration,
) -> Vec<(Duration, Duration)> {
    let mut spans = vec![(start, end)];
    for &(_, from, until) in pauses.iter().filter(|p| p.0 == client) {
        spans = spans
            .into_iter()
            .flat_map(|(s, e)| {
                if until <= s || from >= e {
                    vec![(s, e)]
                } else {
                    let mut v = Vec::new();
                    if from > s {
                        v.push((s, from));
                    }
                    if until < e {
                        v.push((until, e));
                    }
                    v
                }
            })
            .collect();
    }
    spans
}

fn overlap(a: &[(Duration, Duration)], b: &[(Duration, Duration)]) -> Duration {
    let mut total = Duration::ZERO;
    for &(s1, e1) in a {
        for &(s2, e2) in b {
            let (s, e) = (s1.max(s2), e1.min(e2));
            if e > s {
                total += e - s;
            }
        }
    }
    total
}

/// Checks a list of events (see [`History::check`]).
///
/// # Errors
///
/// Every violation found.
pub fn check(events: &[Event]) -> Result<Summary, Violations> {
    let mut summary = Summary::default();
    let mut violations = Vec::new();
    let horizon = events.last().map_or(Duration::ZERO, |e| e.at);
    let pauses: Vec<(usize, Duration, Duration)> = events
        .iter()
        .filter_map(|e| match e.kind {
            Kind::Paused { until } => Some((e.client, e.at, until)),
            _ => None,
        })
        .collect();
    let mut by_id: BTreeMap<&str, Vec<Hold>> = BTreeMap::new();
    let mut open: BTreeMap<(usize, &str), Hold> = BTreeMap::new();
    let mut writes = Vec::new();
    for e in events {
        match e.kind {
            Kind::Acquired(token) => {
                summary.acquisitions += 1;
                let hold = Hold {
                    client: e.client,
                    token,
                    start: e.at,
                    end: horizon,
                };
                if let Some(previous) = open.insert((e.client, e.id.as_str()), hold) {
                    violations.push(format!(
                        "client {} was granted {} again (token {token}) while still holding it (token {})",
                        e.client, e.id, previous.token
                    ));
                }
            }
            Kind::Lost(token) | Kind::Unlocked(token) => {
                // Only the end of the hold it names: a late event of an older hold is ignored.
                let key = (e.client, e.id.as_str());
                if open.get(&key).is_some_and(|h| h.token == token) {
                    let mut hold = open.remove(&key).expect("just checked");
                    hold.end = e.at;
                    summary.losses += usize::from(matches!(e.kind, Kind::Lost(_)));
                    by_id.entry(e.id.as_str()).or_default().push(hold);
                }
            }
            Kind::Write {
                token,
                accepted,
                revision,
            } => {
                if accepted {
                    summary.writes_accepted += 1;
                    writes.push((revision, token, e.clone()));
                } else {
                    summary.writes_rejected += 1;
                }
            }
            Kind::Paused { .. } => {}
        }
    }
    for ((_, id), hold) in open {
        by_id.entry(id).or_default().push(hold);
    }
    for (id, mut holds) in by_id {
        holds.sort_by_key(|h| h.start);
        // (a) tokens strictly increase in grant order.
        for pair in holds.windows(2) {
            if pair[1].token <= pair[0].token {
                violations.push(format!(
                    "(a) lock {id}: token {} granted after token {}; tokens must strictly increase\n{}",
                    pair[1].token,
                    pair[0].token,
                    timeline(events, pair[0].start, pair[1].start, id)
                ));
            }
        }
        // (b) no overlap while both run.
        for (i, a) in holds.iter().enumerate() {
            for b in holds.iter().skip(i + 1).take_while(|b| b.start < a.end) {
                let both = overlap(
                    &running(&pauses, a.client, a.start, a.end),
                    &running(&pauses, b.client, b.start, b.end),
                );
                if !both.is_zero() {
                    violations.push(format!(
                        "(b) lock {id}: client {} (token {}) and client {} (token {}) both held it for {:?} while running\n{}",
                        a.client,
                        a.token,
                        b.client,
                        b.token,
                        both,
                        timeline(events, a.start, a.end.max(b.end), id)
                    ));
                }
            }
        }
    }
    // (c) accepted writes never go back in token order.
    writes.sort_by_key(|w| w.0);
    let mut newest: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for (revision, token, e) in &writes {
        let seen = newest.entry(e.id.as_str()).or_insert((0, 0));
        if *token < seen.0 {
            violations.push(format!(
                "(c) resource {}: accepted token {token} at revision {revision} after token {} at revision {}\n{}",
                e.id,
                seen.0,
                seen.1,
                timeline(events, e.at.saturating_sub(Duration::from_secs(1)), e.at, &e.id)
            ));
        } else {
            *seen = (*token, *revision);
        }
    }
    if violations.is_empty() {
        Ok(summary)
    } else {
        Err(Violations(violations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ms: u64, client: usize, kind: Kind) -> Event {
        Event {
            at: Duration::from_millis(ms),
            client,
            id: "x".into(),
            kind,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let events = [
            ev(0, 1, Kind::Acquired(10)),
            ev(
                5,
                1,
                Kind::Write {
                    token: 10,
                    accepted: true,
                    revision: 11,
                },
            ),
            ev(10, 1, Kind::Unlocked(10)),
            ev(11, 2, Kind::Acquired(12)),
            ev(20, 2, Kind::Lost(12)),
            ev(21, 3, Kind::Acquired(13)),
        ];
        let summary = check(&events).unwrap();
        assert_eq!(
            (
                summary.acquisitions,
                summary.losses,
                summary.writes_accepted
            ),
            (3, 1, 1)
        );
    }

    #[test]
    fn overlapping_holders_are_caught_with_a_timeline() {
        let events = [
            ev(0, 1, Kind::Acquired(10)),
            ev(5, 2, Kind::Acquired(11)),
            ev(10, 1, Kind::Unlocked(10)),
        ];
        let err = check(&events).unwrap_err();
        assert!(
            err.0[0].starts_with("(b) lock x: client 1 (token 10) and client 2 (token 11)"),
            "{err}"
        );
        assert!(
            err.to_string().contains("client   2  Acquired(11)"),
            "{err}"
        );
    }

    #[test]
    fn a_paused_holder_does_not_overlap_while_paused() {
        // Client 1 is frozen from 5 to 50 ms; client 2 holds from 30 ms; client 1 sees the loss
        // the instant it resumes (50 ms).
        let events = [
            ev(0, 1, Kind::Acquired(10)),
            ev(
                5,
                1,
                Kind::Paused {
                    until: Duration::from_millis(50),
                },
            ),
            ev(30, 2, Kind::Acquired(11)),
            ev(50, 1, Kind::Lost(10)),
        ];
        check(&events).unwrap();
        // Had it noticed only 10 ms after resuming, that is an overlap.
        let late = [
            events[0].clone(),
            events[1].clone(),
            events[2].clone(),
            ev(60, 1, Kind::Lost(10)),
        ];
        assert!(check(&late).is_err());
    }

    #[test]
    fn decreasing_tokens_and_stale_writes_are_caught() {
        let events = [
            ev(0, 1, Kind::Acquired(10)),
            ev(1, 1, Kind::Unlocked(10)),
            ev(2, 2, Kind::Acquired(9)),
            ev(
                3,
                2,
                Kind::Write {
                    token: 9,
                    accepted: true,
                    revision: 20,
                },
            ),
            ev(
                4,
                1,
                Kind::Write {
                    token: 10,
                    accepted: true,
                    revision: 19,
                },
            ),
        ];
        let err = check(&events).unwrap_err();
        assert!(err.0.iter().any(|v| v.starts_with("(a)")), "{err}");
        assert!(err.0.iter().any(|v| v.starts_with("(c)")), "{err}");
    }
}
