//! The lost signal: epochs, deadlines, and waking.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::backend::{Deadline, Hold as Held, Signal};
use lock_core::LossCause;

#[tokio::test]
async fn a_hold_is_lost_once_its_epoch_ends_and_stays_lost() {
    let signal = Arc::new(Signal::new());
    let held = Held::new(signal.clone(), signal.epoch(), None, 7);
    assert!(!held.is_lost());
    assert_eq!(held.fencing_token(), 7);
    let waiting = tokio::spawn(held.lost());
    tokio::task::yield_now().await;
    signal.fire();
    tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .unwrap()
        .unwrap();
    let next = Held::new(signal.clone(), signal.epoch(), None, 8);
    assert!(
        held.is_lost() && !next.is_lost(),
        "a new epoch does not revive the old hold"
    );
}

#[tokio::test]
async fn a_passed_deadline_is_seen_without_any_task_running() {
    let deadline = Arc::new(Deadline::new(Instant::now() + Duration::from_millis(50)));
    let signal = Arc::new(Signal::new());
    let held = Held::new(signal.clone(), 0, Some(deadline.clone()), 1);
    assert!(!held.is_lost());
    std::thread::sleep(Duration::from_millis(60)); // a "pause": no timer, no task ran
    assert!(held.is_lost(), "is_lost() must read the clock");
}

#[tokio::test]
async fn lost_resolves_at_the_deadline_and_follows_extensions() {
    let deadline = Arc::new(Deadline::new(Instant::now() + Duration::from_millis(100)));
    let held = Held::new(Arc::new(Signal::new()), 0, Some(deadline.clone()), 1);
    deadline.extend_to(Instant::now() + Duration::from_millis(300));
    deadline.extend_to(Instant::now()); // never moves it earlier
    let start = Instant::now();
    held.lost().await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn done_resolves_when_fired_or_expired() {
    let signal = Arc::new(Signal::new());
    let done = lock_core::backend::done(signal.clone(), 0, None);
    assert!(!done.is_done());
    signal.fire();
    tokio::time::timeout(Duration::from_secs(1), done)
        .await
        .unwrap();
    let deadline = Arc::new(Deadline::new(Instant::now() + Duration::from_secs(3600)));
    let done = lock_core::backend::done(Arc::new(Signal::new()), 0, Some(deadline.clone()));
    deadline.expire();
    assert!(done.is_done());
}

#[test]
fn a_passed_deadline_is_never_extended() {
    let deadline = Deadline::new(Instant::now() + Duration::from_millis(20));
    assert!(deadline.extend_to(Instant::now() + Duration::from_millis(40)));
    std::thread::sleep(Duration::from_millis(60));
    assert!(deadline.has_passed());
    // A late confirmation must not bring the session back to life.
    assert!(!deadline.extend_to(Instant::now() + Duration::from_secs(10)));
    assert!(deadline.has_passed());
}

#[test]
fn a_hold_says_why_it_ended() {
    let signal = Arc::new(Signal::new());
    let held = Held::new(signal.clone(), signal.epoch(), None, 1);
    assert_eq!(held.loss(), None, "no loss while held");
    let before = Instant::now();
    let ended = signal.fire_because(LossCause::Removed, "key deleted at revision 9");
    signal.explain(ended, "lease alive");
    let loss = held.loss().unwrap();
    assert_eq!(loss.cause(), LossCause::Removed);
    assert!(loss.at().unwrap() >= before);
    assert_eq!(loss.detail(), "key deleted at revision 9; lease alive");
    assert_eq!(
        loss.to_string(),
        "removed by someone else: key deleted at revision 9; lease alive"
    );

    // A later hold's loss does not rewrite this one's, and a plain fire records no cause.
    let next = Held::new(signal.clone(), signal.epoch(), None, 2);
    signal.fire();
    assert_eq!(next.loss().unwrap().cause(), LossCause::Unknown);
    assert_eq!(held.loss().unwrap().cause(), LossCause::Removed);

    // Records of earlier holds are kept while later holds come and go.
    for token in 3..10 {
        let later = Held::new(signal.clone(), signal.epoch(), None, token);
        signal.fire_because(LossCause::Unlocked, "");
        assert_eq!(later.loss().unwrap().cause(), LossCause::Unlocked);
    }
    assert_eq!(held.loss().unwrap().cause(), LossCause::Removed);
}

#[test]
fn a_deadline_that_passed_before_the_backend_acted_is_the_loss() {
    let signal = Arc::new(Signal::new());
    let at = Instant::now() + Duration::from_millis(20);
    let deadline = Arc::new(Deadline::new(at));
    std::thread::sleep(Duration::from_millis(30));
    let held = Held::new(signal.clone(), signal.epoch(), Some(deadline.clone()), 1);
    let loss = held.loss().unwrap();
    assert_eq!(
        (loss.cause(), loss.at()),
        (LossCause::DeadlinePassed, Some(at))
    );

    // The backend notices later and records its own view: the deadline still came first.
    signal.fire_because(LossCause::SessionEnded, "noticed late");
    deadline.expire();
    let loss = held.loss().unwrap();
    assert_eq!(
        (loss.cause(), loss.at()),
        (LossCause::DeadlinePassed, Some(at))
    );
    assert!(loss.detail().contains("noticed late"), "{loss}");
    assert_eq!(
        deadline.instant(),
        Some(at),
        "expire() keeps a passed deadline"
    );

    // A loss recorded before a (later) deadline stays what it was.
    let signal = Arc::new(Signal::new());
    let deadline = Arc::new(Deadline::new(Instant::now() + Duration::from_secs(60)));
    let held = Held::new(signal.clone(), signal.epoch(), Some(deadline.clone()), 1);
    signal.fire_because(LossCause::Unlocked, "");
    deadline.expire();
    assert_eq!(held.loss().unwrap().cause(), LossCause::Unlocked);
}
