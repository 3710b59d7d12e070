//! The `lock` project's own test tools, which backend authors do not need (they use
//! `lock-testkit`, the published conformance suite and fault proxy):
//!
//! - [`etcd`]: real etcd clusters on loopback, for this repository's tests and `cargo xtask`;
//! - [`h2`]: an etcd-specific fault for `lock_testkit::proxy`: the first keep-alive of each
//!   lease answered with TTL 0, as etcd before 3.5.3 could.

pub mod etcd;
pub mod h2;

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
