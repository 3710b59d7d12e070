//! The `etcd:` backend of [`lock`](https://docs.rs/lock): distributed locks on an etcd v3
//! cluster. Normally used through the `lock` crate with feature `etcd`:
//! `lock::new("etcd:http://127.0.0.1:2379")`.
//!
//! - A session is one etcd lease with the session's TTL (whole seconds; at least the server's
//!   minimum, 2 s with etcd's default election timeout). All sessions of a service share one
//!   keep-alive stream.
//! - The client believes a lease alive only until the send time of its last acknowledged
//!   keep-alive plus the TTL minus a margin (a tenth of the TTL, at least 100 ms). When that
//!   passes, every hold of the session is lost — before the server can expire the lease.
//! - Each locker owns one key `<prefix><id>/<lease>-<n>`; waiters queue by create revision, and
//!   the service's watch wakes only the waiter whose key becomes first. The fencing token is the
//!   key's create revision.
//! - **Lock-delay**: a hold whose key vanished without a clean release (its lease expired or
//!   revoked on the server, the key deleted by someone else) is granted to nobody else until
//!   its holder must know it lost it — by default its session's TTL after the key went, or at
//!   once when the holder says it knows. Clean releases hand over at once. See [`LockDelay`].
//! - **Guarded writes**: [`guard`] turns a hold into a compare for your own transactions on the
//!   cluster, true only while the hold exists on the server.
//!
//! Building needs `protoc` (etcd-client compiles etcd's protobuf definitions): install
//! `protobuf-compiler` or set `PROTOC`. `cargo xtask test` provides one itself.

mod config;
mod connect;
mod delay;
mod election;
mod error;
mod exit;
#[cfg(feature = "unstable-etcd-client")]
mod guard;
mod health;
mod hub;
mod keeper;
mod keys;
mod locker;
mod metrics;
mod mirror;
mod own;
mod ownership;
mod recipes;
mod service;
mod session;
mod shared;

pub use config::{
    EtcdConfig, TlsFiles, DEFAULT_DIAL_TIMEOUT, DEFAULT_PREFIX, DEFAULT_REQUEST_TIMEOUT,
    OLDEST_SUPPORTED_VERSION,
};
pub use delay::LockDelay;
#[cfg(feature = "unstable-etcd-client")]
#[cfg_attr(docsrs, doc(cfg(feature = "unstable-etcd-client")))]
pub use guard::guard;

pub use election::EtcdElection;
/// The etcd client this backend uses, for talking to the same cluster (e.g. guarded writes),
/// with feature `unstable-etcd-client`: its types follow etcd-client's 0.x versions, not this
/// crate's semver.
#[cfg(feature = "unstable-etcd-client")]
#[cfg_attr(docsrs, doc(cfg(feature = "unstable-etcd-client")))]
pub use etcd_client;
pub use locker::EtcdLocker;
pub use service::{EtcdService, KeyInfo, LockStatus, PendingDelay, ServiceStats, MAX_TTL};
pub use session::EtcdSession;

use lock_core::backend::{ConnectionString, OpenFuture, Registry, ServiceFactory};

/// The key prefix of lock `id`'s queue: `<prefix><encoded id>/`, the id percent-encoded (`%`,
/// `/` and control characters) so that no id's range holds another's. Each locker's key under
/// it is `<lease hex>-<locker>`, bound to its session's lease; the oldest key (by create
/// revision) holds the lock, and its create revision is the fencing token — the layout of
/// etcd's Go `concurrency.Mutex` (and `etcdctl lock`) on the same prefix.
///
/// ```
/// assert_eq!(lock_etcd::queue_prefix("lock/", "jobs/nightly"), "lock/jobs%2Fnightly/");
/// ```
pub fn queue_prefix(prefix: &str, id: &str) -> String {
    keys::id_prefix(prefix, id)
}

/// The scheme of this backend: `etcd`.
pub const SERVICE_ETCD: &str = "etcd";

fn open(cs: ConnectionString) -> OpenFuture {
    Box::pin(async move {
        let config = EtcdConfig::parse(&cs)?;
        Ok(lock_core::backend::service(
            EtcdService::connect(config).await?,
        ))
    })
}

/// The registration of this backend, for [`Registry::register`]. Linking this crate
/// registers it in [`Registry::global`] already.
pub const FACTORY: ServiceFactory = ServiceFactory::new(SERVICE_ETCD, open);

/// Registers `etcd:` in `registry`.
pub fn register(registry: &Registry) {
    registry.register(FACTORY);
}

lock_core::register_service!(SERVICE_ETCD, open);
