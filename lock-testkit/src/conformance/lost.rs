//! The lost signal and the session's `done()`.

use lock_core::{Locker, Lost};

use crate::conformance::{follows, joined, takes, PATIENCE};
use crate::{ensure, Harness, Outcome};

/// `lost` (a hold's [`Lost`]) resolves within [`PATIENCE`], and says so after.
pub(crate) async fn fires(h: &Harness, lost: &Lost, what: &str) -> Outcome {
    h.within(PATIENCE, &format!("lost() after {what}"), lost.clone())
        .await?;
    ensure!(
        lost.is_lost(),
        "is_lost() is false after lost() resolved ({what})"
    );
    Ok(())
}

/// `lost` does not resolve within the harness's settle time.
pub(crate) async fn pending(h: &Harness, lost: &Lost, what: &str) -> Outcome {
    ensure!(
        !lost.is_lost(),
        "is_lost() is true while the lock is held ({what})"
    );
    ensure!(
        tokio::time::timeout(h.settle(), lost.clone())
            .await
            .is_err(),
        "lost() resolved while the lock is held ({what})"
    );
    Ok(())
}

/// `unlock` fires the hold's `lost()` and every `Lost` taken from it; a new hold is not lost.
pub async fn lost_fires_on_unlock(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let mut locker = session.new_locker(&h.id("lost-unlock"));
    let held = locker.lock().await?;
    let watcher = held.lost();
    pending(h, &held.lost(), "before unlock").await?;
    locker.unlock().await?;
    fires(h, &held.lost(), "unlock").await?;
    fires(h, &watcher, "unlock (a Lost taken before)").await?;
    let again = locker.lock().await?;
    pending(h, &again.lost(), "a new hold after unlock").await?;
    ensure!(
        held.is_lost(),
        "an old hold came back to life when the locker locked again"
    );
    locker.unlock().await?;
    service.close().await?;
    Ok(())
}

/// Closing the session fires `lost()` of its holds and resolves `done()`; `Held::unlock()` of
/// such a hold is `Error::Lost`.
pub async fn lost_fires_on_session_close(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let done = session.done();
    ensure!(!done.is_done(), "done() is resolved on a fresh session");
    let (mut a, mut b) = (
        session.new_locker(&h.id("close-a")),
        session.new_locker(&h.id("close-b")),
    );
    let (ha, hb) = (a.lock().await?, b.lock().await?);
    session.close().await?;
    fires(h, &ha.lost(), "session close").await?;
    fires(h, &hb.lost(), "session close").await?;
    h.within(PATIENCE, "done() after session close", done)
        .await?;
    // Releasing a hold that was lost says so: what ran under it may have overlapped.
    let released = ha.unlock().await;
    ensure!(
        released
            .as_ref()
            .is_err_and(|e| e.kind() == lock_core::ErrorKind::Lost),
        "Held::unlock() of a hold its session's close ended gave {released:?}, not Error::Lost"
    );
    let other = service.new_session(h.config()).await?;
    let mut c = other.new_locker(&h.id("close-a"));
    ensure!(
        takes(&mut c).await?,
        "the lock of a closed session was not released"
    );
    service.close().await?;
    Ok(())
}

/// Dropping a session's handle ends nothing while its lockers and holds live; dropping the
/// last of them ends it: holds lost, `done()` resolved, locks free for others.
pub async fn lost_fires_on_session_drop(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let done = session.done();
    let id = h.id("drop-session");
    let mut locker = session.new_locker(&id);
    let held = locker.lock().await?;
    let (lost, token) = (held.lost(), held.fencing_token());
    drop(session);
    pending(h, &lost, "the session handle dropped, its locker alive").await?;
    ensure!(
        !done.is_done(),
        "done() resolved when the session handle was dropped, although its locker lives"
    );
    drop(locker);
    pending(
        h,
        &lost,
        "the session and locker handles dropped, the Held alive",
    )
    .await?;
    drop(held);
    fires(h, &lost, "the last handle of the session dropped").await?;
    h.within(PATIENCE, "done() after session drop", done)
        .await?;
    let other = service.new_session(h.config()).await?;
    let mut c = other.new_locker(&id);
    let granted = h
        .within(
            PATIENCE,
            "lock after the holder's session was dropped",
            c.lock(),
        )
        .await??;
    follows("the next holder", granted.fencing_token(), token)?;
    service.close().await?;
    Ok(())
}

/// Closing the service ends every session: holds lost, `done()` resolved, further use fails.
pub async fn lost_fires_on_service_close(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let done = session.done();
    let mut locker = session.new_locker(&h.id("service-close"));
    let held = locker.lock().await?;
    service.close().await?;
    fires(h, &held.lost(), "service close").await?;
    h.within(PATIENCE, "done() after service close", done)
        .await?;
    crate::conformance::expect_err(
        "new_session after service close",
        service.new_session(h.config()).await,
        "AlreadyClosed",
        |e| matches!(e, lock_core::Error::AlreadyClosed(_)),
    )?;
    crate::conformance::expect_err(
        "lock after service close",
        locker.lock().await,
        "AlreadyClosed",
        |e| matches!(e, lock_core::Error::AlreadyClosed(_)),
    )
}

