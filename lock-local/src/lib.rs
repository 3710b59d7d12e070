//! The `local:` backend of [`lock`](https://docs.rs/lock): in-process locks with every
//! semantic of the `lock` contract (lost signal, fencing tokens, FIFO, timeouts, cancel
//! safety) and no I/O. Normally used through the `lock` crate: `lock::new("local:")`.
//!
//! The TTL of a session is not used: the process is the whole world, so nothing expires.
//!
//! Waiters are served first come, first served, and a release hands the lock to the first of
//! them directly. A free lock is taken at once; like tokio's `Mutex`, a `lock()` of an id that
//! other lockers share, or that its thread locked last, spends a unit of the tokio task's
//! cooperative budget, and a task whose budget is used up yields holding the lock it just
//! took, so that tasks looping on one id take turns instead of one of them keeping its worker.

mod id;
mod locker;
mod permits;
mod service;
mod session;
mod table;
mod weak_list;

pub use permits::PermitLocker;
pub use service::LocalService;
pub use session::LocalSession;
pub use table::LocalLocker;

use lock_core::backend::{ConnectionString, OpenFuture, Registry, ServiceFactory};

/// The scheme of this backend: `local`.
pub const SERVICE_LOCAL: &str = "local";

fn open(cs: ConnectionString) -> OpenFuture {
    Box::pin(async move {
        if !cs.body().is_empty() {
            return Err(lock_core::Error::InvalidConnectionString(
                "`local:` takes nothing after the colon".into(),
            ));
        }
        cs.options().finish()?;
        Ok(lock_core::backend::service(LocalService::new()))
    })
}

/// The registration of this backend, for [`Registry::register`]. Linking this crate
/// registers it in [`Registry::global`] already.
pub const FACTORY: ServiceFactory = ServiceFactory::new(SERVICE_LOCAL, open);

/// Registers `local:` in `registry`.
pub fn register(registry: &Registry) {
    registry.register(FACTORY);
}

lock_core::register_service!(SERVICE_LOCAL, open);
