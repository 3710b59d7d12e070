//! What is shared: lockers of different services and of different OS processes, opened on the
//! same backend, against what the harness declares ([`Sharing`]). What is declared shared must
//! exclude, hand tokens that increase and be FIFO across the boundary; what is declared separate
//! must be independent (so that the declaration, which users read, is honest).

use std::time::{Duration, Instant};

use lock_core::Service;

use crate::child::Child;
use crate::conformance::{follows, joined, still_waiting, takes, waiter_after, PATIENCE};
use crate::{ensure, Failure, Harness, Outcome, Sharing};

/// Two services, or the same one twice when the harness declares services separate (so that
/// checks about "another party" still run, between sessions of one service).
pub(crate) async fn two_services(h: &Harness) -> Result<(Service, Service), Failure> {
    let first: Service = h.service().await?;
    let second = match h.sharing() {
        Sharing::Service => first.clone(),
        Sharing::Process | Sharing::Processes => h.service().await?,
    };
    Ok((first, second))
}

/// Two services of the backend: if declared shared they exclude each other on an id; if
/// declared per-service, both are granted it. One service is shared by all its sessions either
/// way.
pub async fn services_share_locks_as_declared(h: &Harness) -> Outcome {
    let (one, two) = (h.service().await?, h.service().await?);
    let id = h.id("services");
    let (s1, s2) = (
        one.new_session(h.config()).await?,
        two.new_session(h.config()).await?,
    );
    let (mut a, mut b) = (s1.new_locker(&id), s2.new_locker(&id));
    let held = a.lock().await?;
    let other = b.try_lock().await?;
    match h.sharing() {
        Sharing::Service => {
            ensure!(
                other.is_some(),
                "two services declared separate (Sharing::Service) excluded each other"
            );
            b.unlock().await?;
        }
        Sharing::Process | Sharing::Processes => {
            ensure!(
                other.is_none(),
                "another service took a held lock: no exclusion between services of one backend"
            );
            ensure!(
                tokio::time::timeout(h.settle(), b.lock()).await.is_err(),
                "another service was granted a held lock"
            );
            a.unlock().await?;
            let next = h
                .within(PATIENCE, "the other service after unlock", b.lock())
                .await??;
            follows(
                "another service after unlock",
                next.fencing_token(),
                held.fencing_token(),
            )?;
            b.unlock().await?;
        }
    }
    let s3 = one.new_session(h.config()).await?;
    let mut c = s3.new_locker(&id);
    if h.sharing() == Sharing::Service {
        ensure!(
            c.try_lock().await?.is_none(),
            "a second session of one service took a held lock"
        );
        a.unlock().await?;
    }
    ensure!(
        takes(&mut c).await?,
        "the id is not free after every holder unlocked"
    );
    one.close().await?;
    two.close().await?;
    Ok(())
}

/// Holds alternating between services (and between `lock` and `try_lock`) get strictly
/// increasing fencing tokens: one counter per id, not per service.
pub async fn fencing_tokens_increase_across_services(h: &Harness) -> Outcome {
    let (one, two) = two_services(h).await?;
    let id = h.id("tokens-services");
    let (s1, s2) = (
        one.new_session(h.config()).await?,
        two.new_session(h.config()).await?,
    );
    let (mut a, mut b) = (s1.new_locker(&id), s2.new_locker(&id));
    let mut tokens = Vec::new();
    for round in 0..4 {
        let (first, second) = if round % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let held = first.lock().await?;
        tokens.push(held.fencing_token());
        first.unlock().await?;
        let held = second
            .try_lock()
            .await?
            .ok_or_else(|| Failure::new("try_lock on a free id returned None"))?;
        tokens.push(held.fencing_token());
        second.unlock().await?;
    }
    ensure!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens of holds alternating between services did not strictly increase: \
         {tokens:?}"
    );
    one.close().await?;
    if h.sharing() != Sharing::Service {
        two.close().await?;
    }
    Ok(())
}

