//! Mutual exclusion, FIFO order and fencing tokens.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use crate::conformance::{follows, joined, takes, PATIENCE};
use crate::{ensure, Failure, Harness, Outcome};

/// The counter example (the README's first command): 1000 tasks, each with its own session,
/// increment a shared counter under one lock; the counter ends at 1000 and no task sees its
/// lock lost while holding it.
pub async fn seed_example_counts_to_1000(h: &Harness) -> Outcome {
    contended_counter(h, "seed", 1000, 1, false).await
}

/// A non-atomic read-modify-write under N×M contention loses no update.
pub async fn counter_has_no_lost_update(h: &Harness) -> Outcome {
    contended_counter(h, "rmw", 16, 20, true).await
}

async fn contended_counter(
    h: &Harness,
    name: &str,
    tasks: u64,
    rounds: u64,
    yield_inside: bool,
) -> Outcome {
    let service: lock_core::Service = h.service().await?;
    let id = h.id(name);
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    let mut joins = Vec::new();
    for _ in 0..tasks {
        let (service, id, counter, inside, config) = (
            service.clone(),
            id.clone(),
            counter.clone(),
            inside.clone(),
            h.config(),
        );
        joins.push(tokio::spawn(async move {
            let session = service.new_session(config).await?;
            let mut locker = session.new_locker(&id);
            for _ in 0..rounds {
                let held = locker.lock().await?;
                ensure!(
                    !inside.swap(true, SeqCst),
                    "two holders inside the critical section at once"
                );
                ensure!(
                    !held.is_lost(),
                    "the lock was reported lost right after it was granted"
                );
                let read = counter.load(SeqCst);
                if yield_inside {
                    tokio::task::yield_now().await;
                }
                counter.store(read + 1, SeqCst);
                ensure!(!held.is_lost(), "the lock was reported lost while held");
                inside.store(false, SeqCst);
                locker.unlock().await?;
            }
            session.close().await?;
            Ok::<(), Failure>(())
        }));
    }
    for join in joins {
        h.within(PATIENCE * 6, "a contending task", join)
            .await?
            .map_err(|e| Failure::new(format!("a contending task panicked: {e}")))??;
    }
    let total = counter.load(SeqCst);
    ensure!(
        total == tasks * rounds,
        "counter is {total}, expected {}: updates were lost",
        tasks * rounds
    );
    service.close().await?;
    Ok(())
}

/// Two lockers of one session, same id: the second cannot take the lock while the first holds it.
pub async fn lockers_of_one_session_exclude_each_other(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let id = h.id("same-session");
    let (mut a, mut b) = (session.new_locker(&id), session.new_locker(&id));
    let held = a.lock().await?;
    ensure!(
        b.try_lock().await?.is_none(),
        "a second locker of the same session took a held lock"
    );
    let blocked = tokio::time::timeout(h.settle(), b.lock()).await;
    ensure!(
        blocked.is_err(),
        "a second locker of the same session was granted a held lock"
    );
    a.unlock().await?;
    ensure!(held.is_lost(), "unlock did not mark the hold lost");
    let held_b = h
        .within(PATIENCE, "second locker after unlock", b.lock())
        .await??;
    follows(
        "the next holder",
        held_b.fencing_token(),
        held.fencing_token(),
    )?;
    b.unlock().await?;
    service.close().await?;
    Ok(())
}

/// Lockers of two sessions, same id, exclude each other.
pub async fn lockers_of_two_sessions_exclude_each_other(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let (s1, s2) = (
        service.new_session(h.config()).await?,
        service.new_session(h.config()).await?,
    );
    let id = h.id("two-sessions");
    let (mut a, mut b) = (s1.new_locker(&id), s2.new_locker(&id));
    let _held = a.lock().await?;
    ensure!(
        b.try_lock().await?.is_none(),
        "another session took a held lock"
    );
    ensure!(
        tokio::time::timeout(h.settle(), b.lock()).await.is_err(),
        "another session was granted a held lock"
    );
    a.unlock().await?;
    let _held = h
        .within(PATIENCE, "other session after unlock", b.lock())
        .await??;
    b.unlock().await?;
    service.close().await?;
    Ok(())
}

/// Different ids do not exclude each other.
pub async fn ids_are_independent(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let (s1, s2) = (
        service.new_session(h.config()).await?,
        service.new_session(h.config()).await?,
    );
    let (mut a, mut b) = (
        s1.new_locker(&h.id("independent-a")),
        s2.new_locker(&h.id("independent-b")),
    );
    let held_a = a.lock().await?;
    let held_b = h
        .within(PATIENCE, "locking a second, different id", b.lock())
        .await??;
    ensure!(
        !held_a.is_lost() && !held_b.is_lost(),
        "holding one id lost another"
    );
    a.unlock().await?;
    ensure!(!held_b.is_lost(), "unlocking one id lost another");
    b.unlock().await?;
    service.close().await?;
    Ok(())
}

/// Waiters are granted in the order they started waiting.
pub async fn waiters_are_granted_in_fifo_order(h: &Harness) -> Outcome {
    let service: lock_core::Service = h.service().await?;
    fifo(
        h,
        "waiters_are_granted_in_fifo_order",
        [service.clone(), service.clone()],
        "fifo",
        crate::Fifo::WithinService,
    )
    .await?;
    service.close().await?;
    Ok(())
}

