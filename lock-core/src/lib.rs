//! The contract of [`lock`](https://docs.rs/lock): cancellable, distributed locks with
//! pluggable backends. Applications normally use the `lock` crate, which re-exports all of this
//! and links the backends; this crate is what a backend implements.
//!
//! - A [`Service`] is opened from a connection string by [`new`] (`local:`, `etcd:…`, or any
//!   scheme a crate registers).
//! - A [`Session`] carries a TTL ([`SessionConfig`]); a [`Locker`] takes one lock id.
//! - Every granted lock hands back a [`Held`] guard: [`Held::lost`] fires the moment the lock
//!   is no longer held, [`Held::fencing_token`] increases strictly from holder to holder, and
//!   dropping the guard releases the lock.
//! - The handles are `Send + Sync + 'static`. Services and sessions are cheap to clone: clone
//!   them into tasks. A locker is one party (one hold or attempt at a time) and is not
//!   `Clone`: each task makes its own. A locker keeps its session open and a `Held` keeps its
//!   locker, so `session.new_locker(id).lock().await?` holds the lock for as long as the
//!   guard lives.
//!
//! # The shape that cannot go wrong
//!
//! Run the work inside [`Locker::with_lock`], or bind the guard to a name and release it with
//! [`Held::unlock`]:
//!
//! ```no_run
//! # async fn demo(session: lock_core::Session) -> lock_core::Result<()> {
//! let mut locker = session.new_locker("reports/daily");
//! let rows = locker
//!     .with_lock(|fence| async move {
//!         if fence.is_lost() {
//!             return Err(lock_core::Error::NotHeld); // check before a side effect
//!         }
//!         Ok(write_report(fence.fencing_token()).await)
//!     })
//!     .await?;
//!
//! let held = locker.lock().await?; // named: held until `unlock()` or the end of its scope
//! write_report(held.fencing_token()).await;
//! held.unlock().await?;
//! # let _ = rows; Ok(()) }
//! # async fn write_report(_token: u64) -> usize { 1 }
//! ```
//!
//! What the compiler cannot catch: a guard that is dropped at once releases the lock before
//! the work runs. `let _ = locker.lock().await?;` binds nothing (`_` is not a name, unlike
//! `_held`), and `if locker.try_lock().await?.is_some() { work() }` drops the guard at the end
//! of the condition; `#[must_use]` on `Held` does not fire for either. Write
//! `let _held = …` or `if let Some(held) = locker.try_lock().await? { … }` instead, and
//! consider `#![warn(clippy::let_underscore_must_use)]` in your crate (a restriction lint,
//! off by default), which flags the first. (`lock`'s `tests/traps.rs` runs these shapes and
//! these traps on `local:`.)
//!
//! # Semantics every backend honours
//!
//! Mutual exclusion between any two lockers of an id (also within one session); `lost()` fires
//! on unlock, session end, service close, lease expiry, and *before* anybody else is granted
//! the lock; fencing tokens strictly increase and are never reused; waiters are served in FIFO
//! order and a release wakes one waiter; [`SessionConfig::timeout`] bounds `lock()`; dropping a
//! pending `lock()` leaves nothing behind; dropping a `Held` (or the last handle of its locker)
//! releases the lock, and dropping the last handle of a session ends it. Ids are any non-empty UTF-8 up to [`MAX_ID_LEN`] bytes.
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
//! **The lock-delay rule** (backends with leases). A hold can end on the server without its
//! holder's doing — its lease expired or revoked, its record removed by someone else — while
//! the holder cannot hear of it yet (cut off, paused, or the server revoked the lease *early*,
//! as etcd does under load). Such a hold must not be granted to anyone else before the
//! holder's own `is_lost()` is true wherever it runs: the backend waits out the holder's
//! deadline (its TTL measured from when the hold vanished, or less if the holder says it knows)
//! before the next grant. A clean release — `unlock()`, a dropped `Held`, a closed session or
//! service — hands over at once. The etcd backend calls this its lock-delay (option
//! `lock-delay`); the conformance check `a_lost_lease_is_not_granted_before_its_holder_knows`
//! holds every backend with leases to it, through the harness's capability to end a
//! session's lease from outside the session.
//!
//! # Writing a backend
//!
//! The traits a backend implements and their helpers are in [`backend`]; applications never
//! need them. `third-party/example-mem` in this repository is a complete example.
//!
//! # Runtime
//!
//! The handles work on any tokio runtime. A timeout (the session's, or
//! [`Locker::lock_timeout`]) needs tokio's timers: `#[tokio::main]` and `#[tokio::test]` enable
//! them, and a runtime you build needs `enable_time()` (or `enable_all()`); without them tokio
//! panics when the timer starts. The etcd backend also needs tokio's I/O driver.

pub mod backend;
mod config;
mod contract;
mod election;
mod error;
mod handle;
mod hold;
mod id;
mod locker;
mod loss;
mod observe;
mod op;
mod registry;
mod secret;
mod signal;
mod uri;

pub use config::SessionConfig;
pub use election::Election;
pub use error::{BoxError, Error, ErrorKind, Report, Result};
pub use handle::{Service, Session};
pub use hold::{Done, Fence, Lost};
pub use id::MAX_ID_LEN;
pub use locker::{Held, Lock, Locker, TryLock, Unlock};
pub use loss::{Loss, LossCause};
pub use observe::{Leader, Observer};
pub use registry::{new, services};

#[doc(hidden)]
pub mod __private {
    pub use crate::registry::ServiceFactory;
    pub use inventory;
}
