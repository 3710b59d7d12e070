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

use lock_core::{Error, Held, Locker};

use crate::conformance::shared::two_services;
use crate::conformance::{expect_err, PATIENCE};
use crate::{ensure, Failure, Harness, Outcome};

/// How soon an id must be free for another party after a cancelled operation, when the
/// backend answers.
pub const FREED_WITHIN: Duration = Duration::from_secs(1);

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

/// Every cut point: by polls until the operation completes within them, then by time.
/// Three rounds: where a cut races the backend (a request in flight), one round may miss
/// what another catches.
fn cuts() -> impl Iterator<Item = Cut> {
    (0..ROUNDS).flat_map(|_| {
        (1..=MAX_POLLS)
            .map(Cut::Polls)
            .chain(AFTER.map(|ms| Cut::After(Duration::from_millis(ms))))
    })
}

/// How many times the suite runs through every cut.
const ROUNDS: usize = 3;

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

/// The id is free: `other` is granted it within [`FREED_WITHIN`] and releases it again.
async fn free(other: &dyn Locker, tokens: &mut Tokens, what: &str) -> Outcome {
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
async fn holds_nothing(locker: &dyn Locker, what: &str) -> Outcome {
    expect_err(
        &format!("{what}: unlock() by the cancelled locker"),
        locker.unlock().await,
        "NotHeld",
        |e| matches!(e, Error::NotHeld),
    )
}

/// `lock()` on a free id, dropped at every point: the id is free afterwards, the locker holds
/// nothing (or, if it completed, holds a fresh token), and it can lock again.
pub async fn lock_cancelled_at_any_point_leaves_nothing(h: &Harness) -> Outcome {
    let (one, two) = two_services(h).await?;
    let id = h.id("cancel-lock");
    let (s1, s2) = (
        one.new_session(&h.config()).await?,
        two.new_session(&h.config()).await?,
    );
    let (a, b) = (s1.new_locker(&id), s2.new_locker(&id));
    let mut tokens = Tokens::default();
    let mut polls_done = false;
    for cut in cuts() {
        polls_done &= !matches!(cut, Cut::Polls(1)); // a new round
        if polls_done && matches!(cut, Cut::Polls(_)) {
            continue;
        }
        let what = format!("lock() on a free id {cut}");
        match run(h, cut, a.lock()).await {
            Ran::Completed(held) => {
                polls_done = true;
                tokens.saw(&held?, &what)?;
                a.unlock().await?;
            }
            Ran::Quiet => {
                polls_done = true;
                holds_nothing(&*a, &what).await?;
            }
            Ran::Dropped => holds_nothing(&*a, &what).await?,
        }
        free(&*b, &mut tokens, &what).await?;
        locks_again(&*a, &mut tokens, &what).await?;
    }
    one.close().await?;
    drop(two);
    Ok(())
}

/// After a cut: the cancelled locker can lock again (a fresh token) and unlock.
async fn locks_again(locker: &dyn Locker, tokens: &mut Tokens, what: &str) -> Outcome {
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
    let (one, two) = two_services(h).await?;
    let id = h.id("cancel-queued");
    let (s1, s2) = (
        one.new_session(&h.config()).await?,
        two.new_session(&h.config()).await?,
    );
    let (a, holder, b) = (s1.new_locker(&id), s2.new_locker(&id), s2.new_locker(&id));
    let mut tokens = Tokens::default();
    let mut polls_done = false;
    for cut in cuts() {
        polls_done &= !matches!(cut, Cut::Polls(1)); // a new round
        if polls_done && matches!(cut, Cut::Polls(_)) {
            continue;
        }
        let what = format!("lock() queued behind a holder {cut}");
        tokens.saw(&holder.lock().await?, &what)?;
        match run(h, cut, a.lock()).await {
            Ran::Completed(granted) => {
                let held = granted.map_err(|e| Failure::new(format!("{what}: {e}")))?;
                return Err(Failure::new(format!(
                    "{what}: lock() was granted an id another party holds (token {})",
                    held.fencing_token()
                )));
            }
            Ran::Quiet => polls_done = true,
            Ran::Dropped => {}
        }
        holder.unlock().await?;
        holds_nothing(&*a, &what).await?;
        free(&*b, &mut tokens, &what).await?;
    }
    locks_again(&*a, &mut tokens, "after every cut").await?;
    one.close().await?;
    drop(two);
    Ok(())
}

/// `try_lock()` on a free id, dropped at every point: as for `lock()`.
pub async fn try_lock_cancelled_at_any_point_leaves_nothing(h: &Harness) -> Outcome {
    let (one, two) = two_services(h).await?;
    let id = h.id("cancel-try");
    let (s1, s2) = (
        one.new_session(&h.config()).await?,
        two.new_session(&h.config()).await?,
    );
    let (a, b) = (s1.new_locker(&id), s2.new_locker(&id));
    let mut tokens = Tokens::default();
    let mut polls_done = false;
    for cut in cuts() {
        polls_done &= !matches!(cut, Cut::Polls(1)); // a new round
        if polls_done && matches!(cut, Cut::Polls(_)) {
            continue;
        }
        let what = format!("try_lock() on a free id {cut}");
        match run(h, cut, a.try_lock()).await {
            Ran::Completed(granted) => {
                polls_done = true;
                let held = granted?.ok_or_else(|| {
                    Failure::new(format!("{what}: try_lock() on a free id returned None"))
                })?;
                tokens.saw(&held, &what)?;
                a.unlock().await?;
            }
            Ran::Quiet => {
                polls_done = true;
                holds_nothing(&*a, &what).await?;
            }
            Ran::Dropped => holds_nothing(&*a, &what).await?,
        }
        free(&*b, &mut tokens, &what).await?;
        locks_again(&*a, &mut tokens, &what).await?;
    }
    one.close().await?;
    drop(two);
    Ok(())
}

/// `unlock()` dropped at every point after its first poll: the release is committed — the hold
/// is lost and the id free for another party within [`FREED_WITHIN`] — and the locker can lock
/// again with a fresh token.
pub async fn unlock_cancelled_at_any_point_releases(h: &Harness) -> Outcome {
    let (one, two) = two_services(h).await?;
    let id = h.id("cancel-unlock");
    let (s1, s2) = (
        one.new_session(&h.config()).await?,
        two.new_session(&h.config()).await?,
    );
    let (a, b) = (s1.new_locker(&id), s2.new_locker(&id));
    let mut tokens = Tokens::default();
    let mut polls_done = false;
    for cut in cuts() {
        polls_done &= !matches!(cut, Cut::Polls(1)); // a new round
        if polls_done && matches!(cut, Cut::Polls(_)) {
            continue;
        }
        let what = format!("unlock() {cut}");
        let held = a.lock().await?;
        tokens.saw(&held, &format!("lock() before {what}"))?;
        match run(h, cut, a.unlock()).await {
            Ran::Completed(Err(e)) => {
                return Err(Failure::new(format!("{what}: unlock() failed: {e}")))
            }
            Ran::Completed(Ok(())) | Ran::Quiet => polls_done = true,
            Ran::Dropped => {}
        }
        free(&*b, &mut tokens, &what).await?;
        ensure!(
            held.is_lost(),
            "{what}: another party was granted the id, but the hold is not lost"
        );
        holds_nothing(&*a, &what).await?;
    }
    one.close().await?;
    drop(two);
    Ok(())
}

/// A session's `close()` dropped at every point after its first poll, then the session
/// dropped: its hold is lost and the id free for another party within [`FREED_WITHIN`].
pub async fn close_cancelled_at_any_point_ends_the_session(h: &Harness) -> Outcome {
    let (one, two) = two_services(h).await?;
    let id = h.id("cancel-close");
    let s2 = two.new_session(&h.config()).await?;
    let b = s2.new_locker(&id);
    let mut tokens = Tokens::default();
    let mut polls_done = false;
    for cut in cuts() {
        polls_done &= !matches!(cut, Cut::Polls(1)); // a new round
        if polls_done && matches!(cut, Cut::Polls(_)) {
            continue;
        }
        let what = format!("Session::close() {cut}, then the session dropped");
        let session = one.new_session(&h.config()).await?;
        let a = session.new_locker(&id);
        let held = a.lock().await?;
        tokens.saw(&held, &format!("lock() before {what}"))?;
        match run(h, cut, session.close()).await {
            Ran::Completed(Err(e)) => {
                return Err(Failure::new(format!("{what}: close() failed: {e}")))
            }
            Ran::Completed(Ok(())) | Ran::Quiet => polls_done = true,
            Ran::Dropped => {}
        }
        drop(a);
        drop(session);
        free(&*b, &mut tokens, &what).await?;
        ensure!(
            held.is_lost(),
            "{what}: another party was granted the id, but the hold is not lost"
        );
    }
    one.close().await?;
    drop(two);
    Ok(())
}
