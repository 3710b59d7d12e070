//! Network faults, for backends whose harness lets the suite put a service behind
//! [`FaultProxy`]s ([`Harness::with_faults`]): the service under fault is cut off from the
//! backend while another service keeps talking to it.

use std::time::{Duration, Instant};

use lock_core::{Error, Service};

use crate::conformance::cancel::FREED_WITHIN;
use crate::conformance::{follows, joined, still_waiting, waiter_after, PATIENCE};
use crate::proxy::{Fault, FaultProxy};
use crate::{ensure, Failure, Harness, Outcome};

/// How far past its timeout `lock()` may return under a fault.
pub const TIMEOUT_SLACK: Duration = Duration::from_millis(100);

/// A service that connects through fault proxies, one per backend address.
struct Faulty {
    proxies: Vec<FaultProxy>,
    service: Service,
}

impl Faulty {
    /// Opens it, or `None` after reporting the skip when the harness has no fault proxies.
    async fn open(h: &Harness, check: &str) -> Result<Option<Faulty>, Failure> {
        let Some(faults) = h.faults() else {
            h.skip(
                check,
                "the harness cannot inject network faults (see `Harness::with_faults`)",
            );
            return Ok(None);
        };
        let mut proxies = Vec::new();
        for target in &faults.targets {
            let proxy = FaultProxy::start(*target)
                .await
                .map_err(|e| Failure::new(format!("starting a fault proxy: {e}")))?;
            proxies.push(proxy);
        }
        let urls = proxies.iter().map(FaultProxy::url).collect();
        let service = (faults.open)(urls).await.map_err(|e| {
            Failure::new(format!(
                "opening the {} service through fault proxies failed: {e}",
                h.label()
            ))
        })?;
        Ok(Some(Faulty { proxies, service }))
    }

    fn set(&self, fault: Fault) {
        self.proxies.iter().for_each(|p| p.set(fault));
    }

    /// Heals the network, then closes this service (within the patience) and `healthy`.
    async fn heal_and_close(self, h: &Harness, healthy: Service) -> Outcome {
        self.set(Fault::None);
        let closing = self.service.close();
        let _ = h
            .within(PATIENCE, "closing the healed service", closing)
            .await?;
        healthy.close().await?;
        Ok(())
    }
}

/// `lock()` returns within its session's timeout (+ [`TIMEOUT_SLACK`]) when the backend stops
/// answering, whether the blackhole began before the call or while it waited; once the network
/// heals, nothing of those attempts is left: the id is free for another party when its holder
/// unlocks.
pub async fn lock_returns_within_its_timeout_under_a_blackhole(h: &Harness) -> Outcome {
    const CHECK: &str = "lock_returns_within_its_timeout_under_a_blackhole";
    let Some(faulty) = Faulty::open(h, CHECK).await? else {
        return Ok(());
    };
    let healthy = h.service().await?;
    let id = h.id("blackhole-timeout");
    let holding = healthy.new_session(h.config()).await?;
    let mut holder = holding.new_locker(&id);
    let held = holder.lock().await?;
    let timeout = Duration::from_secs(1);
    let session = faulty
        .service
        .new_session(h.config().with_timeout(timeout))
        .await?;
    for (n, blackhole_after) in [Duration::ZERO, timeout / 2].into_iter().enumerate() {
        let mut locker = session.new_locker(&id);
        let start = Instant::now();
        let attempt = async {
            let result = locker.lock().await;
            (result, start.elapsed())
        };
        let fault = async {
            tokio::time::sleep(blackhole_after).await;
            faulty.set(Fault::Blackhole);
        };
        let (attempted, ()) = tokio::join!(
            h.within(timeout + PATIENCE, "lock() under a blackhole", attempt),
            fault
        );
        let (result, took) = attempted?;
        if let Ok(granted) = &result {
            return Err(Failure::new(format!(
                "lock() under a blackhole was granted an id another party holds (token {})",
                granted.fencing_token()
            )));
        }
        ensure!(
            took <= timeout + TIMEOUT_SLACK,
            "attempt {n}: lock() with a {timeout:?} timeout returned after {took:?} under a \
             blackhole starting {blackhole_after:?} into it ({})",
            result.err().map(|e| e.to_string()).unwrap_or_default()
        );
        faulty.set(Fault::None);
        drop(locker);
    }
    ensure!(!held.is_lost(), "the healthy holder lost its lock");
    holder.unlock().await?;
    let next = healthy.new_session(h.config()).await?;
    let mut other = next.new_locker(&id);
    let start = Instant::now();
    let limit = FREED_WITHIN + h.settle();
    match tokio::time::timeout(limit, other.lock()).await {
        Ok(granted) => granted?.unlock().await?,
        Err(_) => {
            return Err(Failure::new(format!(
                "after the network healed, the id stayed taken for {:?} after its holder \
                 unlocked: the timed-out attempts left something behind",
                start.elapsed()
            )))
        }
    }
    drop(session);
    faulty.service.close().await?;
    healthy.close().await?;
    Ok(())
}

