//! The conformance suite: one public async function per property of the `lock` contract.
//!
//! Each function opens its own services through the [`Harness`], uses ids
//! under the harness's random prefix, bounds every wait, and returns a
//! [`Failure`] naming the violated property. The functions and their names are
//! **not a stable API**; use [`conformance_tests!`](crate::conformance_tests) to get one test
//! per function.

pub(crate) mod cancel;
mod election;
mod errors;
mod exclusion;
mod faults;
mod ids;
mod lost;
mod semaphore;
pub(crate) mod shared;
mod waiting;

pub use cancel::*;
pub use election::*;
pub use errors::*;
pub(crate) use exclusion::fifo;
pub use exclusion::*;
pub use faults::*;
pub use ids::*;
pub use lost::*;
pub use semaphore::*;
pub use shared::*;
pub use waiting::*;

use std::time::Duration;

use lock_core::Error;

use crate::{Failure, Harness, Outcome};

/// How long the suite waits for something that must happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Checks that `result` failed with an error `expected` accepts.
#[track_caller]
pub(crate) fn expect_err<T>(
    what: &str,
    result: Result<T, Error>,
    expected: &str,
    accept: impl Fn(&Error) -> bool,
) -> Result<(), Failure> {
    match result {
        Err(e) if accept(&e) => Ok(()),
        Err(e) => Err(Failure::new(format!(
            "{what}: expected {expected}, got error `{e}`"
        ))),
        Ok(_) => Err(Failure::new(format!(
            "{what}: expected {expected}, but it succeeded"
        ))),
    }
}

/// What a backend made of a primitive it may not offer (`what`: `semaphores`, `elections`):
/// `made` itself if the harness declares it offered (its error is a failure); else, after
/// checking that `made` is `Unsupported` and reporting the skip of `check`, `None`.
pub(crate) fn offered<T>(
    h: &Harness,
    check: &str,
    declared: bool,
    what: &str,
    made: Result<T, Error>,
) -> Result<Option<T>, Failure> {
    if declared {
        let made = made.map_err(|e| Failure::new(format!("making a party of {what} failed: {e}")));
        return made.map(Some);
    }
    expect_err(
        &format!("{what} on a backend that declares none"),
        made,
        "Unsupported",
        |e| e.kind() == lock_core::ErrorKind::Unsupported,
    )?;
    h.skip(
        check,
        &format!("the harness declares no {what} (refused with Unsupported)"),
    );
    Ok(None)
}

/// Checks that fencing token `later` follows `earlier` (strictly greater), saying `what` if not.
#[track_caller]
pub(crate) fn follows(what: &str, later: u64, earlier: u64) -> Outcome {
    if later > earlier {
        return Ok(());
    }
    Err(Failure::new(format!(
        "{what}: fencing token {later} does not follow {earlier}"
    )))
}

/// What a [`waiter_after`] task gives back: whether the holder already knew it had lost the lock
/// when this waiter was granted (and the new hold), the waiter's locker and its session.
pub(crate) type Waited = (
    lock_core::Result<(bool, lock_core::Held)>,
    lock_core::Locker,
    lock_core::Session,
);

/// Spawns a waiter for `id` in `session` that, the moment it is granted, records whether
/// `holder`'s `is_lost()` was already true: `lost()` must fire before anybody else's grant.
pub(crate) fn waiter_after(
    session: lock_core::Session,
    id: String,
    holder: lock_core::Lost,
) -> tokio::task::JoinHandle<Waited> {
    tokio::spawn(async move {
        let mut b = session.new_locker(&id);
        let granted = b.lock().await.map(|next| (holder.is_lost(), next));
        (granted, b, session)
    })
}

/// Fails if the spawned `waiter` has already finished while the holder still holds the lock
/// (`when` says what the holder has not done yet): granted, that is no exclusion.
pub(crate) async fn still_waiting(
    waiter: &mut tokio::task::JoinHandle<Waited>,
    when: &str,
) -> Outcome {
    if !waiter.is_finished() {
        return Ok(());
    }
    let (granted, _, _) = waiter
        .await
        .map_err(|e| Failure::new(format!("waiter panicked: {e}")))?;
    Err(Failure::new(match granted {
        Ok(_) => format!(
            "another service was granted the lock while the holder held it, {when}: no \
             exclusion across services"
        ),
        Err(e) => format!("another service's lock() failed while the holder held it, {when}: {e}"),
    }))
}

/// The outcome of a spawned waiter, awaited within `limit`; a panic in it is a failure.
pub(crate) async fn joined<T>(
    h: &Harness,
    limit: Duration,
    what: &str,
    waiter: tokio::task::JoinHandle<T>,
) -> Result<T, Failure> {
    h.within(limit, what, waiter)
        .await?
        .map_err(|e| Failure::new(format!("waiter panicked: {e}")))
}

/// Whether `locker` can take its id right now (`try_lock`). A hold it gets is released, and
/// the release awaited, before this returns.
pub(crate) async fn takes(locker: &mut lock_core::Locker) -> Result<bool, Failure> {
    match locker.try_lock().await? {
        Some(held) => {
            held.unlock().await?;
            Ok(true)
        }
        None => Ok(false),
    }
}
