//! The future type of the trait methods: complete at once without allocating, or boxed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The future returned by [`Service`](crate::Service), [`Session`](crate::Session) and
/// [`Locker`](crate::Locker) methods.
///
/// A backend that can answer at once (an uncontended in-process lock, a validation error)
/// returns [`OpFuture::ready`], which allocates nothing; one that must wait returns
/// [`OpFuture::boxed`]. Callers just `.await` it. A concrete return type keeps the traits
/// dyn-compatible without `#[async_trait]`'s allocation on every call.
///
/// # Examples
///
/// ```
/// use lock_core::OpFuture;
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
}

impl<'a, T> OpFuture<'a, T> {
    /// A future that is already complete.
    pub fn ready(value: T) -> Self {
        OpFuture(Inner::Ready(Some(value)))
    }

    /// A future that must wait: boxed.
    pub fn boxed(fut: impl Future<Output = T> + Send + 'a) -> Self {
        OpFuture(Inner::Boxed(Box::pin(fut)))
    }
}

// The value of `Ready` is never pinned: it is moved out when polled.
impl<T> Unpin for OpFuture<'_, T> {}

impl<T> Future for OpFuture<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.get_mut().0 {
            Inner::Ready(value) => {
                Poll::Ready(value.take().expect("OpFuture polled after completion"))
            }
            Inner::Boxed(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for OpFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Inner::Ready(_) => "OpFuture::Ready",
            Inner::Boxed(_) => "OpFuture::Boxed",
        })
    }
}