/// A holder cut off from the backend sees `lost()` before a party of another service is
/// granted its lock (leased backends: the waiter gets it once the lease runs out).
pub async fn a_partitioned_holder_loses_before_another_is_granted(h: &Harness) -> Outcome {
    const CHECK: &str = "a_partitioned_holder_loses_before_another_is_granted";
    if !h.leases() {
        h.skip(
            CHECK,
            "the harness declares no leases: a partitioned holder keeps its lock",
        );
        return Ok(());
    }
    let Some(faulty) = Faulty::open(h, CHECK).await? else {
        return Ok(());
    };
    let healthy = h.service().await?;
    let id = h.id("partitioned");
    let session = faulty.service.new_session(h.config()).await?;
    let held = session.new_locker(&id).lock().await?;
    let waiting = healthy.new_session(h.config()).await?;
    let waiter = waiter_after(waiting, id, held.lost());
    tokio::time::sleep(h.settle()).await;
    faulty.set(Fault::Blackhole);
    let (granted, b, _waiting) = joined(
        h,
        h.ttl() * 3 + PATIENCE,
        "the other service's waiter after the holder was partitioned",
        waiter,
    )
    .await?;
    let (lost_first, next) = granted?;
    ensure!(
        lost_first,
        "another service was granted the lock while the partitioned holder's is_lost() was \
         still false"
    );
    follows(
        "after a partitioned holder",
        next.fencing_token(),
        held.fencing_token(),
    )?;
    b.unlock().await?;
    faulty.set(Fault::None);
    drop(session);
    let _ = h
        .within(
            PATIENCE,
            "closing the healed service",
            faulty.service.close(),
        )
        .await?;
    healthy.close().await?;
    Ok(())
}

/// A lease that ends behind its holder's back — its server expires or revokes it early while
/// the holder, cut off, cannot hear of it — is not granted to anyone else before the holder's
/// `is_lost()` is true (the holder's own deadline): the lock-delay every backend with leases
/// owes, since a server can end a lease early (etcd does, when a leader that was stopped past
/// the TTL comes back). The grant still comes within the TTL, the declared lock-delay and a
/// settle time.
pub async fn a_lost_lease_is_not_granted_before_its_holder_knows(h: &Harness) -> Outcome {
    const CHECK: &str = "a_lost_lease_is_not_granted_before_its_holder_knows";
    if !h.leases() {
        h.skip(CHECK, "the harness declares no leases");
        return Ok(());
    }
    let Some(end_lease) = h.lease_ender().cloned() else {
        h.skip(
            CHECK,
            "the harness cannot end a lease from outside (see `Harness::with_lease_ending`)",
        );
        return Ok(());
    };
    let Some(faulty) = Faulty::open(h, CHECK).await? else {
        return Ok(());
    };
    let healthy = h.service().await?;
    let id = h.id("lease-ended");
    let session = faulty.service.new_session(h.config()).await?;
    let held = session.new_locker(&id).lock().await?;
    let waiting = healthy.new_session(h.config()).await?;
    let mut waiter = waiter_after(waiting, id.clone(), held.lost());
    tokio::time::sleep(h.settle()).await;
    still_waiting(&mut waiter, "before its lease was ended").await?;
    faulty.set(Fault::Blackhole);
    end_lease(id)
        .await
        .map_err(|e| Failure::new(format!("ending the holder's lease from outside: {e}")))?;
    let ended = Instant::now();
    let bound = h.ttl() + h.lock_delay() + h.settle() + Duration::from_secs(1);
    let (granted, b, _waiting) = joined(
        h,
        bound + PATIENCE,
        "the other service's waiter after the holder's lease was ended",
        waiter,
    )
    .await?;
    let took = ended.elapsed();
    let (lost_first, next) = granted?;
    ensure!(
        lost_first,
        "another service was granted the lock {took:?} after the cut-off holder's lease was \
         ended from outside, while the holder's is_lost() was still false (no lock-delay)"
    );
    ensure!(
        took <= bound,
        "after the holder's lease was ended, the next grant took {took:?} (bound {bound:?}: the \
         TTL, the declared lock-delay {:?} and a second)",
        h.lock_delay()
    );
    follows(
        "after a holder whose lease was ended",
        next.fencing_token(),
        held.fencing_token(),
    )?;
    b.unlock().await?;
    faulty.set(Fault::None);
    drop(session);
    let _ = h
        .within(
            PATIENCE,
            "closing the healed service",
            faulty.service.close(),
        )
        .await?;
    healthy.close().await?;
    Ok(())
}