/// Waiters from different services are granted in the order they started waiting (when the
/// harness declares FIFO).
pub async fn waiters_of_different_services_are_granted_in_fifo_order(h: &Harness) -> Outcome {
    let (one, two) = two_services(h).await?;
    crate::conformance::fifo(
        h,
        "waiters_of_different_services_are_granted_in_fifo_order",
        [one.clone(), two.clone()],
        "fifo-services",
        crate::Fifo::Shared,
    )
    .await?;
    one.close().await?;
    if h.sharing() != Sharing::Service {
        two.close().await?;
    }
    Ok(())
}

/// The holder's `lost()` fires before a waiter of another service is granted, whichever way
/// the hold ends: unlock, session close, every handle of the session dropped.
pub async fn lost_fires_before_another_service_is_granted(h: &Harness) -> Outcome {
    let (one, two) = two_services(h).await?;
    for how in ["unlock", "session close", "every handle dropped"] {
        let id = h.id(&format!("lost-before-{}", how.replace(' ', "-")));
        let holder = one.new_session(h.config()).await?;
        let mut a = holder.new_locker(&id);
        let held = a.lock().await?;
        let waiting = two.new_session(h.config()).await?;
        let (mut waiter, token) = (waiter_after(waiting, id, held.lost()), held.fencing_token());
        tokio::time::sleep(h.settle()).await;
        still_waiting(&mut waiter, &format!("before any {how}")).await?;
        match how {
            "unlock" => a.unlock().await?,
            "session close" => holder.close().await?,
            _ => drop((held, a, holder)),
        }
        let (granted, b, _waiting) =
            joined(h, PATIENCE, &format!("the waiter after {how}"), waiter).await?;
        let (lost_first, next) = granted?;
        ensure!(
            lost_first,
            "after {how}, another service was granted the lock while the holder's is_lost() \
             was still false"
        );
        follows(
            &format!("after {how}, the next holder"),
            next.fencing_token(),
            token,
        )?;
        b.unlock().await?;
    }
    one.close().await?;
    if h.sharing() != Sharing::Service {
        two.close().await?;
    }
    Ok(())
}

/// Closing a service ends its sessions everywhere: a waiter of another service is let in
/// (when services share locks), or, when services are separate, a hold of another service on
/// the same id is not disturbed.
pub async fn closing_a_service_lets_another_service_in(h: &Harness) -> Outcome {
    let (one, two) = (h.service().await?, h.service().await?);
    let id = h.id("service-close");
    let holder = one.new_session(h.config()).await?;
    let done = holder.done();
    let held = holder.new_locker(&id).lock().await?;
    let waiting = two.new_session(h.config()).await?;
    let mut b = waiting.new_locker(&id);
    if h.sharing() == Sharing::Service {
        let theirs = b.lock().await?;
        one.close().await?;
        h.within(PATIENCE, "lost() after the service closed", held.lost())
            .await?;
        ensure!(
            !theirs.is_lost(),
            "closing one service ended a hold of another, separate service"
        );
        b.unlock().await?;
        two.close().await?;
        return Ok(());
    }
    let waiter = tokio::spawn(async move { (b.lock().await, b) });
    tokio::time::sleep(h.settle()).await;
    one.close().await?;
    h.within(PATIENCE, "done() after the service closed", done)
        .await?;
    ensure!(held.is_lost(), "a hold of a closed service is not lost");
    let (granted, b) = joined(h, PATIENCE, "the other service's waiter", waiter).await?;
    let _granted = granted?;
    b.unlock().await?;
    two.close().await?;
    Ok(())
}

