//! The application's party on one lock id, [`Locker`], and the guard of its hold, [`Held`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::contract::{self, Party};
use crate::error::{Error, Result};
use crate::hold::{Fence, Hold, Lost};
use crate::loss::{Loss, LossCause};
use crate::op::OpFuture;

/// One party's handle on one lock id, made by
/// [`Session::new_locker`](crate::Session::new_locker): one hold or attempt at a time. An
/// attempt borrows the locker mutably, so the compiler refuses a second one while the first is
/// pending; a `lock()` while the locker holds the lock fails with [`Error::AlreadyLocked`].
///
/// Not `Clone`: a clone would be the same party, so tasks sharing one would fail each other's
/// `lock()` instead of taking turns. Give each task its own locker — lockers of one id exclude
/// each other, also within one session:
///
/// ```compile_fail
/// # async fn demo(session: lock_core::Session) {
/// let locker = session.new_locker("jobs/nightly");
/// let for_task = locker.clone(); // error: `Locker` is not `Clone`
/// # }
/// ```
///
/// ```compile_fail
/// # async fn demo(session: lock_core::Session) {
/// let mut locker = session.new_locker("jobs/nightly");
/// let (a, b) = tokio::join!(locker.lock(), locker.lock()); // error: two attempts at once
/// # }
/// ```
///
/// ```no_run
/// # async fn demo(session: lock_core::Session) -> lock_core::Result<()> {
/// for _ in 0..4 {
///     let mut locker = session.new_locker("jobs/nightly"); // one party per task
///     tokio::spawn(async move {
///         let held = locker.lock().await?;
///         // … work under the lock …
///         held.unlock().await
///     });
/// }
/// # Ok(()) }
/// ```
///
/// Dropping the locker (its [`Held`], which keeps it, included) releases its lock.
pub struct Locker {
    /// The backend's locker, which keeps its session open (see [`Party`]).
    backend: Arc<dyn contract::Locker>,
}

impl Locker {
    #[inline]
    pub(crate) fn new(backend: Arc<dyn contract::Locker>) -> Self {
        Locker { backend }
    }

    /// The backend's locker (see [`backend::as_any`](crate::backend::as_any)).
    #[inline]
    pub(crate) fn backend(&self) -> &dyn contract::Locker {
        &*self.backend
    }

    /// Another handle of this same locker, for the [`Held`] it grants (which keeps it).
    #[inline]
    fn share(&self) -> Locker {
        Locker {
            backend: Arc::clone(&self.backend),
        }
    }

    /// The lock id this locker was made for.
    #[inline]
    pub fn id(&self) -> &str {
        self.backend.id()
    }

