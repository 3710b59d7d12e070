//! Cancellation at every await point: `lock()`, `try_lock()`, `unlock()` and `close()` are
//! polled once, twice, … (each time after the backend woke them) or for a few milliseconds,
//! then dropped, in three rounds. Afterwards the id must be free for another party within [`FREED_WITHIN`], the
//! cancelled locker must hold nothing and be able to lock again, and no fencing token may be
//! granted twice.

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use lock_core::{Error, Held, Locker, Service, Session};

use crate::conformance::shared::two_services;
use crate::conformance::{expect_err, PATIENCE};
use crate::{ensure, Failure, Harness, Outcome};

/// How soon an id must be free for another party after a cancelled operation, when the
/// backend answers.
pub const FREED_WITHIN: Duration = Duration::from_secs(1);

/// How many times the suite runs through every cut.
const ROUNDS: usize = 3;

/// The most wake-ups the suite cancels after; operations that need more are also cut by time.
const MAX_POLLS: usize = 12;

/// Cuts by time, for work the backend does without waking the future (requests in flight).
const AFTER: [u64; 6] = [1, 2, 5, 10, 20, 50];

/// Where an operation is dropped.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// After it returned `Pending` this many times (each after a wake-up).
    Polls(usize),
    /// After this long.
    After(Duration),
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::Polls(n) => write!(f, "dropped after {n} pending poll(s)"),
            Cut::After(d) => write!(f, "dropped after {d:?}"),
        }
    }
}

/// Every cut point, in three rounds (where a cut races the backend, a request in flight, one
/// round may catch what another misses): by polls, then by time. Poll cuts past the point where
/// the operation completed or went quiet reach nothing new and are skipped, until the next round.
struct Cuts {
    all: Vec<Cut>,
    next: usize,
    polls_done: bool,
}

impl Cuts {
    fn new() -> Self {
        let round = (1..=MAX_POLLS)
            .map(Cut::Polls)
            .chain(AFTER.map(|ms| Cut::After(Duration::from_millis(ms))));
        Cuts {
            all: (0..ROUNDS).flat_map(|_| round.clone()).collect(),
            next: 0,
            polls_done: false,
        }
    }

    /// The operation completed, or waits on something outside: later poll cuts of this round
    /// reach the same point.
    fn polls_done(&mut self) {
        self.polls_done = true;
    }
}

impl Iterator for Cuts {
    type Item = Cut;

    fn next(&mut self) -> Option<Cut> {
        loop {
            let cut = *self.all.get(self.next)?;
            self.next += 1;
            self.polls_done &= !matches!(cut, Cut::Polls(1)); // a new round
            if !(self.polls_done && matches!(cut, Cut::Polls(_))) {
                return Some(cut);
            }
        }
    }
}

/// What became of an operation run up to a cut.
enum Ran<T> {
    /// It completed first.
    Completed(T),
    /// It was dropped, pending, at the cut.
    Dropped,
    /// It was dropped because it was not woken within `quiet` of its last poll: it waits on
    /// something outside (a holder, a timer), so later poll cuts reach the same point.
    Quiet,
}

/// Runs `fut` up to `cut`.
async fn run<F: Future>(h: &Harness, cut: Cut, fut: F) -> Ran<F::Output> {
    match cut {
        Cut::Polls(n) => {
            let mut fut = pin!(fut);
            let mut pending = 0;
            let polled = poll_fn(|cx| match fut.as_mut().poll(cx) {
                Poll::Ready(out) => Poll::Ready(Some(out)),
                Poll::Pending => {
                    pending += 1;
                    if pending >= n {
                        Poll::Ready(None)
                    } else {
                        Poll::Pending
                    }
                }
            });
            let quiet = h.settle().max(Duration::from_millis(200));
            match tokio::time::timeout(quiet, polled).await {
                Ok(Some(out)) => Ran::Completed(out),
                Ok(None) => Ran::Dropped,
                Err(_) => Ran::Quiet,
            }
        }
        Cut::After(limit) => match tokio::time::timeout(limit, fut).await {
            Ok(out) => Ran::Completed(out),
            Err(_) => Ran::Dropped,
        },
    }
}

/// Fencing tokens seen on one id, in grant order: each must exceed every earlier one.
#[derive(Default)]
struct Tokens(u64);

