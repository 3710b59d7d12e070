//! The `lock` project's own test tools, which backend authors do not need (they use
//! `lock-testkit`, the published conformance suite and fault proxy):
//!
//! - [`etcd`]: real etcd clusters on loopback, for this repository's tests and `cargo xtask`;
//! - [`h2`]: an etcd-specific fault for `lock_testkit::proxy`: the first keep-alive of each
//!   lease answered with TTL 0, as etcd before 3.5.3 could.

pub mod etcd;
pub mod h2;

/// A random-looking hex string, for names that must not collide between test runs.
pub(crate) use lock_testkit::__private::random_hex;
