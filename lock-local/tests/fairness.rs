//! A task looping on lock/unlock gives its worker up within tokio's cooperative budget, so
//! that the tasks that would queue for the lock get to run.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use lock_core::{Service, SessionConfig};
use lock_local::LocalService;

/// Turns a looping task takes before it must have yielded: tokio's budget per poll is 128.
const BUDGET: u64 = 128;

/// On one thread, a task that loops on an id it has to itself (no other locker was made for
/// it yet) still yields within the budget: the next task runs, makes its locker, and gets its
/// turn. (Its first lock is not known to start a loop and may not spend the budget: 129 turns.
/// Spending it on every eighth lock only, the first task took 1031 turns first.)
#[test]
fn a_task_alone_on_its_id_lets_the_next_task_take_a_turn_within_the_budget() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let service = Service::from_backend(LocalService::new());
        let session = service.new_session(SessionConfig::default()).await.unwrap();
        let first_turns = Arc::new(AtomicU64::new(0));
        let looping = tokio::spawn({
            let (session, turns) = (session.clone(), first_turns.clone());
            async move {
                let locker = session.new_locker("fair/one");
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
            before <= BUDGET + 1,
            "the looping task took {before} turns before the next task got one"
        );
    });
}