impl Tokens {
    fn saw(&mut self, held: &Held, what: &str) -> Outcome {
        let token = held.fencing_token();
        ensure!(
            token > self.0,
            "{what}: fencing token {token} granted after token {} (reused or out of order)",
            self.0
        );
        self.0 = token;
        Ok(())
    }
}

/// Two lockers of one id, in two services (or two sessions of one, for a backend whose
/// services are separate), and the sessions and services they need.
struct Pair {
    a: Locker,
    b: Locker,
    /// A third locker of `b`'s session.
    c: Locker,
    tokens: Tokens,
    _sessions: (Session, Session),
    services: (Service, Service),
}

/// How a check makes its lockers: of a lock, or of a semaphore of one permit.
type Make = fn(&Session, &str) -> lock_core::Result<Locker>;

fn lock_locker(session: &Session, id: &str) -> lock_core::Result<Locker> {
    Ok(session.new_locker(id))
}

fn permit_locker(session: &Session, id: &str) -> lock_core::Result<Locker> {
    session.new_semaphore(id, 1)
}

impl Pair {
    async fn new(h: &Harness, name: &str) -> Result<Pair, Failure> {
        Pair::made(h, name, lock_locker).await
    }

    async fn made(h: &Harness, name: &str, make: Make) -> Result<Pair, Failure> {
        let (one, two) = two_services(h).await?;
        let id = h.id(name);
        let (s1, s2) = (
            one.new_session(h.config()).await?,
            two.new_session(h.config()).await?,
        );
        Ok(Pair {
            a: make(&s1, &id)?,
            b: make(&s2, &id)?,
            c: make(&s2, &id)?,
            tokens: Tokens::default(),
            _sessions: (s1, s2),
            services: (one, two),
        })
    }

    async fn close(self) -> Outcome {
        let Pair { services, .. } = self;
        services.0.close().await?;
        Ok(())
    }
}

/// The id is free: `other` is granted it within [`FREED_WITHIN`] and releases it again.
async fn free(other: &mut Locker, tokens: &mut Tokens, what: &str) -> Outcome {
    let held = match tokio::time::timeout(FREED_WITHIN, other.lock()).await {
        Ok(granted) => granted?,
        Err(_) => {
            return Err(Failure::new(format!(
                "{what}: the id was not free for another party within {FREED_WITHIN:?}"
            )))
        }
    };
    tokens.saw(&held, what)?;
    other.unlock().await?;
    Ok(())
}

/// After a cancelled acquisition that did not complete, `locker` holds nothing.
async fn holds_nothing(locker: &Locker, what: &str) -> Outcome {
    expect_err(
        &format!("{what}: unlock() by the cancelled locker"),
        locker.unlock().await,
        "NotHeld",
        |e| matches!(e, Error::NotHeld),
    )
}

/// Which acquisition a check cancels.
#[derive(Clone, Copy)]
enum Acquire {
    Lock,
    TryLock,
}

/// An acquisition on a free id, dropped at every point: the id is free afterwards, the locker
/// holds nothing (or, if it completed, holds a fresh token), and it can lock again.
async fn acquisition_cancelled(h: &Harness, name: &str, op: Acquire, make: Make) -> Outcome {
    let mut p = Pair::made(h, name, make).await?;
    let mut cuts = Cuts::new();
    while let Some(cut) = cuts.next() {
        let (a, what) = (
            &mut p.a,
            match op {
                Acquire::Lock => format!("lock() on a free id {cut}"),
                Acquire::TryLock => format!("try_lock() on a free id {cut}"),
            },
        );
        let ran = match op {
            Acquire::Lock => run(h, cut, async { a.lock().await.map(Some) }).await,
            Acquire::TryLock => run(h, cut, a.try_lock()).await,
        };
        match ran {
            Ran::Completed(granted) => {
                cuts.polls_done();
                let held = granted?.ok_or_else(|| {
                    Failure::new(format!("{what}: try_lock() on a free id returned None"))
                })?;
                p.tokens.saw(&held, &what)?;
                a.unlock().await?;
            }
            Ran::Quiet => {
                cuts.polls_done();
                holds_nothing(a, &what).await?;
            }
            Ran::Dropped => holds_nothing(a, &what).await?,
        }
        free(&mut p.b, &mut p.tokens, &what).await?;
        locks_again(&mut p.a, &mut p.tokens, &what).await?;
    }
    p.close().await
}

/// `lock()` on a free id, dropped at every point: the id is free afterwards, the locker holds
/// nothing (or, if it completed, holds a fresh token), and it can lock again.
pub async fn lock_cancelled_at_any_point_leaves_nothing(h: &Harness) -> Outcome {
    acquisition_cancelled(h, "cancel-lock", Acquire::Lock, lock_locker).await
}

