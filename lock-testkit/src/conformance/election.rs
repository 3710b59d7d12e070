//! Elections: one leader at a time, its value and term, observers that see every change in
//! order, `lost()` before the next leader, cancellation, and the same sharing across services
//! and processes as locks. A backend that declares no elections must refuse them with
//! `Unsupported`.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{Election, ErrorKind, Leader, Observer, Session};

use crate::child::Child;
use crate::conformance::shared::two_services;
use crate::conformance::{expect_err, follows, joined, offered, PATIENCE};
use crate::{ensure, Failure, Harness, Outcome};

/// Election `name` in `session`, or `None` (after checking the refusal) when the harness
/// declares no elections.
fn candidate(
    h: &Harness,
    check: &str,
    session: &Session,
    name: &str,
) -> Result<Option<Election>, Failure> {
    let made = session.new_election(name);
    offered(h, check, h.elections(), "elections", made)
}

/// Candidates with their own sessions (on two services when they share) campaign, lead
/// briefly and resign, in a loop: never two leaders at once, and each term's token is greater
/// than the one before.
pub async fn election_has_one_leader_at_a_time(h: &Harness) -> Outcome {
    let (one, two) = two_services(h).await?;
    let name = h.id("elect-one");
    let probe = one.new_session(h.config()).await?;
    if candidate(h, "election_has_one_leader_at_a_time", &probe, &name)?.is_none() {
        return Ok(());
    }
    let leading = Arc::new(AtomicBool::new(false));
    let last = Arc::new(std::sync::Mutex::new(0u64));
    let mut joins = Vec::new();
    for n in 0..6 {
        let service = if n % 2 == 0 { one.clone() } else { two.clone() };
        let (name, leading, last, config) =
            (name.clone(), leading.clone(), last.clone(), h.config());
        joins.push(tokio::spawn(async move {
            let session = service.new_session(config).await?;
            let mut election = session.new_election(&name)?;
            for round in 0..5 {
                let term = election
                    .campaign(format!("candidate {n} round {round}"))
                    .await?;
                ensure!(!leading.swap(true, SeqCst), "two leaders at once");
                {
                    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                    follows("a new term", term.fencing_token(), *last)?;
                    *last = term.fencing_token();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                ensure!(!term.is_lost(), "a term was reported lost while leading");
                leading.store(false, SeqCst);
                term.unlock().await?;
            }
            session.close().await?;
            Ok::<(), Failure>(())
        }));
    }
    for join in joins {
        joined(h, PATIENCE * 6, "a candidate", join).await??;
    }
    Ok(())
}

/// `leader()` reports nobody, then the campaign's value and the term's token, then a
/// proclaimed value; a second campaign while leading fails; after the leader resigns, nobody,
/// and the next term has a greater token.
pub async fn election_leader_reports_its_value_and_term(h: &Harness) -> Outcome {
    let check = "election_leader_reports_its_value_and_term";
    let (one, two) = two_services(h).await?;
    let name = h.id("elect-value");
    let s1 = one.new_session(h.config()).await?;
    let Some(mut mine) = candidate(h, check, &s1, &name)? else {
        return Ok(());
    };
    let s2 = two.new_session(h.config()).await?;
    let theirs = s2.new_election(&name)?;
    ensure!(
        theirs.leader().await?.is_none(),
        "leader() named a leader of an election nobody campaigned in"
    );
    let term = mine.campaign("10.0.0.1:80").await?;
    let expect = Leader::new("10.0.0.1:80", term.fencing_token());
    let seen = theirs.leader().await?;
    ensure!(
        seen.as_ref() == Some(&expect),
        "leader() from another service gave {seen:?}, expected {expect:?}"
    );
    mine.proclaim(&term, "10.0.0.2:80").await?;
    let expect = Leader::new("10.0.0.2:80", term.fencing_token());
    let seen = theirs.leader().await?;
    ensure!(
        seen.as_ref() == Some(&expect),
        "leader() after proclaim gave {seen:?}, expected {expect:?}"
    );
    let again = h
        .within(PATIENCE, "a second campaign", mine.campaign("x"))
        .await?;
    expect_err("campaign while leading", again, "AlreadyLocked", |e| {
        e.kind() == ErrorKind::AlreadyLocked
    })?;
    let lost = term.lost();
    let term_token = term.fencing_token();
    term.unlock().await?;
    ensure!(lost.is_lost(), "the term's lost() did not fire on resign");
    let seen = theirs.leader().await?;
    ensure!(
        seen.is_none(),
        "leader() after the only leader resigned gave {seen:?}"
    );
    let next = mine.campaign("10.0.0.4:80").await?;
    follows("the next term", next.fencing_token(), term_token)?;
    next.unlock().await?;
    Ok(())
}

/// Reads `want.len()` items from `observer`, each within the patience.
async fn observed(
    h: &Harness,
    observer: &mut Observer,
    want: usize,
) -> Result<Vec<Option<Leader>>, Failure> {
    let mut seen = Vec::new();
    while seen.len() < want {
        let item = h
            .within(PATIENCE, "the observer's next change", observer.next())
            .await?;
        seen.push(
            item.map_err(|e| Failure::new(format!("the observer ended after {seen:?}: {e}")))?,
        );
    }
    Ok(seen)
}

/// An observer (on another service when they share) sees the state when it began, then every
/// change — a campaign, a proclaim, a handover to a queued candidate (with or without a moment
/// when nobody leads), its session's end — in order, none skipped; it ends with its own
/// session.
pub async fn election_observers_see_every_change_in_order(h: &Harness) -> Outcome {
    let check = "election_observers_see_every_change_in_order";
    let (one, two) = two_services(h).await?;
    let name = h.id("elect-observe");
    let s1 = one.new_session(h.config()).await?;
    let Some(mut a) = candidate(h, check, &s1, &name)? else {
        return Ok(());
    };
    let watcher = two.new_session(h.config()).await?;
    let mut observer = watcher.new_election(&name)?.observe().await?;
    let s2 = two.new_session(h.config()).await?;
    let mut b = s2.new_election(&name)?;
    let term_a = a.campaign("a").await?;
    a.proclaim(&term_a, "a2").await?;
    a.proclaim(&term_a, "a3").await?;
    let join = tokio::spawn(async move {
        let term = b.campaign("b").await;
        (term, b)
    });
    tokio::time::sleep(h.settle()).await; // b queues behind a
    let token_a = term_a.fencing_token();
    term_a.unlock().await?;
    let (term_b, _b) = joined(h, PATIENCE, "the queued candidate", join).await?;
    let token_b = term_b?.fencing_token();
    s2.close().await?;
    let want = vec![
        None,
        Some(Leader::new("a", token_a)),
        Some(Leader::new("a2", token_a)),
        Some(Leader::new("a3", token_a)),
        Some(Leader::new("b", token_b)),
        None,
    ];
    let mut seen = observed(h, &mut observer, want.len()).await?;
    if seen[4].is_none() {
        // A backend may have nobody lead for a moment between the resignation and the queued
        // candidate's election: that vacancy is a state of its own.
        seen.remove(4);
        seen.extend(observed(h, &mut observer, 1).await?);
    }
    ensure!(
        seen == want,
        "the observer saw {seen:?}, expected every change in order: {want:?}"
    );
    ensure!(
        tokio::time::timeout(h.settle(), observer.next())
            .await
            .is_err(),
        "the observer reported a change that did not happen"
    );
    watcher.close().await?;
    let end = h
        .within(PATIENCE, "the observer's end", observer.next())
        .await?;
    ensure!(
        end.is_err(),
        "the observer went on after its session closed: {end:?}"
    );
    Ok(())
}

/// The leader's `lost()` fires when its session closes, before the queued candidate (of
/// another service when they share) is elected.
pub async fn election_lost_fires_before_the_next_leader_is_elected(h: &Harness) -> Outcome {
    let check = "election_lost_fires_before_the_next_leader_is_elected";
    let (one, two) = two_services(h).await?;
    let name = h.id("elect-lost");
    let s1 = one.new_session(h.config()).await?;
    let Some(mut a) = candidate(h, check, &s1, &name)? else {
        return Ok(());
    };
    let term = a.campaign("a").await?;
    let lost = term.lost();
    let s2 = two.new_session(h.config()).await?;
    let mut b = s2.new_election(&name)?;
    let join = tokio::spawn(async move {
        let got = b.campaign("b").await;
        let was_lost = lost.is_lost();
        (got.map(|t| (was_lost, t)), b)
    });
    tokio::time::sleep(h.settle()).await;
    ensure!(
        !join.is_finished(),
        "a second leader was elected while the first led"
    );
    s1.close().await?;
    let (got, _b) = joined(h, PATIENCE, "the next candidate", join).await?;
    let (was_lost, next) = got?;
    ensure!(
        was_lost,
        "the next leader was elected before the previous leader's lost() fired"
    );
    follows("the next term", next.fencing_token(), term.fencing_token())?;
    let err = a.proclaim(&term, "late").await;
    expect_err("proclaim after the term was lost", err, "Lost", |e| {
        matches!(e.kind(), ErrorKind::Lost | ErrorKind::AlreadyClosed)
    })?;
    next.unlock().await?;
    Ok(())
}

/// A campaign that times out, or is dropped while queued, leaves nothing: it never leads, and
/// the next candidate is elected at once when the leader resigns.
pub async fn election_cancelled_campaign_leaves_nothing(h: &Harness) -> Outcome {
    let check = "election_cancelled_campaign_leaves_nothing";
    let service = h.service().await?;
    let name = h.id("elect-cancel");
    let session = service.new_session(h.config()).await?;
    let Some(mut a) = candidate(h, check, &session, &name)? else {
        return Ok(());
    };
    let term = a.campaign("a").await?;
    let mut quitter = session.new_election(&name)?;
    let got = tokio::time::timeout(h.settle(), quitter.campaign("quitter")).await;
    ensure!(
        got.is_err(),
        "a second candidate was elected while the first led"
    );
    let mut next = session.new_election(&name)?;
    let join = tokio::spawn(async move {
        let got = next.campaign("next").await;
        (got, next)
    });
    tokio::time::sleep(h.settle()).await;
    term.unlock().await?;
    let (got, next) = joined(h, PATIENCE, "the candidate after a cancelled one", join).await?;
    let term = got?;
    let leader = next.leader().await?;
    ensure!(
        leader.as_ref().and_then(Leader::value_str) == Some("next"),
        "after the leader resigned, leader() gave {leader:?}: the cancelled campaign was elected"
    );
    term.unlock().await?;
    Ok(())
}

/// Another process takes part in the same election: its leadership excludes this process's,
/// its value is visible here, and its resignation elects this process.
pub async fn election_is_shared_across_processes(h: &Harness) -> Outcome {
    const CHECK: &str = "election_is_shared_across_processes";
    let service = h.service().await?;
    let session = service.new_session(h.config()).await?;
    let name = h.id("elect-processes");
    let Some(mut mine) = candidate(h, CHECK, &session, &name)? else {
        return Ok(());
    };
    let Some(mut child) = Child::if_shared(h, CHECK).await? else {
        return Ok(());
    };
    let spec = format!("elect:{name}");
    let campaign = format!("lock {spec}");
    let theirs = child
        .holds(&campaign, PATIENCE, "the child's campaign", CHECK)
        .await?;
    let seen = mine.leader().await?;
    let expect = Leader::new("child", theirs);
    ensure!(
        seen.as_ref() == Some(&expect),
        "leader() gave {seen:?} while another process led, expected {expect:?}"
    );
    ensure!(
        tokio::time::timeout(h.settle(), mine.campaign("parent"))
            .await
            .is_err(),
        "this process was elected while another process led"
    );
    child.send(&format!("unlock {spec}")).await?;
    child.answer(PATIENCE, "the child's resignation").await?;
    let term = h
        .within(
            PATIENCE,
            "the campaign after the child resigned",
            mine.campaign("parent"),
        )
        .await??;
    follows(
        "this process's term after the child's",
        term.fencing_token(),
        theirs,
    )?;
    term.unlock().await?;
    child.finish().await?;
    Ok(())
}