    /// Waits for the lock, in FIFO order with other waiters, up to the session's timeout, and
    /// returns the guard of the hold.
    ///
    /// Nothing happens until the future is polled. Cancel-safe: dropping it withdraws from the
    /// queue, or releases what it was granted, and leaves nothing behind. A session timeout
    /// needs a tokio runtime with timers (`#[tokio::main]`, or a runtime built with
    /// `enable_time()`).
    ///
    /// The future borrows the locker (mutably: one attempt at a time), so that taking a free
    /// lock allocates nothing; to wait in another task, move the locker into it (the guard
    /// keeps it):
    ///
    /// ```compile_fail
    /// # async fn demo(session: lock_core::Session) {
    /// let mut locker = session.new_locker("jobs/nightly");
    /// tokio::spawn(locker.lock()); // error: `locker` does not live long enough
    /// # }
    /// ```
    ///
    /// ```no_run
    /// # async fn demo(session: lock_core::Session) {
    /// let mut locker = session.new_locker("jobs/nightly");
    /// let task = tokio::spawn(async move { locker.lock().await });
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyLocked`] if this locker holds the lock;
    /// [`Error::Timeout`]; [`Error::Canceled`] if the session ends while waiting;
    /// [`Error::AlreadyClosed`] if it had ended before; [`Error::InvalidId`].
    #[inline]
    pub fn lock(&mut self) -> Lock<'_> {
        Lock(Attempt::new(self))
    }

    /// [`lock`](Locker::lock), waiting at most `timeout` (or the session's timeout, if that is
    /// shorter). Needs a tokio runtime with timers.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] with `timeout` when it passed; otherwise as [`lock`](Locker::lock).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(mut locker: lock_core::Locker) -> lock_core::Result<()> {
    /// use std::time::Duration;
    /// use lock_core::ErrorKind;
    ///
    /// match locker.lock_timeout(Duration::from_millis(200)).await {
    ///     Ok(held) => held.unlock().await?,
    ///     Err(e) if e.kind() == ErrorKind::Timeout => println!("busy; try later"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lock_timeout(&mut self, timeout: Duration) -> Result<Held> {
        match tokio::time::timeout(timeout, self.lock()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Takes the lock if nobody holds it or waits for it; never waits for a holder.
    ///
    /// # Errors
    ///
    /// As [`lock`](Locker::lock), except that a held lock gives `Ok(None)`.
    #[inline]
    pub fn try_lock(&mut self) -> TryLock<'_> {
        TryLock(Attempt::new(self))
    }

    /// Releases whatever this locker holds (Go's `Locker.Unlock`); the hold's
    /// [`lost`](Held::lost) fires. [`Held::unlock`] does the same for one guard.
    ///
    /// Cancel-safe: if this future is dropped, the release goes on in the background.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if this locker does not hold the lock; [`Error::AlreadyClosed`] after
    /// the session ended. An error from a remote backend is informative: the lock is released
    /// at the latest when the session's TTL runs out.
    pub async fn unlock(&self) -> Result<()> {
        let party = self.backend.party();
        party.check_open()?;
        let Some(token) = party.latest() else {
            return Err(Error::NotHeld);
        };
        if let Some(outcome) = self.backend.unlock_now(token) {
            return outcome;
        }
        // Dropped before the backend's release completes, the guard releases.
        let guard = ReleaseOnDrop(&*self.backend, token);
        let outcome = self.backend.unlock(token).await;
        std::mem::forget(guard);
        outcome
    }

    /// Takes the lock, runs `f` with the hold's [`Fence`] (its fencing token, and `is_lost()`
    /// to check before a side effect), and unlocks — also when `f` fails. `f` is raced against
    /// the loss of the lock: if the lock is lost first, `f` is dropped (cancelled at its next
    /// await) and the result is [`Error::Lost`].
    ///
    /// Returns what `f` returned; `f`'s error type only needs `From<lock::Error>`. A closure
    /// that finished while the lock was held keeps its result: a release that fails after it
    /// (a remote backend unreachable) is not reported, since the lock then ends at the latest
    /// when the session's TTL runs out, and a loss after the closure finished came too late to
    /// matter to it.
    ///
    /// # Errors
    ///
    /// What [`lock`](Locker::lock) returns; [`Error::Lost`] if the lock was lost before `f`
    /// finished; `f`'s error.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(mut locker: lock_core::Locker) -> lock_core::Result<()> {
    /// let written = locker
    ///     .with_lock(|fence| async move { write_report(fence.fencing_token()).await })
    ///     .await?;
    /// # Ok(()) }
    /// # async fn write_report(_token: u64) -> lock_core::Result<usize> { Ok(1) }
    /// ```
    pub async fn with_lock<T, E, F, Fut>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(Fence) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let held = self.lock().await?;
        let lost = |held: &Held| held.lost_error(LossCause::Unknown, "");
        let out = tokio::select! {
            biased;
            () = held.lost() => return Err(lost(&held).into()),
            out = f(held.fence()) => out,
        };
        if out.is_ok() && held.is_lost() {
            // Lost before the closure finished (it did not await after the loss).
            return Err(lost(&held).into());
        }
        let _ = held.unlock().await;
        out
    }
}

