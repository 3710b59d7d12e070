//! A history of lock events from many holders, and a checker for it:
//!
//! - (a) fencing tokens strictly increase in grant order, per id (for a semaphore: no token is
//!   granted twice);
//! - (b) no two holds of one id overlap while both holders run: a hold lasts from `Acquired`
//!   to its holder's `Lost` or `Unlocked`, and time a holder spent paused (a frozen process or
//!   runtime) does not count, since a paused holder does nothing. An id declared a semaphore of
//!   `n` permits ([`History::set_limit`]) may have up to `n` holds running at once, never more;
//!   an election is an id of one (one leader per term: its token);
//! - (c) the protected resource never accepted a write whose token is older than one it had
//!   already accepted (ordered by the resource's own revision).
//!
//! A hold ends when its holder's view changed: a `Lost` event is recorded at the moment the
//! backend's loss record ([`Held::loss`](lock_core::Held::loss)) gives — the deadline that passed, the watch event
//! that removed the key — not when a task got round to noticing, so a starved process is judged
//! by what its `is_lost()` said, without any time tolerance.
//!
//! Violations come back as a readable timeline: every event of the id around it, each loss
//! with its cause as the backend recorded it, and the faults injected meanwhile.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lock_core::{Loss, LossCause, Lost};

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
    /// A fault was injected from `at` until `until`; the event's `client` names what it hit
    /// (a client or a member, as `what` says; [`Event::EVERYONE`] for the whole cluster).
    Fault {
        /// What was done, e.g. "member paused".
        what: &'static str,
        /// When it was lifted, as an offset from the history's start.
        until: Duration,
    },
}

/// One event: when, who, which id.
#[derive(Debug, Clone)]
pub struct Event {
    /// Offset from the history's start.
    pub at: Duration,
    /// The client (holder) that recorded it.
    pub client: usize,
    /// The lock id (empty for faults: they concern every id).
    pub id: String,
    /// What happened.
    pub kind: Kind,
    /// The hold a `Lost` event is about, and its [`Lost::loss`] when the event was recorded.
    /// Violations print the loss as the hold reports it then (with evidence that arrived
    /// later), or this snapshot.
    pub hold: Option<(Lost, Option<Loss>)>,
}

impl Event {
    /// The `client` of a fault that hit everyone (the whole cluster).
    pub const EVERYONE: usize = usize::MAX;

    /// Why the hold of a `Lost` event ended, as best known.
    pub fn loss(&self) -> Option<Loss> {
        let (held, snapshot) = self.hold.as_ref()?;
        match held.loss() {
            Some(now) if now.cause() != LossCause::Unknown => Some(now),
            _ => snapshot.clone(),
        }
    }
}

