//! What a granted lock hands back: [`Held`], the guard an application keeps, built around the
//! backend's [`Hold`] (the lost signal and the fencing token).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::loss::Loss;
use crate::op::OpFuture;
use crate::signal::{Deadline, HasSignal, Watch};
use crate::{Error, Locker, Result};

/// What a backend's `lock()` grants: a view of the lock's loss signal and the fencing token.
/// The [`Locker`] handle wraps it in a [`Held`]. Cheap to clone; dropping it does nothing.
#[derive(Clone)]
pub struct Hold {
    watch: Watch,
    token: u64,
}

impl Hold {
    /// Builds a hold from a backend's loss signal: an `Arc<Signal>`, or an `Arc` of any backend
    /// state that owns one ([`HasSignal`]).
    ///
    /// The hold is lost once the signal leaves `epoch` (see
    /// [`Signal::fire`](crate::backend::Signal::fire)) or, when given, once `deadline` passes.
    #[inline]
    pub fn new<S: HasSignal>(
        signal: Arc<S>,
        epoch: u64,
        deadline: Option<Arc<Deadline>>,
        token: u64,
    ) -> Self {
        Hold {
            watch: Watch::new(signal, epoch, deadline),
            token,
        }
    }

    /// The fencing token.
    #[inline]
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// Whether the hold is already known to be lost (reads the clock).
    #[inline]
    pub fn is_lost(&self) -> bool {
        self.watch.is_fired()
    }

    /// Why and when the hold ended; `None` while it is held.
    pub fn loss(&self) -> Option<Loss> {
        self.watch.loss()
    }

    /// A future that resolves once the hold is lost.
    pub fn lost(&self) -> Lost {
        Lost::new(self.watch.clone())
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("fencing_token", &self.token)
            .field("lost", &self.is_lost())
            .finish()
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
    /// Whether dropping the guard must release the hold (not after `unlock()` completed).
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
        self.hold.token
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
        Fence {
            hold: self.hold.clone(),
        }
    }

    /// The outcome of a release: "not held", or a closed session or service, means the hold
    /// was lost before or meanwhile, whichever of the loss and the release came first.
    #[inline]
    fn outcome(&self, outcome: Result<()>) -> Result<()> {
        match outcome {
            Ok(()) => Ok(()),
            Err(Error::NotHeld) => {
                Err(self.lost_error(crate::LossCause::Unknown, "released by someone else"))
            }
            Err(Error::AlreadyClosed(why)) => {
                Err(self.lost_error(crate::LossCause::SessionEnded, why))
            }
            Err(e) => Err(e),
        }
    }

    /// [`Error::Lost`] with this hold's loss (`cause` and `detail` if the backend recorded
    /// none yet).
    #[cold]
    pub(crate) fn lost_error(&self, cause: crate::LossCause, detail: &str) -> Error {
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
        if self.armed && !self.hold.is_lost() {
            self.locker.backend().release(self.hold.token);
        }
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("id", &self.id())
            .field("fencing_token", &self.hold.token)
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
                if held.hold.is_lost() {
                    held.armed = false;
                    return Poll::Ready(held.outcome(Err(Error::NotHeld)));
                }
                let token = held.hold.token;
                match held.locker.backend().unlock_now(token) {
                    Some(outcome) => {
                        held.armed = false;
                        Poll::Ready(held.outcome(outcome))
                    }
                    None => {
                        let backend = Arc::clone(held.locker.backend());
                        let releasing =
                            OpFuture::boxed(async move { backend.unlock(Some(token)).await });
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

/// What [`Locker::with_lock`](crate::Locker::with_lock)'s closure gets of its hold: the
/// fencing token to send with each write, and whether the lock is still held, to check before
/// a side effect. It cannot release the lock (`with_lock` does). Cheap to clone, `'static`.
#[derive(Clone)]
pub struct Fence {
    hold: Hold,
}

impl Fence {
    /// The fencing token (see [`Held::fencing_token`]).
    #[inline]
    pub fn fencing_token(&self) -> u64 {
        self.hold.token
    }

    /// Whether the lock is already known to be lost (see [`Held::is_lost`]).
    #[inline]
    pub fn is_lost(&self) -> bool {
        self.hold.is_lost()
    }

    /// Why and when the hold ended; `None` while it is held (see [`Held::loss`]).
    pub fn loss(&self) -> Option<Loss> {
        self.hold.loss()
    }

    /// A future that resolves once the lock is no longer held (see [`Held::lost`]).
    pub fn lost(&self) -> Lost {
        self.hold.lost()
    }
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence")
            .field("fencing_token", &self.hold.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// The future returned by [`Held::lost`]: resolves once the hold is lost. `Send + Sync`, `'static`,
/// cancel-safe, and it allocates only when first polled.
#[must_use = "futures do nothing unless awaited"]
pub struct Lost {
    watch: Watch,
    fut: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>>>,
}

impl Lost {
    fn new(watch: Watch) -> Self {
        Lost { watch, fut: None }
    }

    /// Whether the hold is already lost, without waiting (reads the clock).
    pub fn is_lost(&self) -> bool {
        self.watch.is_fired()
    }

    /// Why and when the hold ended; `None` while it is held. See [`Held::loss`].
    pub fn loss(&self) -> Option<Loss> {
        self.watch.loss()
    }
}

/// A clone is a new future for the same hold.
impl Clone for Lost {
    fn clone(&self) -> Self {
        Lost::new(self.watch.clone())
    }
}

impl Future for Lost {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let watch = &this.watch;
        let fut = this
            .fut
            .get_or_insert_with(|| Box::pin(watch.clone().fired()));
        fut.as_mut().poll(cx)
    }
}

impl fmt::Debug for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lost")
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// A future that resolves once a session has ended (closed, dropped, or its lease lost); see
/// [`Session::done`](crate::Session::done). Cancel-safe.
#[must_use = "futures do nothing unless awaited"]
pub struct Done(Lost);

impl Done {
    /// A future for the end of the `epoch` of `signal` (and `deadline`, if any). For backends.
    pub fn new<S: HasSignal>(signal: Arc<S>, epoch: u64, deadline: Option<Arc<Deadline>>) -> Self {
        Done(Lost::new(Watch::new(signal, epoch, deadline)))
    }

    /// Whether the session has already ended, without waiting.
    pub fn is_done(&self) -> bool {
        self.0.is_lost()
    }
}

impl Future for Done {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl fmt::Debug for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Done")
            .field("done", &self.is_done())
            .finish()
    }
}
