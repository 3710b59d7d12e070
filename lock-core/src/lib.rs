//! The contract of [`lock`](https://docs.rs/lock): cancellable, distributed locks with
//! pluggable backends. Applications normally use the `lock` crate, which re-exports all of this
//! and links the backends; this crate is what a backend implements.
//!
//! - A [`Service`] is opened from a connection string by [`new`] (`local:`, `etcd:…`, or any
//!   scheme a crate registers).
//! - A [`Session`] carries a TTL ([`SessionConfig`]); a [`Locker`] takes one lock id.
//! - Every granted lock hands back a [`Held`]: [`Held::lost`] fires the moment the lock is no
//!   longer held, and [`Held::fencing_token`] increases strictly from holder to holder.
//!
//! # Semantics every backend honours
//!
//! Mutual exclusion between any two lockers of an id (also within one session); `lost()` fires
//! on unlock, session end, service close, lease expiry, and *before* anybody else is granted
//! the lock; fencing tokens strictly increase and are never reused; waiters are served in FIFO
//! order and a release wakes one waiter; [`SessionConfig::timeout`] bounds `lock()`; dropping a
//! pending `lock()` leaves nothing behind; dropping a locker releases its lock and dropping a
//! session ends it. Ids are any non-empty UTF-8 up to [`MAX_ID_LEN`] bytes.
//! The conformance suite in `lock-testkit` checks each of these.
//!
//! # What is shared
//!
//! All of the above holds between any two lockers that share the backend's lock table, and a
//! backend says which those are:
//!
//! - **a distributed backend** (`etcd:`) shares it between every service, in every process, on
//!   every machine, opened on the same cluster (and key prefix): lockers of two services
//!   exclude each other, one fencing-token sequence serves them all, waiters of different
//!   services are served in FIFO order, and a holder's `lost()` fires before anybody else —
//!   in whatever process — is granted its lock;
//! - **`local:`** is in-process and each service is its own lock table: two
//!   `new("local:")` services never exclude each other (share one service, or its sessions,
//!   to share locks);
//! - a third-party backend documents its own scope, and declares it to the conformance suite,
//!   which checks it both ways.
//!
//! A session's TTL is a lease on a backend that has them: a session whose owner stops renewing
//! it (its process is killed or cut off) ends within the TTL, and its locks are free for
//! others. A backend without leases (`local:`, where nothing can die without its service)
//! validates the TTL and otherwise ignores it: its sessions end only when closed, dropped, or
//! their service closed.
//!
//! # Writing a backend
//!
//! Implement [`Service`], [`Session`] and [`Locker`] — their async methods return
//! [`OpFuture`]: `OpFuture::ready(…)` when you can answer at once, `OpFuture::boxed(async {…})`
//! otherwise (or [`OpFuture::pending`] when the wait's state lives in the object itself) —, build each [`Held`] from a [`Signal`] you fire when the lock stops being held
//! (or from your own state implementing [`HasSignal`]), and register the scheme with one line. Any crate can do this; `lock::new("yours:…")` then finds it as long as the
//! program links your crate (reference it, e.g. `use your_backend as _;`, or call
//! [`Registry::register`] yourself).
//!
//! ```
//! use lock_core::{ConnectionString, OpenFuture, Error, Service};
//!
//! fn open(cs: ConnectionString) -> OpenFuture {
//!     Box::pin(async move {
//!         let mut options = cs.options();
//!         let _verbose = options.bool("verbose")?.unwrap_or(false);
//!         options.finish()?; // rejects unknown options
//!         Err::<Box<dyn Service>, _>(Error::InvalidConfig("construct your service here".into()))
//!     })
//! }
//!
//! lock_core::register_service!("yours", open);
//! ```
//!
//! Then run the conformance suite from your crate's `tests/conformance.rs`:
//! `lock_testkit::conformance_tests!(lock_testkit::Harness::from_uri("yours:"));`.
//! `third-party/example-mem` in this repository is a complete example.

mod config;
mod error;
mod ext;
mod held;
mod id;
mod loss;
mod op;
mod registry;
mod signal;
mod traits;
mod uri;

pub use config::SessionConfig;
pub use error::{BoxError, Error, Result};
pub use ext::LockerExt;
pub use held::{Done, Held, Lost};
pub use id::{validate_id, MAX_ID_LEN};
pub use loss::{Loss, LossCause};
pub use op::{OpFuture, PendingOp};
pub use registry::{new, services, OpenFuture, Registry, ServiceFactory};
pub use signal::{Deadline, HasSignal, Signal};
pub use traits::{Locker, Service, Session};
pub use uri::{is_secret_option, ConnectionString, Options};

#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
