//! The suite is only worth something if it fails broken backends. Each test here switches on
//! one deliberate bug in the `example-mem` backend and checks that the conformance function
//! for that property reports a failure (and that the same function passes without the bug).

use example_mem::{Faults, MemService};
use lock_core::Service;
use lock_testkit::{conformance, Harness, Outcome};

fn harness(faults: Faults) -> Harness {
    Harness::new("example-mem (faulty)", move || {
        Box::pin(async move { Ok(Box::new(MemService::new(faults)) as Box<dyn Service>) })
    })
}

async fn fails(outcome: Outcome, bug: &str) {
    match outcome {
        Err(failure) => eprintln!("caught {bug}: {failure}"),
        Ok(()) => panic!("the conformance suite did not catch: {bug}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_the_correct_backend() {
    let h = harness(Faults::default());
    conformance::waiters_are_granted_in_fifo_order(&h)
        .await
        .unwrap();
    conformance::fencing_tokens_strictly_increase(&h)
        .await
        .unwrap();
    conformance::lost_fires_on_unlock(&h).await.unwrap();
    conformance::lockers_of_two_sessions_exclude_each_other(&h)
        .await
        .unwrap();
    conformance::dropped_lock_future_leaves_nothing(&h)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_that_does_not_wake_waiters_is_caught() {
    let h = harness(Faults {
        no_wake_on_unlock: true,
        ..Faults::default()
    });
    fails(
        conformance::lost_fires_before_next_holder_is_granted(&h).await,
        "unlock without wake-up",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_do_not_increase_are_caught() {
    let h = harness(Faults {
        constant_tokens: true,
        ..Faults::default()
    });
    fails(
        conformance::fencing_tokens_strictly_increase(&h).await,
        "constant fencing tokens",
    )
    .await;
    fails(
        conformance::fencing_tokens_increase_under_contention(&h).await,
        "constant tokens under contention",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_signal_that_never_fires_is_caught() {
    let h = harness(Faults {
        no_lost_signal: true,
        ..Faults::default()
    });
    fails(
        conformance::lost_fires_on_unlock(&h).await,
        "lost() never fires",
    )
    .await;
    fails(
        conformance::lost_fires_on_session_close(&h).await,
        "lost() silent on session close",
    )
    .await;
    fails(
        conformance::lost_fires_before_next_holder_is_granted(&h).await,
        "next holder before lost",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_mutual_exclusion_is_caught() {
    let h = harness(Faults {
        no_exclusion: true,
        ..Faults::default()
    });
    fails(
        conformance::lockers_of_two_sessions_exclude_each_other(&h).await,
        "no exclusion",
    )
    .await;
    fails(
        conformance::lockers_of_one_session_exclude_each_other(&h).await,
        "no exclusion in a session",
    )
    .await;
    fails(
        conformance::counter_has_no_lost_update(&h).await,
        "lost updates",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfair_queueing_is_caught() {
    let h = harness(Faults {
        lifo: true,
        ..Faults::default()
    });
    fails(
        conformance::waiters_are_granted_in_fifo_order(&h).await,
        "LIFO waiters",
    )
    .await;
}
