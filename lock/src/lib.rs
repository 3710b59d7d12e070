#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use lock_core::*;

/// The in-process `local:` backend.
#[cfg(feature = "local")]
#[cfg_attr(docsrs, doc(cfg(feature = "local")))]
pub use lock_local as local;

/// The etcd v3 backend `etcd:`.
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use lock_etcd as etcd;

/// The `test:` backend for application tests: a controller that injects faults, and the
/// history of what happened (see the guide, "Testing your application").
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub use lock_testing as testing;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;

/// The guide (`docs/GUIDE.md`): choosing TTL and timeout, what `lost()` guarantees, fencing,
/// writing a backend, etcd with TLS and auth, the command line. (`GUIDE.md` in this crate is a
/// link to it, so that the packaged crate carries it.)
#[doc = include_str!("../GUIDE.md")]
pub mod guide {}

// Reference every enabled backend so the linker keeps its registration (an unreferenced crate
// is not linked, and its `register_service!` would silently vanish).
#[cfg(feature = "etcd")]
extern crate lock_etcd as _;
#[cfg(feature = "local")]
extern crate lock_local as _;
#[cfg(feature = "testing")]
extern crate lock_testing as _;

/// The schemes of the backends this build of `lock` enables by feature, in the order of the
/// features. `services()` lists these and any scheme another crate registered.
pub const ENABLED_BACKENDS: &[&str] = &[
    #[cfg(feature = "local")]
    "local",
    #[cfg(feature = "etcd")]
    "etcd",
    #[cfg(feature = "testing")]
    "test",
];