/// Another OS process, opening the same backend: if declared shared across processes, it
/// excludes this one on an id and tokens increase from one process to the other in both
/// directions; if not, it is independent.
pub async fn processes_share_locks_as_declared(h: &Harness) -> Outcome {
    const CHECK: &str = "processes_share_locks_as_declared";
    let Some(mut child) = Child::start(h, CHECK).await? else {
        return Ok(());
    };
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let id = h.id("processes");
    let mut locker = session.new_locker(&id);
    child.send(&format!("lock {id}")).await?;
    let theirs = Child::token(&child.answer(PATIENCE, "the child's lock").await?, CHECK)?;
    let theirs = theirs.ok_or_else(|| Failure::new("the child's lock answered busy"))?;
    if h.sharing() != Sharing::Processes {
        let mine = locker.try_lock().await?;
        ensure!(
            mine.is_some(),
            "another process holding the id excluded this one, but the harness declares {:?}",
            h.sharing()
        );
        locker.unlock().await?;
        child.finish().await?;
        service.close().await?;
        return Ok(());
    }
    ensure!(
        locker.try_lock().await?.is_none(),
        "this process took an id another process holds: no exclusion between processes"
    );
    ensure!(
        tokio::time::timeout(h.settle(), locker.lock())
            .await
            .is_err(),
        "this process was granted an id another process holds"
    );
    child.send(&format!("unlock {id}")).await?;
    child.answer(PATIENCE, "the child's unlock").await?;
    let mine = h
        .within(
            PATIENCE,
            "lock() after the other process unlocked",
            locker.lock(),
        )
        .await??;
    follows(
        "this process after the other process",
        mine.fencing_token(),
        theirs,
    )?;
    child.send(&format!("try {id}")).await?;
    let busy = Child::token(
        &child.answer(PATIENCE, "the child's try_lock").await?,
        CHECK,
    )?;
    ensure!(
        busy.is_none(),
        "the other process's try_lock took an id this process holds (token {busy:?})"
    );
    child.send(&format!("lock {id}")).await?;
    ensure!(
        child.answer(h.settle(), "the child's lock").await.is_err(),
        "the other process was granted an id this process holds"
    );
    locker.unlock().await?;
    let next = Child::token(&child.answer(PATIENCE, "the child's lock").await?, CHECK)?;
    let next = next.ok_or_else(|| Failure::new("the child's lock answered busy"))?;
    ensure!(
        next > mine.fencing_token(),
        "the other process's token {next} does not follow this process's {}",
        mine.fencing_token()
    );
    child.send(&format!("unlock {id}")).await?;
    child.answer(PATIENCE, "the child's unlock").await?;
    child.finish().await?;
    service.close().await?;
    Ok(())
}

/// A process killed (SIGKILL, no clean-up) while it holds a lock frees it: within the TTL for
/// a leased backend, at once otherwise. The next holder's token follows the dead one's.
pub async fn a_killed_process_frees_its_lock(h: &Harness) -> Outcome {
    const CHECK: &str = "a_killed_process_frees_its_lock";
    if h.sharing() != Sharing::Processes {
        h.skip(
            CHECK,
            "the harness declares locks not shared across processes: another process's death \
             cannot be seen",
        );
        return Ok(());
    }
    let Some(mut child) = Child::start(h, CHECK).await? else {
        return Ok(());
    };
    let service = h.service().await?;
    let id = h.id("killed");
    child.send(&format!("lock {id}")).await?;
    let theirs = Child::token(&child.answer(PATIENCE, "the child's lock").await?, CHECK)?;
    let theirs = theirs.ok_or_else(|| Failure::new("the child's lock answered busy"))?;
    let session = service.new_session(h.config()).await?;
    let mut locker = session.new_locker(&id);
    ensure!(
        locker.try_lock().await?.is_none(),
        "this process took an id a live process holds"
    );
    child.kill().await?;
    let killed = Instant::now();
    let bound = if h.leases() {
        h.ttl() + h.ttl() / 2 + h.lock_delay() + h.settle()
    } else {
        h.settle() + Duration::from_secs(1)
    };
    let mine = match tokio::time::timeout(bound + PATIENCE, locker.lock()).await {
        Ok(granted) => granted?,
        Err(_) => {
            return Err(Failure::new(format!(
                "the lock of a killed process was still held {:?} later",
                bound + PATIENCE
            )))
        }
    };
    let took = killed.elapsed();
    ensure!(
        took <= bound,
        "the lock of a killed process was freed only after {took:?} (bound {bound:?}: {})",
        if h.leases() {
            "the TTL and a half, and the declared lock-delay"
        } else {
            "the harness declares no leases, so the backend must see the death at once"
        }
    );
    follows("after a killed holder", mine.fencing_token(), theirs)?;
    locker.unlock().await?;
    service.close().await?;
    Ok(())
}