/// `unlock()` cancelled while the backend does not answer: its hold is lost at once, and once
/// the network heals the id is free for another party within [`FREED_WITHIN`] (well before a
/// lease would run out), and the locker can lock again with a fresh token.
pub async fn cancelled_unlock_during_a_blackhole_frees_the_id_once_healed(h: &Harness) -> Outcome {
    const CHECK: &str = "cancelled_unlock_during_a_blackhole_frees_the_id_once_healed";
    let Some(faulty) = Faulty::open(h, CHECK).await? else {
        return Ok(());
    };
    let healthy = h.service().await?;
    let id = h.id("blackhole-unlock");
    let session = faulty.service.new_session(h.config()).await?;
    let mut a = session.new_locker(&id);
    let held = a.lock().await?;
    faulty.set(Fault::Blackhole);
    let cut = Duration::from_millis(300);
    // An unlock may also complete (having given the removal to the backend's clean-up); it
    // must not say NotHeld of a held lock.
    if let Ok(Err(Error::NotHeld)) = tokio::time::timeout(cut, a.unlock()).await {
        return Err(Failure::new("unlock() of a held lock said NotHeld"));
    }
    tokio::time::sleep(cut).await;
    ensure!(
        held.is_lost(),
        "unlock() was called, but the hold is not lost ({cut:?} later)"
    );
    faulty.set(Fault::None);
    let healed = Instant::now();
    let other_session = healthy.new_session(h.config()).await?;
    let mut b = other_session.new_locker(&id);
    let limit = FREED_WITHIN + h.settle();
    let next = match tokio::time::timeout(limit, b.lock()).await {
        Ok(granted) => granted?,
        Err(_) => {
            return Err(Failure::new(format!(
                "after an unlock cancelled during a blackhole, the id was still taken {:?} \
                 after the network healed",
                healed.elapsed()
            )))
        }
    };
    follows(
        "after an unlock cancelled during a blackhole",
        next.fencing_token(),
        held.fencing_token(),
    )?;
    b.unlock().await?;
    let again = h
        .within(PATIENCE, "lock() again by the healed locker", a.lock())
        .await??;
    follows(
        "the healed locker locking again",
        again.fencing_token(),
        next.fencing_token(),
    )?;
    a.unlock().await?;
    drop(a);
    session.close().await?;
    faulty.service.close().await?;
    healthy.close().await?;
    Ok(())
}