/// Releases a hold when an `unlock()` of it is dropped before the backend's release completed
/// (the backend's `unlock` need not be cancel-safe), unless the locker was granted a later one.
struct ReleaseOnDrop<'a>(&'a dyn contract::Locker, u64);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if self.0.party().latest() == Some(self.1) {
            self.0.release(self.1);
        }
    }
}

/// A `lock()` or `try_lock()` in progress: started when first polled, under the session's
/// timeout. One at a time per locker: it borrows the locker mutably.
///
/// A backend future that completed at once is taken without being stored; one that must wait
/// is stored once and polled in place: a contended `lock()` moves no large value around
/// between its polls.
struct Attempt<'a, T> {
    locker: &'a Locker,
    /// The backend's attempt, once started (when first polled).
    op: Option<OpFuture<'a, Result<T>>>,
    /// The session's timeout, started when the backend's attempt first had to wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the backend's attempt was started (it is not stored if it completed at once).
    started: bool,
    /// Whether the attempt's first wait was set up (timer, cancellation by the session's end).
    watched: bool,
}

impl<'a, T: Send + 'a> Attempt<'a, T> {
    #[inline]
    fn new(locker: &'a Locker) -> Self {
        Attempt {
            locker,
            op: None,
            timer: None,
            started: false,
            watched: false,
        }
    }

    /// Polls the attempt, which `start` begins on the backend's locker; `token` is the fencing
    /// token of what it granted.
    #[inline(always)]
    fn poll_with(
        &mut self,
        cx: &mut Context<'_>,
        start: impl FnOnce(&'a dyn contract::Locker) -> OpFuture<'a, Result<T>>,
        token: impl FnOnce(&T) -> Option<u64>,
    ) -> Poll<Result<T>> {
        let backend: &'a dyn contract::Locker = &*self.locker.backend;
        let party = backend.party();
        let op = match &mut self.op {
            Some(op) => op,
            None => {
                assert!(!self.started, "a lock attempt polled after completion");
                self.started = true;
                if party.ends_here() {
                    party.check_open()?;
                }
                // Usually complete at once (a free lock, an error): taken, never stored.
                match start(backend).into_ready() {
                    Ok(outcome) => return Poll::Ready(finish(backend, party, outcome, token)),
                    Err(op) => self.op.insert(op),
                }
            }
        };
        if let Poll::Ready(outcome) = Pin::new(op).poll(cx) {
            return Poll::Ready(finish(backend, party, outcome, token));
        }
        if party.timeout().is_none() && !party.ends_here() {
            return Poll::Pending;
        }
        self.poll_watched(cx, backend, party, token)
    }

    /// The wait of an attempt under the session's timeout, or that the end of the session
    /// cancels (see [`cancel_on_end`]): set up at its first wait. When the timeout passes,
    /// [`Error::Timeout`] (the backend's attempt is dropped, which withdraws it).
    #[cold]
    #[inline(never)]
    fn poll_watched(
        &mut self,
        cx: &mut Context<'_>,
        backend: &'a dyn contract::Locker,
        party: &'a Party,
        token: impl FnOnce(&T) -> Option<u64>,
    ) -> Poll<Result<T>> {
        if !std::mem::replace(&mut self.watched, true) {
            if party.ends_here() {
                if let Some(op) = self.op.take() {
                    let op = self.op.insert(cancel_on_end(op, party));
                    if let Poll::Ready(outcome) = Pin::new(op).poll(cx) {
                        return Poll::Ready(finish(backend, party, outcome, token));
                    }
                }
            }
            if let Some(limit) = party.timeout() {
                self.timer = Some(Box::pin(tokio::time::sleep(limit)));
            }
        }
        let Some(timer) = &mut self.timer else {
            return Poll::Pending;
        };
        std::task::ready!(timer.as_mut().poll(cx));
        self.op = None;
        Poll::Ready(Err(Error::Timeout(party.timeout().unwrap_or_default())))
    }
}

