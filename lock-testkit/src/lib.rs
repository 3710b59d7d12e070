//! Conformance suite and test tools for backends of [`lock`](https://docs.rs/lock).
//!
//! Every backend — the ones in this repository and third-party ones — proves it honours the
//! `lock` contract by running the same suite from its own `tests/conformance.rs`:
//!
//! ```text
//! lock_testkit::conformance_tests!(lock_testkit::Harness::from_uri("local:"));
//! ```
//!
//! This expands into one `#[test]` per property, each running on its own multi-threaded tokio
//! runtime, plus the entry point of the suite's child process (see [`child`]). The individual
//! functions live in [`conformance`]; they and their names are **not a stable API** and grow
//! with the contract. The [`Harness`] declares what the backend is (shared across services or
//! processes, FIFO, leased, able to go through a fault proxy); the suite checks each
//! declaration both ways. `docs/CONFORMANCE.md` in the repository is the guide.
//!
//! A check that cannot run (no etcd for an etcd harness, no fault proxy, or a declaration that
//! rules it out) does not pass silently: it prints `SKIPPED <check>: <reason>` on the terminal
//! (past the test harness's output capture) and appends it to the file named by
//! [`SKIP_LOG_VAR`] if set; one skipped for want of etcd fails instead under
//! `LOCK_REQUIRE_ETCD=1`.

pub mod child;
pub mod conformance;
pub mod contend;
mod failure;
mod harness;
pub mod history;
pub mod proxy;

pub use failure::{Failure, Outcome};
pub use harness::{EndLeaseFuture, Fifo, Harness, Sharing};

/// The environment variable naming a file to which every skipped check appends one line, so
/// that a test runner can count and show them (`cargo xtask test` does).
pub const SKIP_LOG_VAR: &str = "LOCK_TESTKIT_SKIP_LOG";

/// Reports that `check` was skipped and why, where nobody can miss it: straight to the
/// process's stderr (the test harness captures only `eprintln!`), and to the skip log.
/// (A harness that needs an outside server can fail instead of skipping when it is missing:
/// the repository's etcd tests do under `LOCK_REQUIRE_ETCD=1`.)
pub fn skip(check: &str, reason: &str) {
    use std::io::Write;
    let line = format!("SKIPPED {check}: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os(SKIP_LOG_VAR) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        drop(appended);
    }
}

/// A random-looking hex string (time, process id and std's random hasher keys), for names that
/// must not collide between test runs.
#[doc(hidden)]
pub fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

#[doc(hidden)]
pub mod __private {
    pub use crate::random_hex;
    pub use tokio;

    /// What `conformance_tests!` accepts: a harness, or `None` to skip (the caller has said why).
    pub trait IntoHarness {
        fn into_harness(self) -> Option<crate::Harness>;
    }

    impl IntoHarness for crate::Harness {
        fn into_harness(self) -> Option<crate::Harness> {
            Some(self)
        }
    }

    impl IntoHarness for Option<crate::Harness> {
        fn into_harness(self) -> Option<crate::Harness> {
            self
        }
    }

    /// The libtest name of the `lock_testkit_child` test defined in module `module_path`.
    pub fn child_test(module_path: &str) -> String {
        match module_path.split_once("::") {
            Some((_crate, rest)) => format!("{rest}::lock_testkit_child"),
            None => "lock_testkit_child".to_owned(),
        }
    }

    /// The harness a generated test runs with, told where its child process is.
    pub fn harness(harness: Option<crate::Harness>, module_path: &str) -> Option<crate::Harness> {
        harness.map(|h| h.with_child_test(child_test(module_path)))
    }

    /// The body of the `lock_testkit_child` test: serves as the child when asked to.
    pub fn child(harness: impl FnOnce() -> Option<crate::Harness>) {
        if std::env::var_os(crate::child::CHILD_VAR).is_some() {
            crate::child::serve(harness());
        }
    }

    /// Runs one conformance function on a fresh two-thread runtime, panicking with its failure.
    pub fn run<F: std::future::Future<Output = crate::Outcome>>(name: &str, fut: F) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building a tokio runtime");
        if let Err(failure) = runtime.block_on(fut) {
            panic!("conformance check `{name}` failed: {failure}");
        }
    }
}

