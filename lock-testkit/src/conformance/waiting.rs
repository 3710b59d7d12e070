//! Waiting: timeouts, cancellation, and sessions ending under a waiter.

use std::time::{Duration, Instant};

use lock_core::{Error, Session};

use crate::conformance::{expect_err, joined, takes, PATIENCE};
use crate::{ensure, Failure, Harness, Outcome};

/// `lock()` fails with `Timeout` after the session's timeout (not before, not much later), and
/// leaves no trace: the lock is free once the holder unlocks.
pub async fn lock_times_out_after_session_timeout(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let id = h.id("timeout");
    let holder = service.new_session(h.config()).await?;
    let mut a = holder.new_locker(&id);
    let _held = a.lock().await?;
    let timeout = (h.settle() * 3).max(Duration::from_millis(300));
    let waiting = service
        .new_session(h.config().with_timeout(timeout))
        .await?;
    let mut b = waiting.new_locker(&id);
    let start = Instant::now();
    let result = h
        .within(timeout + PATIENCE, "lock() with a timeout", b.lock())
        .await?;
    let took = start.elapsed();
    expect_err(
        "lock() on a held id with a timeout",
        result,
        "Timeout",
        |e| matches!(e, Error::Timeout(_)),
    )?;
    ensure!(
        took >= timeout,
        "lock() timed out after {took:?}, before the timeout of {timeout:?}"
    );
    ensure!(
        took < timeout + Duration::from_secs(3),
        "lock() timed out after {took:?}, long after {timeout:?}"
    );
    a.unlock().await?;
    let third = service.new_session(h.config()).await?;
    let mut c = third.new_locker(&id);
    ensure!(
        takes(&mut c).await?,
        "the timed-out waiter left something behind: the id is not free"
    );
    ensure!(
        takes(&mut b).await?,
        "the timed-out locker cannot lock afterwards"
    );
    service.close().await?;
    Ok(())
}

/// Dropping a pending `lock()` future withdraws it: the next waiter is granted promptly, and
/// the dropped locker holds nothing.
pub async fn dropped_lock_future_leaves_nothing(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let id = h.id("cancel");
    let (s1, s2, s3) = (
        service.new_session(h.config()).await?,
        service.new_session(h.config()).await?,
        service.new_session(h.config()).await?,
    );
    let (mut a, mut b, mut c) = (s1.new_locker(&id), s2.new_locker(&id), s3.new_locker(&id));
    let _held = a.lock().await?;
    ensure!(
        tokio::time::timeout(h.settle(), b.lock()).await.is_err(),
        "lock() was granted on a held id"
    );
    let next = tokio::spawn(async move {
        let r = c.lock().await;
        (r, c)
    });
    tokio::time::sleep(h.settle()).await;
    a.unlock().await?;
    let (granted, c) = joined(
        h,
        Duration::from_secs(3),
        "the waiter behind a dropped lock() future",
        next,
    )
    .await?;
    let _granted = granted?;
    expect_err(
        "unlock by the locker whose lock() was dropped",
        b.unlock().await,
        "NotHeld",
        |e| matches!(e, Error::NotHeld),
    )?;
    c.unlock().await?;
    ensure!(
        takes(&mut b).await?,
        "the locker whose lock() was dropped cannot lock later"
    );
    service.close().await?;
    Ok(())
}

/// A waiter whose session is closed stops waiting with `Canceled`.
pub async fn waiter_is_canceled_when_its_session_closes(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let id = h.id("canceled");
    let holder = service.new_session(h.config()).await?;
    let mut a = holder.new_locker(&id);
    let held = a.lock().await?;
    let waiting: Session = service.new_session(h.config()).await?;
    let mut b = waiting.new_locker(&id);
    let pending = tokio::spawn(async move { b.lock().await });
    tokio::time::sleep(h.settle()).await;
    waiting.close().await?;
    let result = joined(h, PATIENCE, "the waiter after its session closed", pending).await?;
    expect_err(
        "lock() whose session closed while waiting",
        result,
        "Canceled",
        |e| matches!(e, Error::Canceled(_)),
    )?;
    ensure!(
        !held.is_lost(),
        "closing a waiter's session disturbed the holder"
    );
    a.unlock().await?;
    let third = service.new_session(h.config()).await?;
    ensure!(
        takes(&mut third.new_locker(&id)).await?,
        "the canceled waiter left something behind"
    );
    service.close().await?;
    Ok(())
}

