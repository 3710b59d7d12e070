//! With its faults off, `test:` is a real backend: it passes the whole conformance suite. Every
//! service of one world (`test:NAME`) in a process shares its lock table; sessions are not
//! leases unless the controller makes the service unavailable.

use lock_testing as _; // links `test:`
use lock_testkit::{Harness, Sharing};

lock_testkit::conformance_tests!(Harness::from_uri("test:conformance")
    .with_sharing(Sharing::Process)
    .with_leases(false));
