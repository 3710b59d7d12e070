//! Races between a holder's own calls and a close of its session, on two worker threads.

use std::collections::HashSet;
use std::time::Duration;

use lock_core::SessionConfig;
use lock_local::LocalService;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An unlock that races its session's close ends its own hold only: the waiter the lock goes
/// to holds it, not lost, until it lets go.
#[test]
fn an_unlock_racing_its_sessions_close_never_ends_the_next_hold() {
    let rt = runtime();
    let service = lock_core::backend::service(LocalService::new());
    rt.block_on(async {
        for round in 0..3000 {
            let (first, second) = (
                service.new_session(SessionConfig::default()).await.unwrap(),
                service.new_session(SessionConfig::default()).await.unwrap(),
            );
            let id = format!("race/{round}");
            let held = first.new_locker(&id).lock().await.unwrap();
            let mut waiter = second.new_locker(&id);
            let next = tokio::spawn(async move {
                let held = waiter.lock().await.unwrap();
                // Whatever ended the first hold, this one is whole until it is unlocked.
                tokio::task::yield_now().await;
                assert!(!held.is_lost(), "round {round}: the next hold was ended");
                held.unlock().await.unwrap();
            });
            tokio::task::yield_now().await;
            let unlocking = tokio::spawn(async move {
                // Ok, or lost to the close: either way the first hold ended.
                let _ = held.unlock().await;
            });
            first.close().await.unwrap();
            unlocking.await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), next)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the waiter never got the lock"))
                .unwrap();
        }
    });
}

/// Holds taken at once (no queue) while other sessions of the same ids close and hand their
/// ids on: no fencing token is handed out twice for an id, and each id's tokens grow.
#[test]
fn takes_racing_closes_never_hand_a_token_out_twice() {
    let rt = runtime();
    let service = lock_core::backend::service(LocalService::new());
    let tokens = rt.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..8 {
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for round in 0..2000 {
                    let id = format!("ids/{}", round % 4);
                    let session = service.new_session(SessionConfig::default()).await.unwrap();
                    let mut locker = session.new_locker(&id);
                    let attempt = locker.try_lock();
                    if task % 2 == 0 {
                        // Close while others take: evictions race their fast takes.
                        let closing = session.clone();
                        tokio::spawn(async move { closing.close().await });
                    }
                    if let Ok(Some(held)) = attempt.await {
                        seen.push((id, held.fencing_token()));
                        tokio::task::yield_now().await;
                        let _ = held.unlock().await;
                    }
                }
                seen
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    let mut unique = HashSet::new();
    for (id, token) in &tokens {
        assert!(
            unique.insert((id.clone(), *token)),
            "token {token} of {id} was handed out twice"
        );
    }
    assert!(
        tokens.len() > 1000,
        "only {} holds were taken",
        tokens.len()
    );
}