/// Notes the hold an attempt was granted in the locker's party.
#[inline(always)]
fn finish<T>(
    backend: &dyn contract::Locker,
    party: &Party,
    outcome: Result<T>,
    token: impl FnOnce(&T) -> Option<u64>,
) -> Result<T> {
    if let Some(token) = outcome.as_ref().ok().and_then(token) {
        party.granted(token);
        if party.ends_here() && party.granted_while_closed() {
            // The handles ended the session meanwhile, maybe without seeing this grant.
            backend.release(token);
            return Err(session_ended());
        }
    }
    outcome
}

/// A waiting attempt of a session the handles end, which fails with [`Error::Canceled`] when
/// the session ends (the backend's attempt is dropped, which withdraws it).
#[cold]
fn cancel_on_end<'a, T: Send + 'a>(
    op: OpFuture<'a, Result<T>>,
    party: &Party,
) -> OpFuture<'a, Result<T>> {
    let Some(ended) = party.session_done() else {
        return op;
    };
    OpFuture::boxed(async move {
        tokio::select! {
            biased;
            outcome = op => outcome,
            () = ended => Err(session_ended()),
        }
    })
}

#[cold]
fn session_ended() -> Error {
    Error::Canceled("the session ended while waiting".into())
}

/// The future of [`Locker::lock`]: the backend's, turned into a [`Held`] of the locker.
/// Cancel-safe, as the backend's is.
#[must_use = "futures do nothing unless awaited"]
pub struct Lock<'a>(Attempt<'a, Hold>);

impl Future for Lock<'_> {
    type Output = Result<Held>;
    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Held>> {
        let attempt = &mut self.0;
        let hold = std::task::ready!(attempt.poll_with(
            cx,
            |backend| backend.lock(),
            |h| Some(h.fencing_token())
        ))?;
        Poll::Ready(Ok(Held::new(hold, attempt.locker.share())))
    }
}

impl fmt::Debug for Lock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("id", &self.0.locker.id())
            .finish_non_exhaustive()
    }
}

/// The future of [`Locker::try_lock`].
#[must_use = "futures do nothing unless awaited"]
pub struct TryLock<'a>(Attempt<'a, Option<Hold>>);

impl Future for TryLock<'_> {
    type Output = Result<Option<Held>>;
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Option<Held>>> {
        let attempt = &mut self.0;
        let hold = std::task::ready!(attempt.poll_with(
            cx,
            |backend| backend.try_lock(),
            |h| h.as_ref().map(Hold::fencing_token)
        ))?;
        Poll::Ready(Ok(hold.map(|hold| Held::new(hold, attempt.locker.share()))))
    }
}

impl fmt::Debug for TryLock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryLock")
            .field("id", &self.0.locker.id())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.backend, f)
    }
}

/// The locker of an invalid id: every attempt fails with the id's error, and no backend sees it.
pub(crate) fn invalid_locker(id: &str, error: Error, party: Party) -> Arc<dyn contract::Locker> {
    Arc::new(InvalidId {
        id: id.to_owned(),
        error,
        party,
    })
}

struct InvalidId {
    id: String,
    error: Error,
    party: Party,
}

impl InvalidId {
    fn error(&self) -> Error {
        match &self.error {
            Error::InvalidId(reason) => Error::InvalidId(reason.clone()),
            other => Error::InvalidId(other.to_string()),
        }
    }
}

impl fmt::Debug for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidId")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl contract::Locker for InvalidId {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        OpFuture::ready(Err(self.error()))
    }
    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        OpFuture::ready(Err(self.error()))
    }
    fn unlock(&self, _token: u64) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(Err(Error::NotHeld))
    }
    fn release(&self, _token: u64) {}
    fn id(&self) -> &str {
        &self.id
    }
    fn party(&self) -> &Party {
        &self.party
    }
}