/// The FIFO check (skipped, saying so, where the harness declares less than `needs`): one
/// holder on `services[0]`, then five waiters queued one after another, alternating between
/// the two services; they must be granted in that order.
pub(crate) async fn fifo(
    h: &Harness,
    check: &str,
    services: [lock_core::Service; 2],
    name: &str,
    needs: crate::Fifo,
) -> Outcome {
    if h.fifo() < needs {
        let declared = format!(
            "the harness declares {:?} FIFO, this checks {needs:?}",
            h.fifo()
        );
        h.skip(check, &declared);
        return Ok(());
    }
    let id = h.id(name);
    let owner = services[0].new_session(h.config()).await?;
    let mut first = owner.new_locker(&id);
    let _held = first.lock().await?;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut sessions = Vec::new();
    let mut joins = Vec::new();
    for n in 0..5 {
        let session = services[(n + 1) % 2].new_session(h.config()).await?;
        let mut locker = session.new_locker(&id);
        sessions.push(session);
        let order = order.clone();
        joins.push(tokio::spawn(async move {
            let _held = locker.lock().await?;
            order.lock().unwrap_or_else(|e| e.into_inner()).push(n);
            locker.unlock().await
        }));
        tokio::time::sleep(h.settle()).await; // let this waiter queue before the next
    }
    first.unlock().await?;
    for join in joins {
        joined(h, PATIENCE, "a queued waiter", join).await??;
    }
    let order = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ensure!(
        order == [0, 1, 2, 3, 4],
        "waiters were granted in order {order:?}, expected [0, 1, 2, 3, 4]"
    );
    Ok(())
}

/// Tokens increase strictly across holders, sessions, lockers, `lock` and `try_lock`.
pub async fn fencing_tokens_strictly_increase(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let id = h.id("tokens");
    let (s1, s2) = (
        service.new_session(h.config()).await?,
        service.new_session(h.config()).await?,
    );
    let (mut a, mut b, mut c) = (s1.new_locker(&id), s2.new_locker(&id), s1.new_locker(&id));
    let mut tokens = Vec::new();
    for step in 0..3 {
        let held = a.lock().await?;
        tokens.push(held.fencing_token());
        a.unlock().await?; // `Locker::unlock`: whatever it holds
        let held = b
            .try_lock()
            .await?
            .ok_or_else(|| Failure::new("try_lock on a free id failed"))?;
        tokens.push(held.fencing_token());
        held.unlock().await?; // the guard's
        if step == 1 {
            let held = c.lock().await?;
            tokens.push(held.fencing_token());
            drop(held); // a dropped guard releases
        }
    }
    s1.close().await?;
    let s3 = service.new_session(h.config()).await?;
    let mut d = s3.new_locker(&id);
    tokens.push(d.lock().await?.fencing_token());
    ensure!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens did not strictly increase: {tokens:?}"
    );
    service.close().await?;
    Ok(())
}

/// Tokens recorded inside the critical section by contending holders strictly increase.
pub async fn fencing_tokens_increase_under_contention(h: &Harness) -> Outcome {
    let service: lock_core::Service = h.service().await?;
    let id = h.id("tokens-contended");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut joins = Vec::new();
    for _ in 0..8 {
        let (service, id, seen, config) = (service.clone(), id.clone(), seen.clone(), h.config());
        joins.push(tokio::spawn(async move {
            let session = service.new_session(config).await?;
            let mut locker = session.new_locker(&id);
            for _ in 0..5 {
                let held = locker.lock().await?;
                seen.lock().unwrap().push(held.fencing_token());
                locker.unlock().await?;
            }
            session.close().await
        }));
    }
    for join in joins {
        h.within(PATIENCE * 3, "a contending task", join)
            .await?
            .map_err(|e| Failure::new(format!("a task panicked: {e}")))??;
    }
    let seen = seen.lock().unwrap().clone();
    ensure!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "tokens in grant order did not strictly increase: {seen:?}"
    );
    service.close().await?;
    Ok(())
}

/// `try_lock` returns `None` at once when the lock is held, and the lock when it is free.
pub async fn try_lock_does_not_wait(h: &Harness) -> Outcome {
    let service = h.service().await?;
    let (s1, s2) = (
        service.new_session(h.config()).await?,
        service.new_session(h.config()).await?,
    );
    let id = h.id("try");
    let (mut a, mut b) = (s1.new_locker(&id), s2.new_locker(&id));
    let held = a
        .try_lock()
        .await?
        .ok_or_else(|| Failure::new("try_lock on a free id returned None"))?;
    let start = std::time::Instant::now();
    let second = h
        .within(PATIENCE, "try_lock on a held id", b.try_lock())
        .await??;
    ensure!(second.is_none(), "try_lock took a held lock");
    ensure!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "try_lock waited {:?}",
        start.elapsed()
    );
    ensure!(!held.is_lost(), "a failed try_lock disturbed the holder");
    a.unlock().await?;
    ensure!(
        takes(&mut b).await?,
        "try_lock failed after the holder unlocked"
    );
    // A failed try_lock leaves no waiter behind: the lock is free after b unlocked.
    ensure!(
        takes(&mut a).await?,
        "the id was not free after everyone unlocked"
    );
    service.close().await?;
    Ok(())
}
