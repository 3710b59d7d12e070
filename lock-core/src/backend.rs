//! For backend authors: the traits a backend implements and the helpers it builds them from.
//! Applications do not need this module; they use the handles at the crate root.
//!
//! Implement [`Service`], [`Session`] and [`Locker`]. Their async methods return
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
//!         // Ok(lock_core::Service::from_backend(YourService::new(…)))
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
//! # What the handles add
//!
//! The application's [`crate::Locker`] keeps its [`crate::Session`] alive, and its
//! [`crate::Held`] keeps the locker alive, so a backend sees the usual drop order: a locker's
//! holds end before the locker is dropped, and lockers are dropped before their session. A
//! dropped `Held` calls [`Locker::release`] with its token; `Held::unlock` calls
//! [`Locker::unlock`] with it.

pub use crate::held::Hold;
pub use crate::id::validate_id;
pub use crate::op::{OpFuture, PendingOp};
pub use crate::registry::{OpenFuture, Registry, ServiceFactory};
pub use crate::secret::{is_secret_option, redact_endpoint, InvalidSecret, Secret, REDACTED};
pub use crate::signal::{Deadline, HasSignal, Signal};
pub use crate::traits::{Locker, Service, Session};
pub use crate::uri::{redact_uri, ConnectionString, Options};