/// A shared, append-only log of events with monotonic timestamps.
#[derive(Debug)]
pub struct History {
    start: Instant,
    events: Mutex<Vec<Event>>,
    /// Ids with more than one permit (semaphores), and how many.
    limits: Mutex<BTreeMap<String, usize>>,
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
            limits: Mutex::default(),
        }
    }

    /// Declares `id` a semaphore of `limit` permits: up to `limit` of its holds may run at once.
    pub fn set_limit(&self, id: &str, limit: usize) {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits.insert(id.to_owned(), limit);
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
        self.push(Event {
            at: self.offset(at),
            client,
            id: id.to_owned(),
            kind,
            hold: None,
        });
    }

    /// Records that the hold with `token` (granted to `client` on `id`, watched by `lost`) is
    /// lost, at the moment its holder's view changed ([`Loss::at`](lock_core::Loss::at); now,
    /// if the backend did not say). Call it once `lost.is_lost()` is true.
    pub fn record_lost(&self, client: usize, id: &str, token: u64, lost: &Lost) {
        let loss = lost.loss();
        let at = loss
            .as_ref()
            .and_then(Loss::at)
            .unwrap_or_else(Instant::now);
        self.push(Event {
            at: self.offset(at),
            client,
            id: id.to_owned(),
            kind: Kind::Lost(token),
            hold: Some((lost.clone(), loss)),
        });
    }

    /// Records a fault injected from `from` until `until` on `target` (a client or member
    /// number as `what` says, or [`Event::EVERYONE`]).
    pub fn record_fault(&self, what: &'static str, target: usize, from: Instant, until: Instant) {
        self.push(Event {
            at: self.offset(from),
            client: target,
            id: String::new(),
            kind: Kind::Fault {
                what,
                until: self.offset(until),
            },
            hold: None,
        });
    }

    fn push(&self, event: Event) {
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
        let limits = self
            .limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        check_with_limits(&self.events(), &limits)
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

/// The events of `id` from `from` to `to` (a few milliseconds either side), each loss with its
/// recorded cause, then the faults that were active in the three seconds before `from` and up
/// to `to`.
fn timeline(events: &[Event], from: Duration, to: Duration, id: &str) -> String {
    let mut out = String::new();
    let near = Duration::from_millis(5);
    for e in events
        .iter()
        .filter(|e| e.id == id && e.at + near >= from && e.at <= to + near)
    {
        let _ = write!(
            out,
            "    {:>12.6}s  client {:>3}  {:?}",
            e.at.as_secs_f64(),
            e.client,
            e.kind
        );
        if let Some(loss) = e.loss() {
            let _ = write!(out, "  <- {loss}");
        }
        out.push('\n');
    }
    let window = from.saturating_sub(Duration::from_secs(3));
    let faults: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.kind, Kind::Fault { until, .. } if until >= window && e.at <= to))
        .collect();
    if !faults.is_empty() {
        out.push_str("    faults meanwhile:\n");
    }
    for e in faults {
        if let Kind::Fault { what, until } = e.kind {
            let target = if e.client == Event::EVERYONE {
                String::new()
            } else {
                format!(" #{}", e.client)
            };
            let _ = writeln!(
                out,
                "    {:>12.6}s  to {:>10.6}s  {what}{target}",
                e.at.as_secs_f64(),
                until.as_secs_f64()
            );
        }
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

/// The first moment more than `limit` of `holds` run at once (paused time not counted), and
/// those holds.
fn most_running<'h>(
    pauses: &[(usize, Duration, Duration)],
    holds: &'h [Hold],
    limit: usize,
) -> Option<(Duration, Vec<&'h Hold>)> {
    // Each running span's start and end; at one instant, ends come first (touching is no
    // overlap).
    let mut edges: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, hold) in holds.iter().enumerate() {
        for (start, end) in running(pauses, hold.client, hold.start, hold.end) {
            if end > start {
                edges.push((start, true, i));
                edges.push((end, false, i));
            }
        }
    }
    edges.sort_by_key(|&(at, starts, _)| (at, starts));
    let mut now: Vec<usize> = Vec::new();
    for (at, starts, i) in edges {
        if starts {
            now.push(i);
            if now.len() > limit {
                return Some((at, now.iter().map(|&i| &holds[i]).collect()));
            }
        } else if let Some(pos) = now.iter().position(|&j| j == i) {
            now.swap_remove(pos);
        }
    }
    None
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
    check_with_limits(events, &BTreeMap::new())
}

