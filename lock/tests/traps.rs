//! The application API's traps (each found by reading the code), shown on `local:`. A trap the
//! compiler now rules out is a `compile_fail` doc test on the type instead (`Locker` is not
//! `Clone`).

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use lock::{Error, ErrorKind, LossCause, SessionConfig};

async fn session(service: &lock::Service) -> lock::Session {
    service
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap()
}

/// Observers in other tasks share a `Lost` or a `Done` by reference (in an `Arc`, in a struct
/// that must be `Sync`).
#[test]
fn lost_and_done_are_sync() {
    fn sync<T: Sync>() {}
    sync::<lock::Lost>();
    sync::<lock::Done>();
}

/// Unlocking a hold that was lost is `Error::Lost`, carrying the loss, whichever way the race
/// between the loss and the unlock went (it was `Lost` or `AlreadyClosed` by chance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlocking_a_lost_hold_is_always_lost() {
    let service = lock::new("local:").await.unwrap();
    let mut other = 0;
    for round in 0..2000 {
        let session = session(&service).await;
        let held = session.new_locker("race").lock().await.unwrap();
        let closing = tokio::spawn({
            let session = session.clone();
            async move { session.close().await }
        });
        match held.unlock().await {
            Ok(()) => {}
            Err(Error::Lost(loss)) => assert_eq!(loss.cause(), LossCause::SessionEnded),
            Err(e) => {
                other += 1;
                eprintln!("round {round}: {e:?}");
            }
        }
        let _ = closing.await.unwrap();
    }
    assert_eq!(other, 0, "unlocks that were neither Ok nor Lost");
}

/// `Held::unlock()` releases when the future is awaited, as futures do, not when it is made.
#[tokio::test]
async fn unlock_releases_when_awaited() {
    let service = lock::new("local:").await.unwrap();
    let session = session(&service).await;
    let held = session.new_locker("lazy").lock().await.unwrap();
    let mut probe = session.new_locker("lazy");
    let unlocking = held.unlock();
    assert!(
        probe.try_lock().await.unwrap().is_none(),
        "the lock was released before its unlock future was awaited"
    );
    unlocking.await.unwrap();
    assert!(probe.try_lock().await.unwrap().is_some());
}

/// A dropped `unlock()` future still releases: it drops the guard, which releases.
#[tokio::test]
async fn an_unlock_future_dropped_unpolled_releases() {
    let service = lock::new("local:").await.unwrap();
    let session = session(&service).await;
    let held = session.new_locker("dropped").lock().await.unwrap();
    let lost = held.lost();
    drop(held.unlock());
    assert!(lost.is_lost());
    assert!(session
        .new_locker("dropped")
        .try_lock()
        .await
        .unwrap()
        .is_some());
}

/// `with_lock` hands its closure the hold: the fencing token, and `is_lost()` to check before
/// a side effect.
#[tokio::test]
async fn with_lock_hands_the_closure_the_hold() {
    let service = lock::new("local:").await.unwrap();
    let session = session(&service).await;
    let mut locker = session.new_locker("with");
    let token = locker
        .with_lock(|hold| async move {
            assert!(!hold.is_lost());
            assert!(hold.loss().is_none());
            Ok::<_, Error>(hold.fencing_token())
        })
        .await
        .unwrap();
    assert!(token > 0);
}

/// A closure that finished after its lock was lost (it did not await after the loss, so the
/// race could not cancel it) gets `Error::Lost`: its last steps ran without the lock. (The
/// opposite case, a loss after the closure finished, keeps the closure's result: see
/// `lock-etcd/tests/with_lock.rs`, where the release after the closure fails.)
#[tokio::test]
async fn with_lock_reports_a_loss_before_the_closure_finished() {
    let service = lock::new("local:").await.unwrap();
    let session = session(&service).await;
    let ran = Arc::new(AtomicU32::new(0));
    let result = session
        .new_locker("finished")
        .with_lock(|_| {
            let (session, ran) = (session.clone(), ran.clone());
            async move {
                ran.fetch_add(1, SeqCst);
                session.close().await?;
                Ok::<_, Error>("written")
            }
        })
        .await;
    assert_eq!(ran.load(SeqCst), 1);
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Lost);
}

/// A loss while the closure still waits cancels it: `Error::Lost`.
#[tokio::test]
async fn with_lock_cancels_a_closure_whose_lock_is_lost() {
    let service = lock::new("local:").await.unwrap();
    let session = session(&service).await;
    let result = session
        .new_locker("cancel")
        .with_lock(|_| {
            let session = session.clone();
            async move {
                session.close().await?;
                std::future::pending::<()>().await;
                Ok::<_, Error>(())
            }
        })
        .await;
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Lost);
}

/// What the compiler cannot catch (documented in the crate docs, "The shape that cannot go
/// wrong"): a guard bound to `_`, or tested with `.is_some()`, is dropped at once and releases
/// the lock before the work runs. A named guard holds it.
#[tokio::test]
#[allow(clippy::let_underscore_must_use)]
async fn a_guard_dropped_at_once_releases_before_the_work() {
    let service = lock::new("local:").await.unwrap();
    let session = session(&service).await;
    let mut locker = session.new_locker("dropped-at-once");
    let mut probe = session.new_locker("dropped-at-once");

    let _ = locker.lock().await.unwrap();
    assert!(free(&mut probe).await, "`let _ =` kept the lock");
    if locker.try_lock().await.unwrap().is_some() {
        assert!(free(&mut probe).await, "`.is_some()` kept the lock");
    }

    let _held = locker.lock().await.unwrap();
    assert!(
        !free(&mut probe).await,
        "a named guard did not hold the lock"
    );
    drop(_held);
    let with = locker
        .with_lock(|fence| {
            let probe = &mut probe;
            async move { Ok::<_, Error>(!fence.is_lost() && probe.try_lock().await?.is_none()) }
        })
        .await
        .unwrap();
    assert!(with, "with_lock's closure ran without the lock");
}

/// Whether `probe` can take its lock now (and lets go of it at once).
async fn free(probe: &mut lock::Locker) -> bool {
    probe.try_lock().await.unwrap().is_some()
}
