//! The future type of the trait methods: complete at once or polling state the backend keeps
//! (neither allocates), or boxed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The future returned by [`Service`](crate::backend::Service), [`Session`](crate::backend::Session) and
/// [`Locker`](crate::backend::Locker) methods.
///
/// A backend that can answer at once (an uncontended in-process lock, a validation error)
/// returns [`OpFuture::ready`], which allocates nothing; one that must wait returns
/// [`OpFuture::boxed`], or [`OpFuture::pending`] when the wait's state already lives in the
/// object the call borrows. Callers just `.await` it. A concrete return type keeps the traits
/// dyn-compatible without `#[async_trait]`'s allocation on every call.
///
/// # Examples
///
/// ```
/// use lock_core::backend::OpFuture;
///
/// fn answer(now: bool) -> OpFuture<'static, u32> {
///     if now {
///         OpFuture::ready(42)
///     } else {
///         OpFuture::boxed(async { 42 })
///     }
/// }
/// # block_on(async { assert_eq!(answer(true).await, answer(false).await) });
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct OpFuture<'a, T>(Inner<'a, T>);

enum Inner<'a, T> {
    Ready(Option<T>),
    Boxed(Pin<Box<dyn Future<Output = T> + Send + 'a>>),
    /// `None` once the operation completed (so that dropping does not cancel it).
    Pending(Option<&'a dyn PendingOp<T>>),
}

/// An operation in progress whose state is kept by the backend object it borrows (a locker
/// queued for its lock), polled through [`OpFuture::pending`] without allocating.
///
/// The backend must allow at most one such operation per object at a time (a second `lock()`
/// on a locker that is waiting fails with [`Error::AlreadyLocked`](crate::Error::AlreadyLocked)),
/// since the state is the object's. Only `OpFuture` calls these methods; callers of a backend
/// `.await` the future instead.
pub trait PendingOp<T>: Send + Sync {
    /// Polls the operation, as [`Future::poll`] would.
    fn poll_op(&self, cx: &mut Context<'_>) -> Poll<T>;

    /// Abandons the operation: called when its future is dropped before it completed. Must
    /// leave the object as if the operation had never started (cancel safety).
    fn cancel_op(&self);
}

impl<'a, T> OpFuture<'a, T> {
    /// A future that is already complete.
    #[inline]
    pub fn ready(value: T) -> Self {
        OpFuture(Inner::Ready(Some(value)))
    }

    /// The value of a future that is already complete, without polling it; `Err(self)` when
    /// it must be polled.
    #[inline]
    pub(crate) fn into_ready(mut self) -> Result<T, Self> {
        match &mut self.0 {
            // Taken out: the emptied future drops as a completed one.
            Inner::Ready(value @ Some(_)) => Ok(value.take().expect("matched as Some")),
            _ => Err(self),
        }
    }

    /// A future that must wait: boxed.
    pub fn boxed(fut: impl Future<Output = T> + Send + 'a) -> Self {
        OpFuture(Inner::Boxed(Box::pin(fut)))
    }

    /// A future that must wait, polling `op` until it completes and calling
    /// [`PendingOp::cancel_op`] if dropped before.
    #[inline]
    pub fn pending(op: &'a dyn PendingOp<T>) -> Self {
        OpFuture(Inner::Pending(Some(op)))
    }
}

impl<T> Drop for OpFuture<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if let Inner::Pending(Some(op)) = self.0 {
            op.cancel_op();
        }
    }
}

// The value of `Ready` is never pinned: it is moved out when polled.
impl<T> Unpin for OpFuture<'_, T> {}

impl<T> Future for OpFuture<'_, T> {
    type Output = T;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.get_mut().0 {
            Inner::Ready(value) => {
                Poll::Ready(value.take().expect("OpFuture polled after completion"))
            }
            Inner::Boxed(fut) => fut.as_mut().poll(cx),
            Inner::Pending(pending) => {
                let op = pending.expect("OpFuture polled after completion");
                let outcome = op.poll_op(cx);
                if outcome.is_ready() {
                    *pending = None;
                }
                outcome
            }
        }
    }
}

impl<T> fmt::Debug for OpFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Inner::Ready(_) => "OpFuture::Ready",
            Inner::Boxed(_) => "OpFuture::Boxed",
            Inner::Pending(_) => "OpFuture::Pending",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{OpFuture, PendingOp};
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::task::{Context, Poll, Waker};

    /// Completes on its third poll; counts cancellations.
    #[derive(Default)]
    struct Countdown {
        polls: AtomicU32,
        canceled: AtomicU32,
    }

    impl PendingOp<u32> for Countdown {
        fn poll_op(&self, _: &mut Context<'_>) -> Poll<u32> {
            match self.polls.fetch_add(1, SeqCst) + 1 {
                3 => Poll::Ready(7),
                _ => Poll::Pending,
            }
        }

        fn cancel_op(&self) {
            self.canceled.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn a_pending_op_is_polled_to_completion_and_not_canceled_after() {
        let op = Countdown::default();
        let mut cx = Context::from_waker(Waker::noop());
        {
            let mut fut = pin!(OpFuture::pending(&op));
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(7));
        }
        assert_eq!(op.canceled.load(SeqCst), 0);
    }

    #[test]
    fn dropping_an_unfinished_pending_op_cancels_it_once() {
        let op = Countdown::default();
        let mut cx = Context::from_waker(Waker::noop());
        {
            let mut fut = pin!(OpFuture::pending(&op));
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(op.canceled.load(SeqCst), 1);
        drop(OpFuture::pending(&op)); // never polled: canceled too
        assert_eq!(op.canceled.load(SeqCst), 2);
    }
}
