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
//! runtime. The individual functions live in [`conformance`]; they and their names are **not a
//! stable API** and grow with the contract.

pub mod conformance;
pub mod contend;
pub mod etcd;
mod failure;
mod harness;
pub mod history;
pub mod proxy;

pub use failure::{Failure, Outcome};
pub use harness::Harness;

/// A random-looking hex string (time, process id and std's random hasher keys), for names that
/// must not collide between test runs.
pub(crate) fn random_hex() -> String {
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
/// `Option<Harness>`: `None` skips the tests (see [`etcd::shared_endpoints`], which says so, and
/// fails instead under `cargo xtask test`).
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
            dropping_a_holding_locker_releases,
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
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ($harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let Some(harness) = $crate::__private::IntoHarness::into_harness($harness) else {
                    return; // skipped: the harness expression said why
                };
                $crate::__private::run(stringify!($name), async move {
                    $crate::conformance::$name(&harness).await
                });
            }
        )*
    };
}
