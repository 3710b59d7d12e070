//! Conveniences on top of the core traits, for every backend.

use std::future::Future;

use crate::{Held, Locker, Result};

/// Conveniences for every [`Locker`].
pub trait LockerExt: Locker {
    /// Takes the lock, runs `f` with the [`Held`], and unlocks — also when `f` returns an error.
    /// Returns what `f` returned.
    ///
    /// `f` should stop as soon as [`Held::lost`] fires; `with_lock` does not cancel it.
    ///
    /// # Errors
    ///
    /// What [`Locker::lock`] returns. An error from `unlock` after `f` ran is ignored when the
    /// lock was already lost, and returned otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// use lock_core::LockerExt;
    /// # async fn demo(locker: &dyn lock_core::Locker) -> lock_core::Result<()> {
    /// let token = locker.with_lock(|held| async move { held.fencing_token() }).await?;
    /// # Ok(()) }
    /// ```
    fn with_lock<F, Fut, T>(&self, f: F) -> impl Future<Output = Result<T>> + Send
    where
        Self: Sync,
        F: FnOnce(Held) -> Fut + Send,
        Fut: Future<Output = T> + Send,
        T: Send,
    {
        async move {
            let held = self.lock().await?;
            let out = f(held.clone()).await;
            match self.unlock().await {
                Ok(()) => Ok(out),
                Err(_) if held.is_lost() => Ok(out),
                Err(e) => Err(e),
            }
        }
    }
}

impl<L: Locker + ?Sized> LockerExt for L {}