/// A semaphore's `lock()` and `try_lock()` on a free permit, and its `lock()` queued behind
/// the permit's holder, dropped at every point: as for a lock (a semaphore of one permit).
pub async fn semaphore_acquisition_cancelled_at_any_point_leaves_nothing(h: &Harness) -> Outcome {
    if !h.semaphores() {
        h.skip(
            "semaphore_acquisition_cancelled_at_any_point_leaves_nothing",
            "the harness declares no semaphores",
        );
        return Ok(());
    }
    acquisition_cancelled(h, "cancel-permit", Acquire::Lock, permit_locker).await?;
    acquisition_cancelled(h, "cancel-try-permit", Acquire::TryLock, permit_locker).await?;
    queued_cancelled(h, "cancel-queued-permit", permit_locker).await
}

/// `try_lock()` on a free id, dropped at every point: as for `lock()`.
pub async fn try_lock_cancelled_at_any_point_leaves_nothing(h: &Harness) -> Outcome {
    acquisition_cancelled(h, "cancel-try", Acquire::TryLock, lock_locker).await
}

/// After a cut: the cancelled locker can lock again (a fresh token) and unlock.
async fn locks_again(locker: &mut Locker, tokens: &mut Tokens, what: &str) -> Outcome {
    let again = tokio::time::timeout(PATIENCE, locker.lock())
        .await
        .map_err(|_| {
            Failure::new(format!(
                "{what}: the cancelled locker could not lock again within {PATIENCE:?}"
            ))
        })??;
    tokens.saw(&again, &format!("{what}, then lock() again"))?;
    locker.unlock().await?;
    Ok(())
}

/// `lock()` queued behind another holder, dropped at every point: once the holder unlocks, a
/// third party is granted at once, and the cancelled locker holds nothing.
pub async fn queued_lock_cancelled_at_any_point_leaves_nothing(h: &Harness) -> Outcome {
    queued_cancelled(h, "cancel-queued", lock_locker).await
}

async fn queued_cancelled(h: &Harness, name: &str, make: Make) -> Outcome {
    let mut p = Pair::made(h, name, make).await?;
    let (a, holder, b) = (&mut p.a, &mut p.c, &mut p.b);
    let mut cuts = Cuts::new();
    while let Some(cut) = cuts.next() {
        let what = format!("lock() queued behind a holder {cut}");
        let held = holder.lock().await?;
        p.tokens.saw(&held, &what)?;
        match run(h, cut, a.lock()).await {
            Ran::Completed(granted) => {
                let held = granted.map_err(|e| Failure::new(format!("{what}: {e}")))?;
                return Err(Failure::new(format!(
                    "lock() was granted an id another party holds (token {}) before it could \
                     be cancelled: no exclusion (the cancellation was never tried)",
                    held.fencing_token()
                )));
            }
            Ran::Quiet => cuts.polls_done(),
            Ran::Dropped => {}
        }
        holder.unlock().await?;
        holds_nothing(a, &what).await?;
        free(b, &mut p.tokens, &what).await?;
    }
    locks_again(a, &mut p.tokens, "after every cut").await?;
    p.close().await
}

/// A release cancelled at a cut: the hold must be lost and the id free for another party within
/// [`FREED_WITHIN`].
#[track_caller]
fn released(ran: Ran<lock_core::Result<()>>, cuts: &mut Cuts, what: &str) -> Outcome {
    match ran {
        Ran::Completed(Err(e)) => return Err(Failure::new(format!("{what} failed: {e}"))),
        Ran::Completed(Ok(())) | Ran::Quiet => cuts.polls_done(),
        Ran::Dropped => {}
    }
    Ok(())
}

/// `unlock()` dropped at every point after its first poll: the release is committed — the hold
/// is lost and the id free for another party within [`FREED_WITHIN`] — and the locker can lock
/// again with a fresh token.
pub async fn unlock_cancelled_at_any_point_releases(h: &Harness) -> Outcome {
    let mut p = Pair::new(h, "cancel-unlock").await?;
    let (a, b) = (&mut p.a, &mut p.b);
    let mut cuts = Cuts::new();
    while let Some(cut) = cuts.next() {
        let what = format!("unlock() {cut}");
        let held = a.lock().await?;
        p.tokens.saw(&held, &format!("lock() before {what}"))?;
        released(run(h, cut, a.unlock()).await, &mut cuts, &what)?;
        free(b, &mut p.tokens, &what).await?;
        ensure!(
            held.is_lost(),
            "{what}: another party was granted the id, but the hold is not lost"
        );
        holds_nothing(a, &what).await?;
    }
    p.close().await
}

