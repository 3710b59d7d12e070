//! Semaphores: at most `limit` holders, each permit a hold with a lock's contract (FIFO, lost
//! before the permit is granted again, fencing tokens, cancellation, timeouts), a clear error
//! for parties that disagree on the limit, and the same sharing across services and processes
//! as locks. A backend that declares no semaphores must refuse them with `Unsupported`.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{ErrorKind, Locker, Session};

use crate::child::Child;
use crate::conformance::shared::two_services;
use crate::conformance::{expect_err, follows, joined, offered, PATIENCE};
use crate::{ensure, Failure, Harness, Outcome};

/// The semaphore `id` with `limit` in `session`, or `None` (after checking the refusal) when
/// the harness declares no semaphores.
async fn permit(
    h: &Harness,
    check: &str,
    session: &Session,
    id: &str,
    limit: u32,
) -> Result<Option<Locker>, Failure> {
    let made = session.new_semaphore(id, limit);
    offered(h, check, h.semaphores(), "semaphores", made)
}

/// Many tasks, each with its own session (on two services when they share locks), take
/// permits of a semaphore of 3 in a loop: never more than 3 hold at once, and 3 do.
pub async fn semaphore_admits_at_most_its_limit(h: &Harness) -> Outcome {
    const LIMIT: usize = 3;
    let (one, two) = two_services(h).await?;
    let id = h.id("sem-limit");
    let probe = one.new_session(h.config()).await?;
    if permit(h, "semaphore_admits_at_most_its_limit", &probe, &id, 3)
        .await?
        .is_none()
    {
        return Ok(());
    }
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut joins = Vec::new();
    for n in 0..8 {
        let service = if n % 2 == 0 { one.clone() } else { two.clone() };
        let (id, inside, most, config) = (id.clone(), inside.clone(), most.clone(), h.config());
        joins.push(tokio::spawn(async move {
            let session = service.new_session(config).await?;
            let mut permit = session.new_semaphore(&id, LIMIT as u32)?;
            for _ in 0..10 {
                let held = permit.lock().await?;
                let now = inside.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                ensure!(
                    now <= LIMIT,
                    "{now} holders of a semaphore of {LIMIT} at once"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
                ensure!(!held.is_lost(), "a permit was reported lost while held");
                inside.fetch_sub(1, SeqCst);
                held.unlock().await?;
            }
            session.close().await?;
            Ok::<(), Failure>(())
        }));
    }
    for join in joins {
        joined(h, PATIENCE * 6, "a task taking permits", join).await??;
    }
    let most = most.load(SeqCst);
    ensure!(
        most == LIMIT,
        "at most {most} of 8 contending tasks held a semaphore of {LIMIT} at once: permits \
         were not all granted"
    );
    Ok(())
}

/// With every permit held, `try_lock` answers busy; waiters are granted in the order they
/// queued as permits come back; each grant's token is greater than every earlier one.
pub async fn semaphore_waiters_are_granted_in_fifo_order_with_increasing_tokens(
    h: &Harness,
) -> Outcome {
    let check = "semaphore_waiters_are_granted_in_fifo_order_with_increasing_tokens";
    let (one, two) = two_services(h).await?;
    let id = h.id("sem-fifo");
    let owner = one.new_session(h.config()).await?;
    let Some(mut a) = permit(h, check, &owner, &id, 2).await? else {
        return Ok(());
    };
    let mut b = owner.new_semaphore(&id, 2)?;
    let (held_a, held_b) = (a.lock().await?, b.lock().await?);
    let mut last = held_a.fencing_token().max(held_b.fencing_token());
    follows(
        "the second permit",
        held_b.fencing_token(),
        held_a.fencing_token(),
    )?;
    let other = two.new_session(h.config()).await?;
    let mut probe = other.new_semaphore(&id, 2)?;
    ensure!(
        probe.try_lock().await?.is_none(),
        "try_lock took a third permit of a semaphore of 2"
    );
    let order: Order = Arc::new(Mutex::new(Vec::new()));
    let (mut joins, mut sessions, mut releases) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..4 {
        let service = if n % 2 == 0 { &two } else { &one };
        let session = service.new_session(h.config()).await?;
        let mut waiter = session.new_semaphore(&id, 2)?;
        sessions.push(session);
        let order = order.clone();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        releases.push(release);
        joins.push(tokio::spawn(async move {
            let held = waiter.lock().await?;
            order
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((n, held.fencing_token()));
            let _ = released.await; // hold until the check lets go
            held.unlock().await
        }));
        tokio::time::sleep(h.settle()).await; // queue in order
    }
    ensure!(
        order.lock().unwrap_or_else(|e| e.into_inner()).is_empty(),
        "a waiter was granted while both permits were held"
    );
    // One permit at a time: each must go to the next waiter in line, and to nobody else.
    held_a.unlock().await?;
    granted_in_order(h, &order, 1).await?;
    held_b.unlock().await?;
    granted_in_order(h, &order, 2).await?;
    let mut releases = releases.into_iter();
    for k in 3..=4 {
        let _ = releases.next().map(|r| r.send(()));
        granted_in_order(h, &order, k).await?;
    }
    releases.for_each(|r| {
        let _ = r.send(());
    });
    for join in joins {
        joined(h, PATIENCE, "a queued waiter", join).await??;
    }
    let order = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (n, token) in order {
        follows(&format!("waiter {n}"), token, last)?;
        last = token;
    }
    drop(sessions);
    Ok(())
}

/// The waiters granted so far, in the order they recorded it: `(queue position, token)`.
type Order = Arc<Mutex<Vec<(usize, u64)>>>;

/// Waits until `k` waiters were granted, then a settle time: exactly the first `k` in queue
/// order must have been.
async fn granted_in_order(h: &Harness, order: &Order, k: usize) -> Outcome {
    let served = || -> Vec<usize> {
        let order = order.lock().unwrap_or_else(|e| e.into_inner());
        order.iter().map(|(n, _)| *n).collect()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while served().len() < k {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "a freed permit was granted to no waiter within {PATIENCE:?} (granted: {:?})",
            served()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(h.settle()).await;
    let served = served();
    let want: Vec<usize> = (0..k).collect();
    ensure!(
        served == want,
        "with {k} permit(s) freed in turn, waiters were granted in order {served:?}, expected \
         {want:?} (FIFO, one waiter per permit)"
    );
    Ok(())
}

/// A permit's `lost()` fires when its session closes, before that permit is granted to the
/// waiter it frees; the other permit stays held.
pub async fn semaphore_lost_fires_before_the_permit_is_granted_again(h: &Harness) -> Outcome {
    let check = "semaphore_lost_fires_before_the_permit_is_granted_again";
    let (one, two) = two_services(h).await?;
    let id = h.id("sem-lost");
    let first = one.new_session(h.config()).await?;
    let Some(mut a) = permit(h, check, &first, &id, 2).await? else {
        return Ok(());
    };
    let keeper = one.new_session(h.config()).await?;
    let mut b = keeper.new_semaphore(&id, 2)?;
    let held_a = a.lock().await?;
    let held_b = b.lock().await?;
    let lost_a = held_a.lost();
    let waiting = two.new_session(h.config()).await?;
    let mut w = waiting.new_semaphore(&id, 2)?;
    let join = tokio::spawn(async move {
        let held = w.lock().await;
        let was_lost = lost_a.is_lost();
        (held.map(|held| (was_lost, held)), w, waiting)
    });
    tokio::time::sleep(h.settle()).await;
    ensure!(
        !join.is_finished(),
        "a third permit was granted while two were held"
    );
    first.close().await?;
    let (granted, _w, _waiting) = joined(h, PATIENCE, "the waiter", join).await?;
    let (was_lost, next) = granted?;
    ensure!(
        was_lost,
        "the freed permit was granted before its holder's lost() fired"
    );
    ensure!(held_a.is_lost(), "the closed session's permit is not lost");
    ensure!(
        !held_b.is_lost(),
        "closing one session ended another's permit"
    );
    follows(
        "the regranted permit",
        next.fencing_token(),
        held_b.fencing_token(),
    )?;
    drop(next);
    held_b.unlock().await?;
    Ok(())
}

/// Parties that disagree on the limit: a `lock()` with another limit than the holders' fails
/// with `LimitMismatch` (and grants nothing); once nobody holds or waits, a new limit is fine.
pub async fn semaphore_parties_that_disagree_on_the_limit_get_an_error(h: &Harness) -> Outcome {
    let check = "semaphore_parties_that_disagree_on_the_limit_get_an_error";
    let (one, two) = two_services(h).await?;
    let id = h.id("sem-mismatch");
    let s1 = one.new_session(h.config()).await?;
    let Some(mut two_permits) = permit(h, check, &s1, &id, 2).await? else {
        return Ok(());
    };
    let s2 = two.new_session(h.config()).await?;
    let mut three = s2.new_semaphore(&id, 3)?;
    let held = two_permits.lock().await?;
    let mismatch = |e: &lock_core::Error| e.kind() == ErrorKind::LimitMismatch;
    let got = h
        .within(PATIENCE, "lock() with another limit", three.lock())
        .await?;
    expect_err(
        "lock() with limit 3 while a party of limit 2 holds",
        got,
        "LimitMismatch",
        mismatch,
    )?;
    let got = three.try_lock().await;
    expect_err(
        "try_lock() with limit 3 while a party of limit 2 holds",
        got,
        "LimitMismatch",
        mismatch,
    )?;
    held.unlock().await?;
    let again = h
        .within(
            PATIENCE,
            "lock() with limit 3 once nobody holds",
            three.lock(),
        )
        .await?
        .map_err(|e| Failure::new(format!("a new limit once nobody held or waited: {e}")))?;
    let got = h
        .within(PATIENCE, "lock() with limit 2", two_permits.lock())
        .await?;
    expect_err(
        "lock() with limit 2 while a party of limit 3 holds",
        got,
        "LimitMismatch",
        mismatch,
    )?;
    again.unlock().await?;
    Ok(())
}

/// A `lock()` that times out, or is dropped while queued, leaves nothing: the permits it
/// waited for are granted to the next waiter at once, and none is held by the dropped one.
pub async fn semaphore_cancelled_waits_leave_nothing(h: &Harness) -> Outcome {
    let check = "semaphore_cancelled_waits_leave_nothing";
    let service = h.service().await?;
    let id = h.id("sem-cancel");
    let session = service.new_session(h.config()).await?;
    let Some(mut a) = permit(h, check, &session, &id, 1).await? else {
        return Ok(());
    };
    let held = a.lock().await?;
    let mut quitter = session.new_semaphore(&id, 1)?;
    let got = quitter.lock_timeout(h.settle()).await;
    expect_err("lock_timeout on a full semaphore", got, "Timeout", |e| {
        e.kind() == ErrorKind::Timeout
    })?;
    {
        let pending = quitter.lock();
        let _ = tokio::time::timeout(h.settle(), pending).await;
    }
    let mut next = session.new_semaphore(&id, 1)?;
    let mut probe = session.new_semaphore(&id, 1)?;
    let join = {
        let waiter = tokio::spawn(async move {
            let got = match next.lock().await {
                Ok(held) => {
                    let token = held.fencing_token();
                    held.unlock().await.map(|()| token)
                }
                Err(e) => Err(e),
            };
            (got, next)
        });
        tokio::time::sleep(h.settle()).await;
        waiter
    };
    held.unlock().await?;
    let (got, _next) = joined(h, PATIENCE, "the waiter after the cancelled ones", join).await?;
    got?;
    // The permit is free at once, or (a remote backend removing a cancelled party's record in
    // the background) within `FREED_WITHIN`.
    let deadline = tokio::time::Instant::now() + crate::conformance::cancel::FREED_WITHIN;
    loop {
        if let Some(held) = probe.try_lock().await? {
            held.unlock().await?;
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the semaphore is still held {:?} after every holder released: a cancelled wait \
             kept a permit",
            crate::conformance::cancel::FREED_WITHIN
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Another process shares a semaphore's permits as locks are shared: with the harness's
/// declaration of [`Sharing::Processes`](crate::Sharing::Processes), its permit counts against
/// the limit here.
pub async fn semaphore_permits_are_shared_across_processes(h: &Harness) -> Outcome {
    const CHECK: &str = "semaphore_permits_are_shared_across_processes";
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let id = h.id("sem-processes");
    let Some(mut mine) = permit(h, CHECK, &session, &id, 2).await? else {
        return Ok(());
    };
    let Some(mut child) = Child::if_shared(h, CHECK).await? else {
        return Ok(());
    };
    let spec = format!("sem:2:{id}");
    let lock = format!("lock {spec}");
    let theirs = child
        .holds(&lock, PATIENCE, "the child's permit", CHECK)
        .await?;
    let held = mine.lock().await?;
    follows(
        "this process's permit after the child's",
        held.fencing_token(),
        theirs,
    )?;
    let mut third = session.new_semaphore(&id, 2)?;
    ensure!(
        third.try_lock().await?.is_none(),
        "a third permit of a semaphore of 2 was granted while this process and another each \
         held one: no sharing between processes"
    );
    child.send(&format!("unlock {spec}")).await?;
    child.answer(PATIENCE, "the child's unlock").await?;
    let again = h
        .within(PATIENCE, "a permit the child gave back", third.lock())
        .await??;
    again.unlock().await?;
    held.unlock().await?;
    child.finish().await?;
    Ok(())
}