/// A granted lock: the guard [`Locker::lock`] returns. It keeps its locker, session and service
/// alive on its own, tells the moment the lock is no longer held ([`lost`](Held::lost)), and
/// carries the lock's fencing token.
///
/// Release it with [`unlock`](Held::unlock) to learn whether the release succeeded. Dropping it
/// without `unlock()` releases the lock too, in the background (like dropping a tokio
/// `MutexGuard`), and [`lost`](Held::lost) fires at once. [`Locker::unlock`] (like Go's
/// `Unlock`) releases it as well; the guard is then simply lost.
///
/// Observers in other tasks take a [`Lost`] (`'static`, with [`Lost::is_lost`]) instead of the
/// guard, so one owner decides when the lock is released.
///
/// # Examples
///
/// ```
/// # async fn demo(session: lock_core::Session) -> lock_core::Result<()> {
/// let held = session.new_locker("reports/daily").lock().await?;
/// tokio::select! {
///     () = held.lost() => eprintln!("lost the lock; stop writing"),
///     () = do_work(held.fencing_token()) => {}
/// }
/// held.unlock().await?;
/// # Ok(()) }
/// # async fn do_work(_token: u64) {}
/// ```
#[must_use = "dropping the guard releases the lock at once: bind it (`let held = …`)"]
pub struct Held {
    hold: Hold,
    locker: Locker,
    /// Whether dropping the guard must release the hold (not once `unlock()` took it over).
    armed: bool,
}

impl Held {
    #[inline]
    pub(crate) fn new(hold: Hold, locker: Locker) -> Self {
        Held {
            hold,
            locker,
            armed: true,
        }
    }

    /// The fencing token: strictly greater than the token of every earlier holder of this id
    /// and never handed out again. Send it with every write to the protected resource, and have
    /// the resource reject tokens lower than the highest it has seen.
    #[inline]
    pub fn fencing_token(&self) -> u64 {
        self.hold.fencing_token()
    }

    /// Whether the lock is already known to be lost. This reads the clock, so it is accurate
    /// even right after the process resumes from a pause, before any task has run.
    #[inline]
    pub fn is_lost(&self) -> bool {
        self.hold.is_lost()
    }

    /// Why and when the hold ended, once [`is_lost`](Held::is_lost) is `true`; `None` while
    /// it is held. The cause is what the backend recorded ([`LossCause::Unknown`] if it
    /// records none), except that a session deadline that passed before the backend acted is
    /// reported as [`LossCause::DeadlinePassed`] at that deadline: that is when `is_lost()`
    /// turned `true`.
    ///
    /// [`LossCause::Unknown`]: crate::LossCause::Unknown
    /// [`LossCause::DeadlinePassed`]: crate::LossCause::DeadlinePassed
    pub fn loss(&self) -> Option<Loss> {
        self.hold.loss()
    }

    /// A future that resolves once the lock is no longer held: unlocked, the guard dropped, its
    /// session closed or dropped, its service closed, its lease expired or its key deleted. It
    /// resolves before the backend can grant the lock to anybody else. `'static`: hand it to
    /// another task.
    pub fn lost(&self) -> Lost {
        self.hold.lost()
    }

    /// The locker this hold was taken through.
    pub fn locker(&self) -> &Locker {
        &self.locker
    }

    /// The lock id.
    pub fn id(&self) -> &str {
        self.locker.id()
    }

    /// Releases the lock; [`lost`](Held::lost) fires. Nothing happens until the future is
    /// awaited (polled), as with any future; dropping it unpolled drops the guard, which
    /// releases the lock in the background as a dropped `Held` does.
    ///
    /// Cancel-safe: if this future is dropped, the release goes on in the background.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] if the lock had already been lost (it was not held to the end: see
    /// [`loss`](Held::loss)) — also when its session or service was closed meanwhile;
    /// otherwise what the backend reports (for a remote backend the lock is then released at
    /// the latest when the session's TTL runs out).
    #[inline]
    pub fn unlock(self) -> Unlock {
        Unlock(UnlockState::Start(self))
    }

    /// What `with_lock`'s closure gets of this hold: its token and its loss.
    pub(crate) fn fence(&self) -> Fence {
        Fence::new(self.hold.clone())
    }

