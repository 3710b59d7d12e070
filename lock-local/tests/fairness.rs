//! A task looping on lock/unlock gives its worker up within tokio's cooperative budget, so
//! that the tasks that would queue for the lock get to run.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::task::Poll;

use lock_core::{Session, SessionConfig};
use lock_local::LocalService;

/// Turns a looping task takes before it must have yielded: tokio's budget per poll is 128.
const BUDGET: u64 = 128;

/// Runs `test` on a one-thread runtime with a session of a new `local:` service.
fn on_one_thread<F: Future>(test: impl FnOnce(Session) -> F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let service = lock_core::backend::service(LocalService::new());
        let session = service.new_session(SessionConfig::default()).await.unwrap();
        let outcome = test(session).await;
        service.close().await.unwrap();
        outcome
    })
}

/// On one thread, a task that loops on an id it has to itself (no other locker was made for
/// it yet) still yields within the budget: the next task runs, makes its locker, and gets its
/// turn. (Its first lock is not known to start a loop and may not spend the budget, and it
/// yields holding the lock it took last: 130 turns. Spending the budget on every eighth lock
/// only, the first task took 1031 turns first.)
#[test]
fn a_task_alone_on_its_id_lets_the_next_task_take_a_turn_within_the_budget() {
    on_one_thread(|session| async move {
        let first_turns = Arc::new(AtomicU64::new(0));
        let looping = tokio::spawn({
            let (session, turns) = (session.clone(), first_turns.clone());
            async move {
                let mut locker = session.new_locker("fair/one");
                for _ in 0..10 * BUDGET {
                    locker.lock().await.unwrap().unlock().await.unwrap();
                    turns.fetch_add(1, SeqCst);
                }
            }
        });
        let next = tokio::spawn({
            let (session, first_turns) = (session.clone(), first_turns.clone());
            async move {
                let held = session.new_locker("fair/one").lock().await.unwrap();
                let before = first_turns.load(SeqCst);
                held.unlock().await.unwrap();
                before
            }
        });
        let before = next.await.unwrap();
        looping.await.unwrap();
        assert!(
            before <= BUDGET + 2,
            "the looping task took {before} turns before the next task got one"
        );
    });
}

/// On one thread (as on a machine whose other cores are busy), 200 tasks loop on one id until
/// 20,000 turns in all: every task gets a turn and none takes over. A task whose budget runs
/// out yields holding the lock, so the others queue behind it and FIFO handoff shares the
/// lock. (Yielding before taking it, each task took the free lock for a budget's worth of
/// turns in turn, and the turns ran out before 43 of the 200 tasks ran.)
#[test]
fn tasks_looping_on_one_thread_all_get_their_share() {
    const TASKS: usize = 200;
    const TURNS: u64 = 20_000;
    let turns = on_one_thread(|session| async move {
        let counter = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (mut locker, counter) = (session.new_locker("fair/many"), counter.clone());
                tokio::spawn(async move {
                    let mut mine = 0u64;
                    loop {
                        let held = locker.lock().await.unwrap();
                        let n = counter.load(SeqCst);
                        if n < TURNS {
                            counter.store(n + 1, SeqCst);
                            mine += 1;
                        }
                        held.unlock().await.unwrap();
                        if n >= TURNS {
                            return mine;
                        }
                    }
                })
            })
            .collect();
        let mut turns = Vec::new();
        for task in tasks {
            turns.push(task.await.unwrap());
        }
        turns
    });
    let fair = TURNS / TASKS as u64;
    let without = turns.iter().filter(|t| **t == 0).count();
    let busiest = turns.iter().copied().max().unwrap_or(0);
    assert_eq!(without, 0, "{without} of {TASKS} tasks got no turn");
    assert!(
        busiest <= 10 * fair,
        "one task took {busiest} turns, over 10× its fair share of {fair}"
    );
}

/// A `lock()` that took the id when its task's budget was used up yields holding it; dropped
/// during that yield, it releases the id: nothing is left held.
#[test]
fn a_lock_dropped_while_it_yields_holding_the_id_releases_it() {
    on_one_thread(|session| async move {
        let (mut locker, mut other) = (
            session.new_locker("fair/dropped"),
            session.new_locker("fair/dropped"),
        );
        let mut dropped = 0;
        for _ in 0..3 * BUDGET {
            // Poll the `lock()` once; if it is not done, drop it (at the end of the block).
            let polled = {
                let mut locking = std::pin::pin!(locker.lock());
                std::future::poll_fn(|cx| Poll::Ready(locking.as_mut().poll(cx))).await
            };
            match polled {
                Poll::Ready(held) => held.unwrap().unlock().await.unwrap(),
                Poll::Pending => {
                    dropped += 1;
                    let taken = other.try_lock().await.unwrap();
                    let held = taken.expect("a lock dropped while it yielded kept the id");
                    held.unlock().await.unwrap();
                }
            }
        }
        assert!(dropped > 0, "no lock() yielded holding the id");
    });
}