/// Closing a session that holds an id and also waits for it (two lockers) ends both: the hold
/// is lost, and the waiting `lock()` returns — `Canceled`, or a hold that is already lost —
/// instead of waiting for a grant that its own session's close handed it.
pub async fn session_close_ends_its_hold_and_its_wait_on_one_id(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let id = h.id("close-both");
    let session: Session = service.new_session(h.config()).await?;
    let (mut a, mut b) = (session.new_locker(&id), session.new_locker(&id));
    let held = a.lock().await?;
    let pending = tokio::spawn(async move { b.lock().await });
    tokio::time::sleep(h.settle()).await;
    session.close().await?;
    h.within(
        PATIENCE,
        "lost() of the hold after session close",
        held.lost(),
    )
    .await?;
    let result = joined(h, PATIENCE, "the waiter after its session closed", pending).await?;
    match result {
        Ok(late) => ensure!(
            late.is_lost(),
            "lock() of a closed session returned a hold that is not lost"
        ),
        Err(e) => expect_err(
            "lock() whose session closed while waiting",
            Err::<(), _>(e),
            "Canceled",
            |e| matches!(e, Error::Canceled(_)),
        )?,
    }
    let other = service.new_session(h.config()).await?;
    ensure!(
        takes(&mut other.new_locker(&id)).await?,
        "the closed session left the id taken"
    );
    service.close().await?;
    Ok(())
}

/// `try_lock()` never takes an id a waiter is queued for, not even in the moment of a handover
/// (the holder has unlocked, the waiter is not yet granted). Checked from another service when
/// services share locks.
pub async fn try_lock_never_overtakes_a_queued_waiter(h: &Harness) -> Outcome {
    let (one, two) = crate::conformance::shared::two_services(h).await?;
    let id = h.id("try-overtake");
    let (s1, s2, s3) = (
        one.new_session(h.config()).await?,
        one.new_session(h.config()).await?,
        two.new_session(h.config()).await?,
    );
    let (mut holder, mut prober) = (s1.new_locker(&id), s3.new_locker(&id));
    // One party across the rounds, lent to a task per round and given back.
    let mut waiter = Some(s2.new_locker(&id));
    for round in 0..20 {
        let _held = holder.lock().await?;
        let queued = {
            let mut waiter = waiter.take().expect("given back every round");
            tokio::spawn(async move {
                let granted = waiter.lock().await;
                (waiter, granted)
            })
        };
        tokio::time::sleep(h.settle()).await; // the waiter is queued
        ensure!(
            prober.try_lock().await?.is_none(),
            "round {round}: try_lock took an id that is held and waited for"
        );
        holder.unlock().await?;
        // The handover: the waiter may not have been granted yet. try_lock must still fail.
        if let Some(taken) = prober.try_lock().await? {
            return Err(Failure::new(format!(
                "round {round}: try_lock took the id (token {}) while a waiter was queued for \
                 it, right after its holder unlocked",
                taken.fencing_token()
            )));
        }
        let (given_back, granted) =
            joined(h, PATIENCE, "the queued waiter after the handover", queued).await?;
        waiter = Some(given_back);
        let granted = granted?;
        ensure!(
            prober.try_lock().await?.is_none(),
            "round {round}: try_lock took an id the former waiter holds"
        );
        granted.unlock().await?;
    }
    one.close().await?;
    drop(two);
    Ok(())
}
