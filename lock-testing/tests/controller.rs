//! Each fault of the controller, under tokio's paused clock: the signals and errors the
//! application sees (`lock-etcd/tests/same_faults.rs` compares them with the etcd backend's on
//! a real cluster), and the history it records.

use std::time::Duration;

use lock_core::{Error, ErrorKind, LossCause, SessionConfig};
use lock_testing::{Controller, Injected, What};

fn config(ttl_secs: u64) -> SessionConfig {
    SessionConfig::new(Duration::from_secs(ttl_secs))
}

#[tokio::test(start_paused = true)]
async fn a_hold_taken_away_is_lost_as_removed_and_the_next_waiter_is_granted() {
    let control = Controller::new("take-away");
    let service = lock_core::new(&control.uri()).await.unwrap();
    let (s1, s2) = (
        service.new_session(config(10)).await.unwrap(),
        service.new_session(config(10)).await.unwrap(),
    );
    let held = s1.new_locker("x").lock().await.unwrap();
    let mut next = s2.new_locker("x");
    let waiter = tokio::spawn(async move { next.lock().await.map(|h| h.fencing_token()) });
    tokio::task::yield_now().await;
    assert_eq!(control.holders("x"), [held.fencing_token()]);
    assert_eq!(control.take_away("x"), 1);
    assert_eq!(held.loss().map(|l| l.cause()), Some(LossCause::Removed));
    let token = waiter.await.unwrap().unwrap();
    assert!(token > held.fencing_token());
    assert!(
        !s1.done().is_done(),
        "taking a hold away leaves its session open"
    );
    assert!(matches!(held.unlock().await, Err(Error::Lost(_))));
    let history = control.history();
    history.check_no_two_holders().unwrap();
    assert_eq!(history.losses(), [("x", 1, LossCause::Removed)]);
}

#[tokio::test(start_paused = true)]
async fn an_expired_session_loses_its_holds_then_ends() {
    let control = Controller::new("expire");
    let service = lock_core::new(&control.uri()).await.unwrap();
    let session = service.new_session(config(10)).await.unwrap();
    let other = service.new_session(config(10)).await.unwrap();
    let held = session.new_locker("x").lock().await.unwrap();
    let _blocker = other.new_locker("y").lock().await.unwrap();
    let mut waiting = session.new_locker("y");
    let waiter = tokio::spawn(async move { waiting.lock().await.map(drop) });
    tokio::task::yield_now().await;
    assert_eq!(control.expire_session_of("x"), 1);
    assert_eq!(held.loss().map(|l| l.cause()), Some(LossCause::Removed));
    assert!(session.done().is_done());
    let waited = waiter.await.unwrap().unwrap_err();
    assert_eq!(waited.kind(), ErrorKind::Canceled, "{waited}");
    let later = session.new_locker("z").lock().await.unwrap_err();
    assert_eq!(later.kind(), ErrorKind::AlreadyClosed, "{later}");
    assert!(!other.done().is_done(), "only the holder's session ends");
}

