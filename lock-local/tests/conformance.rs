//! The `lock` conformance suite against `local:`, run the way a third-party crate would.

use lock_local as _; // links the backend, so `local:` is registered

lock_testkit::conformance_tests!(lock_testkit::Harness::from_uri("local:"));
