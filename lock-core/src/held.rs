//! What a granted lock hands back: the lost signal and the fencing token.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::loss::Loss;
use crate::signal::{Deadline, HasSignal, Watch};

/// A granted lock: a signal that fires the moment the lock is no longer held, and the lock's
/// fencing token.
///
/// `Held` is cheap to clone; every clone observes the same hold. Dropping it does **not**
/// release the lock — call [`Locker::unlock`](crate::Locker::unlock), or drop the locker.
///
/// # Examples
///
/// ```
/// # async fn demo(locker: &dyn lock_core::Locker) -> lock_core::Result<()> {
/// let held = locker.lock().await?;
/// tokio::select! {
///     () = held.lost() => eprintln!("lost the lock; stop writing"),
///     () = do_work(held.fencing_token()) => {}
/// }
/// locker.unlock().await?;
/// # Ok(()) }
/// # async fn do_work(_token: u64) {}
/// ```
#[derive(Clone)]
pub struct Held {
    watch: Watch,
    token: u64,
}

impl Held {
    /// Builds a hold from a backend's loss signal: an `Arc<Signal>`, or an `Arc` of any backend
    /// state that owns one ([`HasSignal`]).
    ///
    /// The hold is lost once the signal leaves `epoch` (see
    /// [`Signal::fire`](crate::Signal::fire)) or, when given, once `deadline` passes. For backends.
    pub fn new<S: HasSignal>(
        signal: Arc<S>,
        epoch: u64,
        deadline: Option<Arc<Deadline>>,
        token: u64,
    ) -> Self {
        Held {
            watch: Watch::new(signal, epoch, deadline),
            token,
        }
    }

    /// The fencing token: strictly greater than the token of every earlier holder of this id
    /// and never handed out again. Send it with every write to the protected resource, and have
    /// the resource reject tokens lower than the highest it has seen.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// Whether the lock is already known to be lost. This reads the clock, so it is accurate
    /// even right after the process resumes from a pause, before any task has run.
    pub fn is_lost(&self) -> bool {
        self.watch.is_fired()
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
        self.watch.loss()
    }

    /// A future that resolves once the lock is no longer held: unlocked, its session closed or
    /// dropped, its service closed, its lease expired or its key deleted. It resolves before the
    /// backend can grant the lock to anybody else.
    pub fn lost(&self) -> Lost {
        Lost(Box::pin(self.watch.clone().fired()))
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("fencing_token", &self.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// The future returned by [`Held::lost`]; `Send`, `'static` and cancel-safe.
#[must_use = "futures do nothing unless awaited"]
pub struct Lost(Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

impl Future for Lost {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lost")
    }
}

/// A future that resolves once a session has ended (closed, dropped, or its lease lost); see
/// [`Session::done`](crate::Session::done). Cancel-safe.
#[must_use = "futures do nothing unless awaited"]
pub struct Done {
    watch: Watch,
    fut: Option<Lost>,
}

impl Done {
    /// A future for the end of the `epoch` of `signal` (and `deadline`, if any). For backends.
    pub fn new<S: HasSignal>(signal: Arc<S>, epoch: u64, deadline: Option<Arc<Deadline>>) -> Self {
        Done {
            watch: Watch::new(signal, epoch, deadline),
            fut: None,
        }
    }

    /// Whether the session has already ended, without waiting.
    pub fn is_done(&self) -> bool {
        self.watch.is_fired()
    }
}

impl Future for Done {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let watch = &this.watch;
        let fut = this
            .fut
            .get_or_insert_with(|| Lost(Box::pin(watch.clone().fired())));
        Pin::new(fut).poll(cx)
    }
}

impl fmt::Debug for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Done")
            .field("done", &self.is_done())
            .finish()
    }
}
