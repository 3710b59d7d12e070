//! What a backend's grant hands the handles: [`Hold`] (the lost signal and the fencing token),
//! and the views of it an application passes around: [`Lost`], [`Fence`], and a session's
//! [`Done`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::loss::Loss;
use crate::signal::{Deadline, HasSignal, Watch};

/// What a backend's `lock()` grants: a view of the lock's loss signal and the fencing token.
/// The [`Locker`](crate::Locker) handle wraps it in a [`Held`](crate::Held). Cheap to clone;
/// dropping it does nothing.
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

/// What [`Locker::with_lock`](crate::Locker::with_lock)'s closure gets of its hold: the
/// fencing token to send with each write, and whether the lock is still held, to check before
/// a side effect. It cannot release the lock (`with_lock` does). Cheap to clone, `'static`.
#[derive(Clone)]
pub struct Fence {
    hold: Hold,
}

impl Fence {
    pub(crate) fn new(hold: Hold) -> Self {
        Fence { hold }
    }

    /// The fencing token (see [`Held::fencing_token`](crate::Held::fencing_token)).
    #[inline]
    pub fn fencing_token(&self) -> u64 {
        self.hold.token
    }

    /// Whether the lock is already known to be lost (see [`Held::is_lost`](crate::Held::is_lost)).
    #[inline]
    pub fn is_lost(&self) -> bool {
        self.hold.is_lost()
    }

    /// Why and when the hold ended; `None` while it is held (see
    /// [`Held::loss`](crate::Held::loss)).
    pub fn loss(&self) -> Option<Loss> {
        self.hold.loss()
    }

    /// A future that resolves once the lock is no longer held (see
    /// [`Held::lost`](crate::Held::lost)).
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

/// The future returned by [`Held::lost`](crate::Held::lost): resolves once the hold is lost.
/// `Send + Sync`, `'static`, cancel-safe, and it allocates only when first polled.
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

    /// Why and when the hold ended; `None` while it is held. See [`Held::loss`](crate::Held::loss).
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
    /// A future for the end of the `epoch` of `signal` (and `deadline`, if any); backends make
    /// it with [`backend::done`](crate::backend::done).
    pub(crate) fn new<S: HasSignal>(
        signal: Arc<S>,
        epoch: u64,
        deadline: Option<Arc<Deadline>>,
    ) -> Self {
        Done(Lost::new(Watch::new(signal, epoch, deadline)))
    }

    /// A `Done` that has resolved already.
    pub(crate) fn ended() -> Self {
        let signal = Arc::new(crate::signal::Signal::new());
        signal.fire();
        Done::new(signal, 0, None)
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