/// An election's leader cut off from the backend (a blackhole: partitioned, or paused as far as
/// the backend can tell) learns it lost leadership — its term's `lost()` fires — before a
/// candidate of another service is elected; an observer of that service then names the new
/// leader, whose term follows the old one.
pub async fn a_partitioned_leader_loses_before_another_is_elected(h: &Harness) -> Outcome {
    const CHECK: &str = "a_partitioned_leader_loses_before_another_is_elected";
    if !h.leases() || !h.elections() {
        h.skip(CHECK, "the harness declares no leases or no elections");
        return Ok(());
    }
    let Some(faulty) = Faulty::open(h, CHECK).await? else {
        return Ok(());
    };
    let healthy = h.service().await?;
    let name = h.id("partitioned-leader");
    let session = faulty.service.new_session(h.config()).await?;
    let mut leader = session.new_election(&name)?;
    let term = leader.campaign("cut off").await?;
    let watching = healthy.new_session(h.config()).await?;
    let mut observer = watching.new_election(&name)?.observe().await?;
    let candidates = healthy.new_session(h.config()).await?;
    let mut candidate = candidates.new_election(&name)?;
    let lost = term.lost();
    let next = tokio::spawn(async move {
        let got = candidate.campaign("healthy").await;
        let lost_first = lost.is_lost();
        (got.map(|t| (lost_first, t)), candidate)
    });
    tokio::time::sleep(h.settle()).await;
    ensure!(
        !next.is_finished(),
        "a second leader was elected while the first led"
    );
    faulty.set(Fault::Blackhole);
    let (got, _candidate) = joined(
        h,
        h.ttl() * 3 + PATIENCE,
        "the other service's candidate after the leader was partitioned",
        next,
    )
    .await?;
    let (lost_first, new_term) = got?;
    ensure!(
        lost_first,
        "another service's candidate was elected while the partitioned leader's is_lost() was \
         still false: two leaders"
    );
    follows(
        "the term after a partitioned leader",
        new_term.fencing_token(),
        term.fencing_token(),
    )?;
    let mut seen = Vec::new();
    while seen.last() != Some(&Some("healthy".to_owned())) {
        let change = h
            .within(PATIENCE, "the observer's next change", observer.next())
            .await??;
        seen.push(change.and_then(|l| l.value_str().map(str::to_owned)));
        ensure!(
            seen.len() < 5,
            "the observer never named the new leader: {seen:?}"
        );
    }
    ensure!(
        seen.first() == Some(&Some("cut off".to_owned())),
        "the observer began with {seen:?}, not the leader that was cut off"
    );
    new_term.unlock().await?;
    drop((term, leader, session));
    faulty.heal_and_close(h, healthy).await
}

/// A semaphore's holder cut off from the backend loses its permit (`lost()` fires) before that
/// permit is granted to a waiter of another service, while the other holder keeps its own.
pub async fn a_partitioned_permit_holder_loses_before_its_permit_is_granted_again(
    h: &Harness,
) -> Outcome {
    const CHECK: &str = "a_partitioned_permit_holder_loses_before_its_permit_is_granted_again";
    if !h.leases() || !h.semaphores() {
        h.skip(CHECK, "the harness declares no leases or no semaphores");
        return Ok(());
    }
    let Some(faulty) = Faulty::open(h, CHECK).await? else {
        return Ok(());
    };
    let healthy = h.service().await?;
    let id = h.id("partitioned-permit");
    let session = faulty.service.new_session(h.config()).await?;
    let cut_off = session.new_semaphore(&id, 2)?.lock().await?;
    let keeping = healthy.new_session(h.config()).await?;
    let kept = keeping.new_semaphore(&id, 2)?.lock().await?;
    let waiting = healthy.new_session(h.config()).await?;
    let mut waiter = waiting.new_semaphore(&id, 2)?;
    let lost = cut_off.lost();
    let next = tokio::spawn(async move {
        let got = waiter.lock().await;
        let lost_first = lost.is_lost();
        (got.map(|t| (lost_first, t)), waiter)
    });
    tokio::time::sleep(h.settle()).await;
    ensure!(
        !next.is_finished(),
        "a third permit of a semaphore of 2 was granted"
    );
    faulty.set(Fault::Blackhole);
    let (got, _waiter) = joined(
        h,
        h.ttl() * 3 + PATIENCE,
        "the waiter after a holder was partitioned",
        next,
    )
    .await?;
    let (lost_first, permit) = got?;
    ensure!(
        lost_first,
        "the partitioned holder's permit was granted again while its is_lost() was still false"
    );
    ensure!(!kept.is_lost(), "the other holder lost its permit");
    follows(
        "the permit granted again",
        permit.fencing_token(),
        kept.fencing_token(),
    )?;
    permit.unlock().await?;
    kept.unlock().await?;
    drop((cut_off, session));
    faulty.heal_and_close(h, healthy).await
}