#[tokio::test(start_paused = true)]
async fn the_next_lock_fails_or_hangs_as_injected() {
    let control = Controller::new("inject");
    let service = lock_core::new(&control.uri()).await.unwrap();
    // A timeout of ten minutes passes at once under the paused clock.
    let session = service
        .new_session(config(30).with_timeout(Duration::from_secs(600)))
        .await
        .unwrap();
    let mut locker = session.new_locker("x");
    control.fail_next_lock("x", Injected::Transient);
    control.fail_next_lock("x", Injected::Permanent);
    control.fail_next_lock("x", Injected::Hang);
    let transient = locker.lock().await.unwrap_err();
    assert!(
        transient.kind() == ErrorKind::Backend && transient.is_transient(),
        "{transient}"
    );
    let permanent = locker.lock().await.unwrap_err();
    assert!(
        permanent.kind() == ErrorKind::Backend && !permanent.is_transient(),
        "{permanent}"
    );
    let start = tokio::time::Instant::now();
    let hung = locker.lock().await.unwrap_err();
    assert_eq!(hung.kind(), ErrorKind::Timeout, "{hung}");
    assert_eq!(start.elapsed(), Duration::from_secs(600));
    // A hung `try_lock()` waits for the timeout too (it never answers "busy").
    control.fail_next_lock("x", Injected::Hang);
    let start = tokio::time::Instant::now();
    let hung = locker.try_lock().await.unwrap_err();
    assert_eq!(hung.kind(), ErrorKind::Timeout, "{hung}");
    assert_eq!(start.elapsed(), Duration::from_secs(600));
    let held = locker.lock().await.unwrap(); // the faults are used up
    held.unlock().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn grants_come_as_late_as_asked() {
    let control = Controller::new("delay");
    let service = lock_core::new(&control.uri()).await.unwrap();
    let session = service.new_session(config(10)).await.unwrap();
    control.delay_grants(Duration::from_secs(3));
    let start = tokio::time::Instant::now();
    let held = session.new_locker("x").lock().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    held.unlock().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_service_ends_sessions_at_their_deadline_and_comes_back() {
    let control = Controller::new("outage");
    let service = lock_core::new(&control.uri()).await.unwrap();
    let session = service.new_session(config(300)).await.unwrap(); // a TTL of 5 minutes
    let held = session.new_locker("x").lock().await.unwrap();
    let survivor = service.new_session(config(3600)).await.unwrap();
    let start = tokio::time::Instant::now();
    control.set_available(false);
    let refused = service.new_session(config(10)).await.unwrap_err();
    assert!(
        refused.kind() == ErrorKind::Backend && refused.is_transient(),
        "{refused}"
    );
    // lock() waits while the service is unavailable.
    let mut waiting = survivor.new_locker("y");
    let waiter = tokio::spawn(async move { waiting.lock().await.map(|h| h.fencing_token()) });
    held.lost().await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(300),
        "lost at the session's deadline"
    );
    assert_eq!(
        held.loss().map(|l| l.cause()),
        Some(LossCause::DeadlinePassed)
    );
    assert!(session.done().is_done());
    assert!(!waiter.is_finished(), "lock() waits out the outage");
    control.set_available(true);
    waiter.await.unwrap().unwrap();
    assert!(
        !survivor.done().is_done(),
        "a session with a longer TTL survived the outage"
    );
    assert!(service.new_session(config(10)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn semaphores_and_elections_take_their_faults_too() {
    let control = Controller::new("primitives");
    let service = lock_core::new(&control.uri()).await.unwrap();
    let session = service.new_session(config(10)).await.unwrap();
    let (mut a, mut b) = (
        session.new_semaphore("jobs", 2).unwrap(),
        session.new_semaphore("jobs", 2).unwrap(),
    );
    let (pa, pb) = (a.lock().await.unwrap(), b.lock().await.unwrap());
    assert!(control.take_away_hold(pa.fencing_token()), "one permit");
    assert!(pa.is_lost() && !pb.is_lost());
    let pa = a.lock().await.unwrap();
    assert_eq!(
        control.take_away("jobs"),
        2,
        "every permit of the semaphore"
    );
    assert!(pa.is_lost() && pb.is_lost());

    let watching = service.new_session(config(10)).await.unwrap();
    let mut observer = watching
        .new_election("leader")
        .unwrap()
        .observe()
        .await
        .unwrap();
    assert_eq!(observer.next().await.unwrap(), None);
    let mut election = session.new_election("leader").unwrap();
    let term = election.campaign("me").await.unwrap();
    assert_eq!(
        observer
            .next()
            .await
            .unwrap()
            .and_then(|l| l.value_str().map(str::to_owned)),
        Some("me".to_owned())
    );
    assert_eq!(control.take_away("leader"), 1);
    assert!(term.is_lost());
    assert_eq!(
        observer.next().await.unwrap(),
        None,
        "observers see the leader go"
    );
    let history = control.history();
    history.check_no_two_holders().unwrap();
    assert!(history
        .0
        .iter()
        .any(|e| matches!(&e.what, What::Granted { id, limit: 2, .. } if id == "jobs")));
}

/// The checks are not vacuous: a job runner that writes after its hold was taken away fails
/// them.
#[tokio::test(start_paused = true)]
async fn a_runner_that_writes_after_lost_fails_the_checks() {
    let control = Controller::new("careless");
    let service = lock_core::new(&control.uri()).await.unwrap();
    let session = service.new_session(config(10)).await.unwrap();
    let db = control.resource("db");
    let held = session.new_locker("nightly").lock().await.unwrap();
    let token = held.fencing_token();
    let runner = {
        let db = db.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                db.write(token);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    control.take_away("nightly");
    runner.await.unwrap();
    let history = control.history();
    history.check_no_two_holders().unwrap();
    let late = history.check_writes_under_live_holds().unwrap_err();
    assert!(late.contains("no live hold"), "{late}");
    assert!(history
        .check_stopped_within(Duration::from_millis(200))
        .is_err());
    assert!(history
        .check_stopped_within(Duration::from_millis(300))
        .is_ok());
}