/// When the next holder is granted the lock, the previous holder's `is_lost()` is already
/// true: after an unlock, a session close, a dropped `Held`, and every handle dropped.
pub async fn lost_fires_before_next_holder_is_granted(h: &Harness) -> Outcome {
    let service = h.service().await?;
    for (n, how) in [
        "unlock",
        "session close",
        "Held drop",
        "every handle dropped",
    ]
    .into_iter()
    .enumerate()
    {
        let id = h.id(&format!("before-next-{n}"));
        let first = service.new_session(h.config()).await?;
        let mut locker = first.new_locker(&id);
        let held = locker.lock().await?;
        let second = service.new_session(h.config()).await?;
        let mut waiter = second.new_locker(&id);
        let watched = held.lost();
        let next = tokio::spawn(async move {
            let granted = waiter.lock().await;
            (watched.is_lost(), granted, waiter)
        });
        tokio::time::sleep(h.settle()).await;
        match how {
            "unlock" => locker.unlock().await?,
            "session close" => first.close().await?,
            "Held drop" => drop(held),
            _ => drop((held, locker, first)),
        }
        let (was_lost, granted, waiter) =
            joined(h, PATIENCE, &format!("next holder after {how}"), next).await?;
        let _granted = granted?;
        ensure!(
            was_lost,
            "the next holder was granted before the previous hold (ended by {how}) was lost"
        );
        waiter.unlock().await?;
    }
    service.close().await?;
    Ok(())
}

/// Dropping a `Held` without `unlock()` releases the lock (its `lost()` fires, another party is
/// granted it, the locker can lock again); dropping the locker's handle alone does not, while
/// the `Held` lives.
pub async fn dropping_a_held_releases(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let id = h.id("drop-held");
    let other = service.new_session(h.config()).await?;
    let mut next = other.new_locker(&id);
    // The guard alone.
    let mut locker = session.new_locker(&id);
    let held = locker.lock().await?;
    let lost = held.lost();
    drop(held);
    fires(h, &lost, "the Held dropped").await?;
    let granted = h
        .within(PATIENCE, "lock after the Held was dropped", next.lock())
        .await??;
    drop(granted);
    let again = h
        .within(PATIENCE, "the locker locking again", locker.lock())
        .await??;
    // The locker's handle, then the guard.
    let lost = again.lost();
    drop(locker);
    pending(h, &lost, "the locker handle dropped, its Held alive").await?;
    ensure!(
        next.try_lock().await?.is_none(),
        "another party took the lock while a Held whose locker handle was dropped lives"
    );
    drop(again);
    fires(h, &lost, "the Held dropped after its locker handle").await?;
    let _next = h
        .within(
            PATIENCE,
            "lock after the last handle was dropped",
            next.lock(),
        )
        .await??;
    service.close().await?;
    Ok(())
}

/// A lock taken through a temporary locker (`session.new_locker(id).lock().await?`) is held
/// for as long as its `Held` lives.
pub async fn a_hold_through_a_temporary_locker_is_live(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let id = h.id("temporary-locker");
    let held = service
        .new_session(h.config())
        .await?
        .new_locker(&id)
        .lock()
        .await?;
    pending(
        h,
        &held.lost(),
        "a hold through a temporary session and locker",
    )
    .await?;
    let other = service.new_session(h.config()).await?;
    ensure!(
        other.new_locker(&id).try_lock().await?.is_none(),
        "another party took a lock held through a temporary locker"
    );
    held.unlock().await?;
    ensure!(
        takes(&mut other.new_locker(&id)).await?,
        "the lock was not free after Held::unlock()"
    );
    service.close().await?;
    Ok(())
}

/// A held lock outlives the session TTL while the session is kept alive.
pub async fn held_lock_survives_past_ttl(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let id = h.id("past-ttl");
    let mut locker: Locker = session.new_locker(&id);
    let held = locker.lock().await?;
    let hold_for = h.ttl() + h.ttl() / 2;
    let lost_early = tokio::time::timeout(hold_for, held.lost()).await.is_ok();
    ensure!(
        !lost_early && !held.is_lost(),
        "the lock was lost within {hold_for:?} although the session was alive"
    );
    ensure!(
        !session.done().is_done(),
        "the session ended although it was kept alive"
    );
    let other = service.new_session(h.config()).await?;
    ensure!(
        other.new_locker(&id).try_lock().await?.is_none(),
        "another session took the lock after the TTL"
    );
    locker.unlock().await?;
    service.close().await?;
    Ok(())
}
