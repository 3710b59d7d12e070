//! The lost signal and the session's `done()`.

use std::sync::Arc;

use lock_core::{Held, Locker};

use crate::conformance::{follows, joined, PATIENCE};
use crate::{ensure, Harness, Outcome};

async fn fires(h: &Harness, held: &Held, what: &str) -> Outcome {
    h.within(PATIENCE, &format!("lost() after {what}"), held.lost())
        .await?;
    ensure!(
        held.is_lost(),
        "is_lost() is false after lost() resolved ({what})"
    );
    Ok(())
}

async fn pending(h: &Harness, held: &Held, what: &str) -> Outcome {
    ensure!(
        !held.is_lost(),
        "is_lost() is true while the lock is held ({what})"
    );
    ensure!(
        tokio::time::timeout(h.settle(), held.lost()).await.is_err(),
        "lost() resolved while the lock is held ({what})"
    );
    Ok(())
}

/// `unlock` fires the hold's `lost()` and every clone of it; a new hold is not lost.
pub async fn lost_fires_on_unlock(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(&h.config()).await?;
    let locker = session.new_locker(&h.id("lost-unlock"));
    let held = locker.lock().await?;
    let clone = held.clone();
    pending(h, &held, "before unlock").await?;
    locker.unlock().await?;
    fires(h, &held, "unlock").await?;
    fires(h, &clone, "unlock (clone)").await?;
    let again = locker.lock().await?;
    pending(h, &again, "a new hold after unlock").await?;
    ensure!(
        held.is_lost(),
        "an old hold came back to life when the locker locked again"
    );
    locker.unlock().await?;
    service.close().await?;
    Ok(())
}

/// Closing the session fires `lost()` of its holds and resolves `done()`.
pub async fn lost_fires_on_session_close(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(&h.config()).await?;
    let done = session.done();
    ensure!(!done.is_done(), "done() is resolved on a fresh session");
    let (a, b) = (
        session.new_locker(&h.id("close-a")),
        session.new_locker(&h.id("close-b")),
    );
    let (ha, hb) = (a.lock().await?, b.lock().await?);
    session.close().await?;
    fires(h, &ha, "session close").await?;
    fires(h, &hb, "session close").await?;
    h.within(PATIENCE, "done() after session close", done)
        .await?;
    let other = service.new_session(&h.config()).await?;
    let c = other.new_locker(&h.id("close-a"));
    ensure!(
        c.try_lock().await?.is_some(),
        "the lock of a closed session was not released"
    );
    service.close().await?;
    Ok(())
}

/// Dropping the session ends it: holds lost, `done()` resolved, locks free for others.
pub async fn lost_fires_on_session_drop(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(&h.config()).await?;
    let done = session.done();
    let id = h.id("drop-session");
    let locker = session.new_locker(&id);
    let held = locker.lock().await?;
    drop(session);
    fires(h, &held, "session drop").await?;
    h.within(PATIENCE, "done() after session drop", done)
        .await?;
    let other = service.new_session(&h.config()).await?;
    let c = other.new_locker(&id);
    let granted = h
        .within(
            PATIENCE,
            "lock after the holder's session was dropped",
            c.lock(),
        )
        .await??;
    follows(
        "the next holder",
        granted.fencing_token(),
        held.fencing_token(),
    )?;
    drop(locker);
    service.close().await?;
    Ok(())
}

/// Closing the service ends every session: holds lost, `done()` resolved, further use fails.
pub async fn lost_fires_on_service_close(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(&h.config()).await?;
    let done = session.done();
    let locker = session.new_locker(&h.id("service-close"));
    let held = locker.lock().await?;
    service.close().await?;
    fires(h, &held, "service close").await?;
    h.within(PATIENCE, "done() after service close", done)
        .await?;
    crate::conformance::expect_err(
        "new_session after service close",
        service.new_session(&h.config()).await,
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
/// true: after an unlock, a session close and a locker drop.
pub async fn lost_fires_before_next_holder_is_granted(h: &Harness) -> Outcome {
    let service = h.service().await?;
    for (n, how) in ["unlock", "session close", "locker drop"]
        .into_iter()
        .enumerate()
    {
        let id = h.id(&format!("before-next-{n}"));
        let first = service.new_session(&h.config()).await?;
        let locker = first.new_locker(&id);
        let held = locker.lock().await?;
        let second = service.new_session(&h.config()).await?;
        let waiter = second.new_locker(&id);
        let watched = held.clone();
        let next = tokio::spawn(async move {
            let granted = waiter.lock().await;
            (watched.is_lost(), granted, waiter)
        });
        tokio::time::sleep(h.settle()).await;
        match how {
            "unlock" => locker.unlock().await?,
            "session close" => first.close().await?,
            _ => drop(locker),
        }
        let (was_lost, granted, waiter) =
            joined(h, PATIENCE, &format!("next holder after {how}"), next).await?;
        granted?;
        ensure!(
            was_lost,
            "the next holder was granted before the previous hold (ended by {how}) was lost"
        );
        waiter.unlock().await?;
    }
    service.close().await?;
    Ok(())
}

/// Dropping a locker that holds the lock releases it.
pub async fn dropping_a_holding_locker_releases(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(&h.config()).await?;
    let id = h.id("drop-locker");
    let locker = session.new_locker(&id);
    let held = locker.lock().await?;
    drop(locker);
    fires(h, &held, "locker drop").await?;
    let other = service.new_session(&h.config()).await?;
    let next = other.new_locker(&id);
    h.within(
        PATIENCE,
        "lock after the holding locker was dropped",
        next.lock(),
    )
    .await??;
    service.close().await?;
    Ok(())
}

/// A held lock outlives the session TTL while the session is kept alive.
pub async fn held_lock_survives_past_ttl(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(&h.config()).await?;
    let id = h.id("past-ttl");
    let locker: Arc<dyn Locker> = Arc::from(session.new_locker(&id));
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
    let other = service.new_session(&h.config()).await?;
    ensure!(
        other.new_locker(&id).try_lock().await?.is_none(),
        "another session took the lock after the TTL"
    );
    locker.unlock().await?;
    service.close().await?;
    Ok(())
}
