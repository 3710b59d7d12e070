//! The full conformance suite against `example-mem:`, opened through the global registry
//! (`lock_core::new`, which `lock::new` is) — the registration of a crate outside the
//! workspace's core.

use example_mem as _; // links the crate, so its `register_service!` is kept
use lock_testkit::{Harness, Sharing};

#[test]
fn the_scheme_is_registered_in_the_global_registry() {
    assert!(
        lock_core::services().contains(&"example-mem"),
        "{:?}",
        lock_core::services()
    );
}

// Every `example-mem:` service of a process shares one lock table; other processes have their
// own; sessions are not leases.
lock_testkit::conformance_tests!(Harness::from_uri("example-mem:")
    .with_sharing(Sharing::Process)
    .with_leases(false));
