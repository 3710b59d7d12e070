//! The suite is only worth something if it fails broken backends. Each test here switches on
//! one deliberate bug in the `example-mem` backend and checks that the conformance function
//! for that property reports a failure (and that the same function passes without the bug).

use example_mem::{Bugs, Store};
use lock_local as _; // links `local:` for the declaration check
use lock_testkit::{conformance, Harness, Outcome, Sharing};

/// `example-mem` with `bugs`, declared as the correct backend declares itself: every service of
/// the process shares one lock table; no leases.
fn harness(bugs: Bugs) -> Harness {
    let store = Store::new(bugs);
    Harness::new("example-mem (with bugs)", move || {
        let service = store.service();
        Box::pin(async move { Ok(service) })
    })
    .with_sharing(Sharing::Process)
    .with_leases(false)
}

async fn fails(outcome: Outcome, bug: &str) {
    match outcome {
        Err(failure) => eprintln!("caught {bug}: {failure}"),
        Ok(()) => panic!("the conformance suite did not catch: {bug}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_the_correct_backend() {
    let h = harness(Bugs::default());
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
    conformance::services_share_locks_as_declared(&h)
        .await
        .unwrap();
    conformance::fencing_tokens_increase_across_services(&h)
        .await
        .unwrap();
    conformance::try_lock_never_overtakes_a_queued_waiter(&h)
        .await
        .unwrap();
    conformance::unlock_cancelled_at_any_point_releases(&h)
        .await
        .unwrap();
    conformance::lock_times_out_after_session_timeout(&h)
        .await
        .unwrap();
    conformance::semaphore_admits_at_most_its_limit(&h)
        .await
        .unwrap();
    conformance::election_observers_see_every_change_in_order(&h)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_that_over_admits_is_caught() {
    let h = harness(Bugs {
        semaphore_over_admits: true,
        ..Bugs::default()
    });
    fails(
        conformance::semaphore_admits_at_most_its_limit(&h).await,
        "a semaphore granting one permit too many",
    )
    .await;
    fails(
        conformance::semaphore_waiters_are_granted_in_fifo_order_with_increasing_tokens(&h).await,
        "a semaphore granting one permit too many (try_lock)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_that_hides_changes_from_observers_is_caught() {
    let h = harness(Bugs {
        proclaim_unobserved: true,
        ..Bugs::default()
    });
    fails(
        conformance::election_observers_see_every_change_in_order(&h).await,
        "observers not told of a proclaimed value",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_without_the_primitives_must_refuse_them_clearly() {
    // `local:` offers both; declared absent, the suite expects `Unsupported` and catches the
    // dishonest declaration.
    let h = Harness::from_uri("local:")
        .with_sharing(Sharing::Service)
        .with_leases(false)
        .with_semaphores(false)
        .with_elections(false);
    fails(
        conformance::semaphore_admits_at_most_its_limit(&h).await,
        "semaphores declared absent but offered",
    )
    .await;
    fails(
        conformance::election_has_one_leader_at_a_time(&h).await,
        "elections declared absent but offered",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_that_does_not_wake_waiters_is_caught() {
    let h = harness(Bugs {
        no_wake_on_unlock: true,
        ..Bugs::default()
    });
    fails(
        conformance::lost_fires_before_next_holder_is_granted(&h).await,
        "unlock without wake-up",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_do_not_increase_are_caught() {
    let h = harness(Bugs {
        constant_tokens: true,
        ..Bugs::default()
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
    let h = harness(Bugs {
        no_lost_signal: true,
        ..Bugs::default()
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
    let h = harness(Bugs {
        no_exclusion: true,
        ..Bugs::default()
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
    let h = harness(Bugs {
        lifo: true,
        ..Bugs::default()
    });
    fails(
        conformance::waiters_are_granted_in_fifo_order(&h).await,
        "LIFO waiters",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_exclusion_across_services_is_caught() {
    let h = harness(Bugs {
        separate_services: true,
        ..Bugs::default()
    });
    fails(
        conformance::services_share_locks_as_declared(&h).await,
        "no exclusion across services",
    )
    .await;
    fails(
        conformance::lost_fires_before_another_service_is_granted(&h).await,
        "no exclusion across services (lost before grant)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_service_token_counters_are_caught() {
    let h = harness(Bugs {
        per_service_tokens: true,
        ..Bugs::default()
    });
    fails(
        conformance::fencing_tokens_increase_across_services(&h).await,
        "per-service token counters",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_overtaking_a_waiter_is_caught() {
    let h = harness(Bugs {
        try_lock_overtakes: true,
        ..Bugs::default()
    });
    fails(
        conformance::try_lock_never_overtakes_a_queued_waiter(&h).await,
        "try_lock overtaking a queued waiter",
    )
    .await;
}

/// A declaration that does not match the backend is caught both ways: `local:` services are
/// separate, so declaring them shared fails; `example-mem` services share, so declaring them
/// separate fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dishonest_sharing_declaration_is_caught() {
    let local = Harness::from_uri("local:")
        .with_sharing(Sharing::Process)
        .with_leases(false);
    fails(
        conformance::services_share_locks_as_declared(&local).await,
        "local: declared shared across services",
    )
    .await;
    let mem = harness(Bugs::default()).with_sharing(Sharing::Service);
    fails(
        conformance::services_share_locks_as_declared(&mem).await,
        "example-mem declared separate per service",
    )
    .await;
}
