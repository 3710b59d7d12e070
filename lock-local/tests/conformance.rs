//! The `lock` conformance suite against `local:`, run the way a third-party crate would.

use lock_local as _; // links the backend, so `local:` is registered
use lock_testkit::{Harness, Sharing};

// `local:` is in-process and each service is its own lock table: two `lock::new("local:")`
// services never exclude each other (the suite checks that too). Nothing can die without its
// service, so the TTL is validated and not enforced.
lock_testkit::conformance_tests!(Harness::from_uri("local:")
    .with_sharing(Sharing::Service)
    .with_leases(false));