    /// The outcome of a release: "not held", or a closed session or service, means the hold
    /// was lost before or meanwhile, whichever of the loss and the release came first.
    #[inline]
    fn outcome(&self, outcome: Result<()>) -> Result<()> {
        match outcome {
            Ok(()) => Ok(()),
            Err(Error::NotHeld) => {
                Err(self.lost_error(LossCause::Unknown, "released by someone else"))
            }
            Err(Error::AlreadyClosed(why)) => Err(self.lost_error(LossCause::SessionEnded, why)),
            Err(e) => Err(e),
        }
    }

    /// [`Error::Lost`] with this hold's loss (`cause` and `detail` if the backend recorded
    /// none yet).
    #[cold]
    pub(crate) fn lost_error(&self, cause: LossCause, detail: &str) -> Error {
        Error::Lost(
            self.hold
                .loss()
                .unwrap_or_else(|| Loss::new(cause, None, detail)),
        )
    }
}

impl Drop for Held {
    #[inline]
    fn drop(&mut self) {
        let (backend, token) = (&self.locker.backend, self.hold.fencing_token());
        if self.armed && backend.party().latest() == Some(token) {
            backend.release(token);
        }
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("id", &self.id())
            .field("fencing_token", &self.hold.fencing_token())
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// The future returned by [`Held::unlock`]: it keeps the `Held` until it is polled, and while
/// the backend releases. Dropped before the release started, the `Held` releases the lock in
/// the background, as a dropped `Held` does.
#[must_use = "futures do nothing unless awaited: dropping this releases the lock in the \
              background, without telling whether the release succeeded"]
pub struct Unlock(UnlockState);

enum UnlockState {
    /// Not polled yet.
    Start(Held),
    /// The backend's release in progress, and the guard it releases (boxed: the usual release
    /// completes at once and never gets here).
    Releasing(Box<(OpFuture<'static, Result<()>>, Held)>),
    /// Polled to completion.
    Done,
}

impl Future for Unlock {
    type Output = Result<()>;
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match std::mem::replace(&mut self.0, UnlockState::Done) {
            UnlockState::Start(mut held) => {
                held.armed = false;
                let token = held.hold.fencing_token();
                let backend = &*held.locker.backend;
                if backend.party().latest() != Some(token) {
                    // The backend ended this hold and granted the locker a later one.
                    return Poll::Ready(held.outcome(Err(Error::NotHeld)));
                }
                if held.hold.is_lost() {
                    backend.release(token);
                    return Poll::Ready(held.outcome(Err(Error::NotHeld)));
                }
                match backend.unlock_now(token) {
                    Some(outcome) => Poll::Ready(held.outcome(outcome)),
                    None => {
                        // Dropped before the backend's release completes, the guard releases.
                        held.armed = true;
                        let backend = Arc::clone(&held.locker.backend);
                        let releasing = OpFuture::boxed(async move { backend.unlock(token).await });
                        self.0 = UnlockState::Releasing(Box::new((releasing, held)));
                        self.poll_release(cx)
                    }
                }
            }
            releasing @ UnlockState::Releasing(_) => {
                self.0 = releasing;
                self.poll_release(cx)
            }
            UnlockState::Done => panic!("Unlock polled after completion"),
        }
    }
}

impl Unlock {
    /// Polls the backend's release in progress.
    #[cold]
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let UnlockState::Releasing(releasing) = &mut self.0 else {
            unreachable!("only a release in progress is polled here");
        };
        let (future, held) = &mut **releasing;
        let outcome = std::task::ready!(Pin::new(future).poll(cx));
        held.armed = false;
        let outcome = held.outcome(outcome);
        self.0 = UnlockState::Done;
        Poll::Ready(outcome)
    }
}

impl fmt::Debug for Unlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            UnlockState::Start(_) => "Unlock::Start",
            UnlockState::Releasing(_) => "Unlock::Releasing",
            UnlockState::Done => "Unlock::Done",
        })
    }
}
