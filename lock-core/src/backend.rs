//! For backend authors: the traits a backend implements and the helpers it builds them from.
//! Applications do not need this module; they use the handles at the crate root.
//!
//! Implement [`Service`], [`Session`] and [`Locker`] (the contract: what the handles do for
//! every backend, and what is left to yours, is listed below). Their async methods return
//! [`OpFuture`]: `OpFuture::ready(…)` when you can answer at once, `OpFuture::boxed(async {…})`
//! otherwise (or [`OpFuture::pending`] when the wait's state lives in the object itself). Build
//! each [`Hold`] from a [`Signal`] you fire when the lock stops being held (or from your own
//! state implementing [`HasSignal`]), and register the scheme with one line,
//! [`register_service!`](crate::register_service). Any crate can do this; `lock::new("yours:…")`
//! then finds it as long as the program links your crate (reference it, e.g.
//! `use your_backend as _;`, or call [`Registry::register`] yourself).
//!
//! ```
//! use lock_core::backend::{ConnectionString, OpenFuture};
//! use lock_core::Error;
//!
//! fn open(cs: ConnectionString) -> OpenFuture {
//!     Box::pin(async move {
//!         let mut options = cs.options();
//!         let _verbose = options.bool("verbose")?.unwrap_or(false);
//!         options.finish()?; // rejects unknown options
//!         // Ok(lock_core::backend::service(YourService::new(…)))
//!         Err(Error::InvalidConfig("construct your service here".into()))
//!     })
//! }
//!
//! lock_core::register_service!("yours", open);
//! ```
//!
//! Then run the conformance suite from your crate's `tests/conformance.rs`:
//! `lock_testkit::conformance_tests!(lock_testkit::Harness::from_uri("yours:"));`.
//! `third-party/example-mem` in this repository is a complete example.
//!
//! # What the handles do
//!
//! The handles do the work every backend would otherwise redo the same way, and a backend may
//! rely on it:
//!
//! - the [`SessionConfig`](crate::SessionConfig) is validated (a non-zero TTL and timeout)
//!   before [`Service::new_session`];
//! - ids are validated before [`Session::new_locker`]: an invalid id never reaches the backend
//!   (the locker's first `lock`/`try_lock` fails with `InvalidId`);
//! - `close()` of a service or session is called at most once (the second call fails with
//!   `AlreadyClosed` in the handles; `Locker::unlock` through a closed handle too);
//! - a locker's `lock()`/`try_lock()` is called only while no other attempt of the same
//!   locker is under way (a second one fails with `AlreadyLocked`), and the session's timeout
//!   is applied around it: the backend's future is dropped when it passes;
//! - a hold a backend grants is ended by a call naming its fencing token: [`Locker::unlock`]
//!   (the application releases and waits) or [`Locker::release`] (its guard was dropped, also
//!   after the hold was lost), always for the latest hold granted to that locker. The
//!   application's `Locker::unlock()` and its guard may name the same hold twice: a hold that
//!   has ended gets `NotHeld`;
//! - an `unlock()` the application drops before the backend's release completed is finished
//!   with [`Locker::release`]: a backend's `unlock` need not be cancel-safe;
//! - the locker keeps its session open: the [`Party`] it keeps (and returns from
//!   [`Locker::party`]) holds the session, and drops after the locker's own `Drop`. A `Held`
//!   keeps its locker, so a backend sees the usual order: holds end before their locker is
//!   dropped, lockers before their session;
//! - for a backend whose sessions are not leases, the handles end its sessions too: leave
//!   [`Session::done`] as provided (`None`) and they resolve `done()`, release the holds of a
//!   session that is closed (or whose service is), cancel its waiting `lock()`s, and refuse its
//!   later attempts. `Session::close` and `Service::close` then have nothing left to do.
//!
//! What remains the backend's: exclusion, FIFO order, fencing tokens, the lost signal (fired
//! before anybody else is granted the lock), cancel safety of `lock()` (dropped, it leaves
//! nothing behind), and ending the sessions it keeps itself (leases). The conformance suite
//! checks each.
//!
//! A [`Layer`] wraps a service, its sessions and lockers (metrics, retries, fault injection);
//! an application applies it with [`crate::Service::layer`].

use std::sync::Arc;

pub use crate::contract::{Election, Layer, Locker, Party, Service, Session};
pub use crate::hold::Hold;
pub use crate::id::validate_id;
pub use crate::observe::Publisher;
pub use crate::op::{OpFuture, PendingOp};
pub use crate::registry::{OpenFuture, Registry, ServiceFactory};
pub use crate::secret::{is_secret_option, redact_endpoint, InvalidSecret, Secret, REDACTED};
pub use crate::signal::{Deadline, HasSignal, Signal};
pub use crate::uri::{redact_uri, ConnectionString, Options};

/// The application's handle of a backend's service: what a backend's `open` function returns.
pub fn service(service: impl Service) -> crate::Service {
    crate::Service::new(Arc::new(service))
}

/// The application's handle of a session a backend opened by its own means (a constructor
/// with options the connection string cannot carry), with the configuration it was opened
/// with (the handles apply its timeout). `service` is closed with it only if it was opened
/// through a service handle: such a session has none.
pub fn session(session: Arc<dyn Session>, config: crate::SessionConfig) -> crate::Session {
    crate::Session::new(session, config, None)
}

/// The future of a session's [`Session::done`]: the end of the `epoch` of `signal` (and of
/// `deadline`, if any).
pub fn done<S: HasSignal>(
    signal: Arc<S>,
    epoch: u64,
    deadline: Option<Arc<Deadline>>,
) -> crate::Done {
    crate::Done::new(signal, epoch, deadline)
}

/// A [`Party`] of `session` for a backend's own unit tests, which make a backend locker without
/// the handles. Not for use outside tests: the handles make a locker's party.
#[doc(hidden)]
pub fn party_for_tests(session: &crate::Session) -> Party {
    session.party()
}

/// The backend's own locker behind an application's `locker`, for the backend's extensions
/// (see [`Locker::as_any`]): `None` if the backend offers none.
pub fn as_any(locker: &crate::Locker) -> Option<&dyn std::any::Any> {
    locker.backend().as_any()
}