/// Checks a list of events, with ids of more than one permit (see [`History::set_limit`]).
///
/// # Errors
///
/// Every violation found.
pub fn check_with_limits(
    events: &[Event],
    limits: &BTreeMap<String, usize>,
) -> Result<Summary, Violations> {
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
            Kind::Paused { .. } | Kind::Fault { .. } => {}
        }
    }
    for ((_, id), hold) in open {
        by_id.entry(id).or_default().push(hold);
    }
    for (id, mut holds) in by_id {
        holds.sort_by_key(|h| h.start);
        let limit = limits.get(id).copied().unwrap_or(1);
        if limit > 1 {
            // (a) for a semaphore: every permit's token is its own (permits granted at about
            // the same time need not be granted in token order: their tokens follow the order
            // their parties queued in).
            let mut tokens: Vec<u64> = holds.iter().map(|h| h.token).collect();
            tokens.sort_unstable();
            for pair in tokens.windows(2).filter(|p| p[0] == p[1]) {
                violations.push(format!(
                    "(a) semaphore {id}: token {} granted twice; every permit's token is its own",
                    pair[0]
                ));
            }
        }
        // (a) tokens strictly increase in grant order.
        for pair in holds.windows(2).filter(|_| limit == 1) {
            if pair[1].token <= pair[0].token {
                violations.push(format!(
                    "(a) lock {id}: token {} granted after token {}; tokens must strictly increase\n{}",
                    pair[1].token,
                    pair[0].token,
                    timeline(events, pair[0].start, pair[1].start, id)
                ));
            }
        }
        // (b) at most `limit` holds run at once (no overlap, for a lock).
        if let Some(&limit) = limits.get(id).filter(|&&l| l > 1) {
            if let Some((at, running_holds)) = most_running(&pauses, &holds, limit) {
                let names: Vec<String> = running_holds
                    .iter()
                    .map(|h| format!("client {} (token {})", h.client, h.token))
                    .collect();
                violations.push(format!(
                    "(b) semaphore {id} of {limit}: {} holds running at once at {at:?}: {}\n{}",
                    running_holds.len(),
                    names.join(", "),
                    timeline(events, at.saturating_sub(Duration::from_secs(1)), at, id)
                ));
            }
            continue;
        }
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
            hold: None,
        }
    }

    #[test]
    fn a_semaphore_may_have_up_to_its_limit_of_holds_and_no_more() {
        let events = vec![
            ev(0, 1, Kind::Acquired(1)),
            ev(1, 2, Kind::Acquired(2)),
            ev(5, 1, Kind::Unlocked(1)),
            ev(5, 3, Kind::Acquired(3)),
            ev(9, 2, Kind::Unlocked(2)),
            ev(9, 3, Kind::Unlocked(3)),
        ];
        let two = BTreeMap::from([("x".to_owned(), 2)]);
        assert!(check_with_limits(&events, &two).is_ok());
        assert!(check(&events).is_err(), "as a lock, holds 1 and 2 overlap");
        let three_at_once = vec![
            ev(0, 1, Kind::Acquired(1)),
            ev(1, 2, Kind::Acquired(2)),
            ev(2, 3, Kind::Acquired(3)),
            ev(5, 1, Kind::Unlocked(1)),
            ev(9, 2, Kind::Unlocked(2)),
            ev(9, 3, Kind::Unlocked(3)),
        ];
        let err = check_with_limits(&three_at_once, &two).unwrap_err();
        assert!(err.0[0].contains("3 holds running at once"), "{err}");
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
    fn a_violation_shows_why_each_hold_ended_and_the_faults_around_it() {
        let history = History::new();
        let signal = std::sync::Arc::new(lock_core::backend::Signal::new());
        let held = lock_core::backend::Hold::new(signal.clone(), signal.epoch(), None, 10);
        let start = Instant::now();
        history.record_fault("client slowed", 1, start, start + Duration::from_millis(40));
        history.record(1, "x", Kind::Acquired(10));
        std::thread::sleep(Duration::from_millis(5));
        history.record(2, "x", Kind::Acquired(11));
        std::thread::sleep(Duration::from_millis(5));
        signal.fire_because(lock_core::LossCause::Removed, "key deleted at revision 12");
        history.record_lost(1, "x", 10, &held.lost());
        let report = history.check().unwrap_err().to_string();
        assert!(
            report.contains("Lost(10)  <- removed by someone else: key deleted at revision 12"),
            "{report}"
        );
        assert!(report.contains("faults meanwhile:"), "{report}");
        assert!(report.contains("client slowed #1"), "{report}");
    }

    #[test]
    fn a_loss_counts_from_when_the_holder_knew_not_when_it_was_recorded() {
        // A deadline passed before the next grant; the holder's watcher ran late (a starved
        // process): the hold ends at the deadline, so there is no overlap.
        let history = History::new();
        let signal = std::sync::Arc::new(lock_core::backend::Signal::new());
        let deadline = std::sync::Arc::new(lock_core::backend::Deadline::new(
            Instant::now() + Duration::from_millis(5),
        ));
        let held =
            lock_core::backend::Hold::new(signal.clone(), signal.epoch(), Some(deadline), 10);
        history.record(1, "x", Kind::Acquired(10));
        std::thread::sleep(Duration::from_millis(20));
        history.record(2, "x", Kind::Acquired(11));
        std::thread::sleep(Duration::from_millis(5));
        history.record_lost(1, "x", 10, &held.lost());
        history.check().unwrap();
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