/// A session's `close()` dropped at every point after its first poll, while every handle of
/// the session lives: the close is committed, so its hold is lost and the id free for another
/// party within [`FREED_WITHIN`].
pub async fn close_cancelled_at_any_point_ends_the_session(h: &Harness) -> Outcome {
    let mut p = Pair::new(h, "cancel-close").await?;
    let (one, id, b) = (p.services.0.clone(), p.a.id().to_owned(), &mut p.b);
    let mut cuts = Cuts::new();
    while let Some(cut) = cuts.next() {
        let what = format!("Session::close() {cut}, then the session dropped,");
        let session = one.new_session(h.config()).await?;
        let mut a = session.new_locker(&id);
        let held = a.lock().await?;
        p.tokens.saw(&held, &format!("lock() before {what}"))?;
        released(run(h, cut, session.close()).await, &mut cuts, &what)?;
        // Polled once, the close is committed: the session's handles still live here.
        free(b, &mut p.tokens, &what).await?;
        ensure!(
            held.is_lost(),
            "{what}: another party was granted the id, but the hold is not lost"
        );
        drop((held, a, session));
    }
    p.close().await
}

/// An election's `campaign()`, on a free election and queued behind a leader, dropped at every
/// point: afterwards another candidate is elected within [`FREED_WITHIN`] (once the leader
/// resigned) and `leader()` names it, never the cancelled candidate; the cancelled candidate can
/// campaign again.
pub async fn election_campaign_cancelled_at_any_point_leaves_nothing(h: &Harness) -> Outcome {
    const CHECK: &str = "election_campaign_cancelled_at_any_point_leaves_nothing";
    if !h.elections() {
        h.skip(CHECK, "the harness declares no elections");
        return Ok(());
    }
    let (one, two) = two_services(h).await?;
    let name = h.id("cancel-campaign");
    let (s1, s2) = (
        one.new_session(h.config()).await?,
        two.new_session(h.config()).await?,
    );
    let (mut a, mut b, mut leader) = (
        s1.new_election(&name)?,
        s2.new_election(&name)?,
        s2.new_election(&name)?,
    );
    let mut tokens = Tokens::default();
    for queued in [false, true] {
        let mut cuts = Cuts::new();
        while let Some(cut) = cuts.next() {
            let what = match queued {
                false => format!("campaign() in a free election {cut}"),
                true => format!("campaign() queued behind a leader {cut}"),
            };
            let term = match queued {
                true => Some(leader.campaign("leader").await?),
                false => None,
            };
            if let Some(term) = &term {
                tokens.saw(term, &what)?;
            }
            match run(h, cut, a.campaign("cancelled")).await {
                Ran::Completed(granted) => {
                    cuts.polls_done();
                    let won = granted.map_err(|e| Failure::new(format!("{what}: {e}")))?;
                    ensure!(!queued, "{what}: elected while another candidate led");
                    tokens.saw(&won, &what)?;
                    won.unlock().await?;
                }
                Ran::Quiet => cuts.polls_done(),
                Ran::Dropped => {}
            }
            if let Some(term) = term {
                term.unlock().await?;
            }
            let elected = match tokio::time::timeout(FREED_WITHIN, b.campaign("next")).await {
                Ok(elected) => elected?,
                Err(_) => {
                    return Err(Failure::new(format!(
                        "{what}: no other candidate was elected within {FREED_WITHIN:?}"
                    )))
                }
            };
            tokens.saw(&elected, &what)?;
            let named = b.leader().await?;
            ensure!(
                named.as_ref().and_then(|l| l.value_str()) == Some("next"),
                "{what}: leader() named {named:?} while the next candidate led"
            );
            elected.unlock().await?;
        }
    }
    let again = tokio::time::timeout(PATIENCE, a.campaign("again"))
        .await
        .map_err(|_| Failure::new("the cancelled candidate could not campaign again"))??;
    tokens.saw(&again, "campaigning again after every cut")?;
    again.unlock().await?;
    one.close().await?;
    if h.sharing() != crate::Sharing::Service {
        two.close().await?;
    }
    Ok(())
}
