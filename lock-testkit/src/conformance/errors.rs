//! Misuse gets the documented error, never a panic or a hang.

use std::time::Duration;

use lock_core::{Error, ErrorKind, SessionConfig};

use crate::conformance::{expect_err, takes, PATIENCE};
use crate::{ensure, Harness, Outcome};

fn already_closed(e: &Error) -> bool {
    matches!(e, Error::AlreadyClosed(_))
}

/// `lock`/`try_lock` on a locker that holds the lock fail with `AlreadyLocked` and keep the hold.
pub async fn locking_twice_is_already_locked(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let mut locker = session.new_locker(&h.id("twice"));
    let held = locker.lock().await?;
    let again = h
        .within(PATIENCE, "lock() on a locker that holds", locker.lock())
        .await?;
    expect_err(
        "lock() on a locker that holds",
        again,
        "AlreadyLocked",
        |e| matches!(e, Error::AlreadyLocked),
    )?;
    let again = h
        .within(
            PATIENCE,
            "try_lock() on a locker that holds",
            locker.try_lock(),
        )
        .await?;
    expect_err(
        "try_lock() on a locker that holds",
        again,
        "AlreadyLocked",
        |e| matches!(e, Error::AlreadyLocked),
    )?;
    ensure!(
        !held.is_lost(),
        "a rejected second lock() lost the first hold"
    );
    locker.unlock().await?;
    service.close().await?;
    Ok(())
}

/// `unlock` without holding fails with `NotHeld`, also the second time.
pub async fn unlock_without_lock_is_not_held(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let mut locker = session.new_locker(&h.id("not-held"));
    expect_err(
        "unlock() before lock()",
        locker.unlock().await,
        "NotHeld",
        |e| matches!(e, Error::NotHeld),
    )?;
    let _held = locker.lock().await?;
    locker.unlock().await?;
    expect_err("a second unlock()", locker.unlock().await, "NotHeld", |e| {
        matches!(e, Error::NotHeld)
    })?;
    service.close().await?;
    Ok(())
}

/// A second `close` of a session or a service fails with `AlreadyClosed`.
pub async fn closing_twice_is_already_closed(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    session.close().await?;
    expect_err(
        "a second session close()",
        session.close().await,
        "AlreadyClosed",
        already_closed,
    )?;
    service.close().await?;
    expect_err(
        "a second service close()",
        service.close().await,
        "AlreadyClosed",
        already_closed,
    )
}

/// Lockers of a closed session fail with `AlreadyClosed`.
pub async fn use_after_close_is_already_closed(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let mut before = session.new_locker(&h.id("after-close"));
    session.close().await?;
    let mut after = session.new_locker(&h.id("after-close"));
    expect_err(
        "lock() after session close",
        before.lock().await,
        "AlreadyClosed",
        already_closed,
    )?;
    expect_err(
        "try_lock() after session close",
        after.try_lock().await,
        "AlreadyClosed",
        already_closed,
    )?;
    expect_err(
        "unlock() after session close",
        before.unlock().await,
        "AlreadyClosed",
        already_closed,
    )?;
    service.close().await?;
    Ok(())
}

/// A zero TTL or zero timeout is `InvalidConfig`.
pub async fn invalid_config_is_rejected(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let invalid = |e: &Error| matches!(e, Error::InvalidConfig(_));
    expect_err(
        "a zero TTL",
        service
            .new_session(SessionConfig::new(Duration::ZERO))
            .await,
        "InvalidConfig",
        invalid,
    )?;
    let zero_timeout = h.config().with_timeout(Duration::ZERO);
    expect_err(
        "a zero timeout",
        service.new_session(zero_timeout).await,
        "InvalidConfig",
        invalid,
    )?;
    service.close().await?;
    Ok(())
}

/// `Locker::with_lock` runs the closure under the lock and unlocks afterwards, also when the
/// closure fails (its error comes back as it was); a lock lost while the closure runs stops the
/// closure and gives `Error::Lost`.
pub async fn with_lock_runs_and_unlocks(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let mut locker = session.new_locker(&h.id("with-lock"));
    let mut probe = session.new_locker(&h.id("with-lock"));
    let (token, free_inside) = locker
        .with_lock(|fence| {
            let probe = &mut probe;
            async move {
                let free = probe.try_lock().await?.is_some();
                Ok::<_, Error>((fence.fencing_token(), free || fence.is_lost()))
            }
        })
        .await?;
    ensure!(
        token > 0 && !free_inside,
        "with_lock ran its closure without holding the lock"
    );
    ensure!(takes(&mut probe).await?, "with_lock did not unlock");
    let failed: Result<(), Error> = locker
        .with_lock(|_| async { Err(Error::InvalidId("the closure's own error".into())) })
        .await;
    ensure!(
        matches!(&failed, Err(Error::InvalidId(m)) if m == "the closure's own error"),
        "with_lock did not return the closure's error as it was: {failed:?}"
    );
    ensure!(
        takes(&mut probe).await?,
        "with_lock did not unlock after its closure failed"
    );
    let ending = service.new_session(h.config()).await?;
    let lost = h
        .within(
            PATIENCE,
            "with_lock whose session is closed while the closure runs",
            ending.new_locker(&h.id("with-lock")).with_lock(|_| {
                let ending = ending.clone();
                async move {
                    ending.close().await?;
                    std::future::pending::<Result<(), Error>>().await
                }
            }),
        )
        .await?;
    ensure!(
        lost.as_ref().is_err_and(|e| e.kind() == ErrorKind::Lost),
        "with_lock whose lock was lost while its closure ran returned {lost:?}, not Error::Lost"
    );
    service.close().await?;
    Ok(())
}