/// Expands into one `#[test]` per conformance function, each calling it with a fresh
/// [`Harness`] made by the given expression. The expression may also give an
/// `Option<Harness>`: `None` skips the tests (a harness expression that finds no server says
/// so with [`skip`]).
///
/// It also defines `lock_testkit_child`, the entry point of the suite's child process: a test
/// that does nothing unless the suite started the binary as its child (see [`child`]). The
/// harness expression is evaluated in the child too, so it must open the same backend there
/// (read endpoints from the environment, not from the parent's memory).
///
/// ```text
/// lock_testkit::conformance_tests!(lock_testkit::Harness::from_uri("example-mem:"));
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr $(,)?) => {
        $crate::__conformance_test! {
            $harness;
            seed_example_counts_to_1000,
            counter_has_no_lost_update,
            lockers_of_one_session_exclude_each_other,
            lockers_of_two_sessions_exclude_each_other,
            ids_are_independent,
            waiters_are_granted_in_fifo_order,
            fencing_tokens_strictly_increase,
            fencing_tokens_increase_under_contention,
            try_lock_does_not_wait,
            lost_fires_on_unlock,
            lost_fires_on_session_close,
            lost_fires_on_session_drop,
            lost_fires_on_service_close,
            lost_fires_before_next_holder_is_granted,
            dropping_a_held_releases,
            a_hold_through_a_temporary_locker_is_live,
            held_lock_survives_past_ttl,
            lock_times_out_after_session_timeout,
            dropped_lock_future_leaves_nothing,
            waiter_is_canceled_when_its_session_closes,
            session_close_ends_its_hold_and_its_wait_on_one_id,
            locking_twice_is_already_locked,
            unlock_without_lock_is_not_held,
            closing_twice_is_already_closed,
            use_after_close_is_already_closed,
            invalid_config_is_rejected,
            with_lock_runs_and_unlocks,
            unusual_ids_work,
            invalid_ids_are_rejected,
            try_lock_never_overtakes_a_queued_waiter,
            services_share_locks_as_declared,
            fencing_tokens_increase_across_services,
            waiters_of_different_services_are_granted_in_fifo_order,
            lost_fires_before_another_service_is_granted,
            closing_a_service_lets_another_service_in,
            processes_share_locks_as_declared,
            a_killed_process_frees_its_lock,
            lock_cancelled_at_any_point_leaves_nothing,
            queued_lock_cancelled_at_any_point_leaves_nothing,
            try_lock_cancelled_at_any_point_leaves_nothing,
            unlock_cancelled_at_any_point_releases,
            close_cancelled_at_any_point_ends_the_session,
            lock_returns_within_its_timeout_under_a_blackhole,
            a_partitioned_holder_loses_before_another_is_granted,
            cancelled_unlock_during_a_blackhole_frees_the_id_once_healed,
            a_lost_lease_is_not_granted_before_its_holder_knows,
            semaphore_admits_at_most_its_limit,
            semaphore_waiters_are_granted_in_fifo_order_with_increasing_tokens,
            semaphore_lost_fires_before_the_permit_is_granted_again,
            semaphore_parties_that_disagree_on_the_limit_get_an_error,
            semaphore_cancelled_waits_leave_nothing,
            semaphore_permits_are_shared_across_processes,
            election_has_one_leader_at_a_time,
            election_leader_reports_its_value_and_term,
            election_observers_see_every_change_in_order,
            election_lost_fires_before_the_next_leader_is_elected,
            election_cancelled_campaign_leaves_nothing,
            election_is_shared_across_processes,
            semaphore_acquisition_cancelled_at_any_point_leaves_nothing,
            election_campaign_cancelled_at_any_point_leaves_nothing,
            a_partitioned_leader_loses_before_another_is_elected,
            a_partitioned_permit_holder_loses_before_its_permit_is_granted_again,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ($harness:expr; $($name:ident),* $(,)?) => {
        /// Not a check: the entry point of the conformance suite's child process, which does
        /// nothing unless the suite started this binary as its child.
        #[test]
        fn lock_testkit_child() {
            $crate::__private::child(|| $crate::__private::IntoHarness::into_harness($harness));
        }

        $(
            #[test]
            fn $name() {
                let harness = $crate::__private::IntoHarness::into_harness($harness);
                let Some(harness) = $crate::__private::harness(harness, module_path!()) else {
                    $crate::skip(stringify!($name), "the harness is not available (see above)");
                    return;
                };
                $crate::__private::run(stringify!($name), async move {
                    $crate::conformance::$name(&harness).await
                });
            }
        )*
    };
}
