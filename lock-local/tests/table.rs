//! The id table holds nothing for ids nobody holds or waits for.

use std::time::Duration;

use lock_core::SessionConfig;
use lock_local::LocalService;

#[tokio::test]
async fn a_million_distinct_ids_leave_the_table_empty() {
    let local = LocalService::new();
    let service = lock_core::backend::service(local.clone());
    let session = service.new_session(SessionConfig::default()).await.unwrap();
    for n in 0..1_000_000u32 {
        let mut locker = session.new_locker(&format!("job/{n}"));
        let held = locker.lock().await.unwrap();
        assert_eq!(local.active_ids(), 1);
        held.unlock().await.unwrap();
    }
    assert_eq!(local.active_ids(), 0);
}

#[tokio::test]
async fn waiters_timeouts_cancellations_and_closes_leave_the_table_empty() {
    let local = LocalService::new();
    let service = lock_core::backend::service(local.clone());
    let holder = service.new_session(SessionConfig::default()).await.unwrap();
    let waiting = service
        .new_session(SessionConfig::default().with_timeout(Duration::from_millis(20)))
        .await
        .unwrap();
    for n in 0..100 {
        let id = format!("id/{n}");
        let (mut a, mut b) = (holder.new_locker(&id), waiting.new_locker(&id));
        let held = a.lock().await.unwrap();
        assert!(b.lock().await.is_err()); // timed out
        let _ = tokio::time::timeout(Duration::from_millis(1), b.lock()).await; // dropped
        drop((a, held)); // releases
    }
    assert_eq!(local.active_ids(), 0);
    let mut c = holder.new_locker("last");
    let _held = c.lock().await.unwrap();
    holder.close().await.unwrap();
    assert_eq!(local.active_ids(), 0);
}

/// A session closed while its lockers lock on other threads leaves nothing held: every attempt
/// either fails with `AlreadyClosed` or is evicted by the close.
#[test]
fn closing_a_session_during_lock_attempts_leaves_the_table_empty() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let local = LocalService::new();
    let service = lock_core::backend::service(local.clone());
    rt.block_on(async {
        for round in 0..2000 {
            let session: lock_core::Session =
                service.new_session(SessionConfig::default()).await.unwrap();
            let lockers: Vec<_> = (0..4)
                .map(|n| session.new_locker(&format!("race/{round}/{}", n % 2)))
                .collect();
            let attempts: Vec<_> = lockers
                .into_iter()
                .map(|mut locker| {
                    tokio::spawn(async move {
                        match locker.lock().await {
                            Ok(held) => {
                                // Held until the close ends it.
                                held.lost().await;
                            }
                            Err(e) => assert!(
                                matches!(
                                    e,
                                    lock_core::Error::AlreadyClosed(_)
                                        | lock_core::Error::Canceled(_)
                                ),
                                "{e}"
                            ),
                        }
                        locker
                    })
                })
                .collect();
            tokio::task::yield_now().await;
            session.close().await.unwrap();
            for attempt in attempts {
                // A lock() that neither returns nor sees the close fails the test, not hangs it.
                let locker = tokio::time::timeout(Duration::from_secs(10), attempt)
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: a lock() outlived its session"));
                drop(locker.unwrap());
            }
            assert_eq!(local.active_ids(), 0, "round {round}");
        }
    });
}
