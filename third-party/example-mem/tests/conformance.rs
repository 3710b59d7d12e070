//! The full conformance suite against `example-mem:`, opened through `lock::new` — the
//! registration of a crate outside the workspace's core.

use example_mem as _; // links the crate, so its `register_service!` is kept

#[test]
fn the_scheme_is_registered_through_the_facade() {
    assert!(
        lock::services().contains(&"example-mem"),
        "{:?}",
        lock::services()
    );
}

lock_testkit::conformance_tests!(lock_testkit::Harness::from_uri("example-mem:"));
