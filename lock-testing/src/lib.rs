//! `test:` — a lock backend for application tests, with a [`Controller`] in the test's hands:
//! take a hold away, expire a session, fail or hang the next `lock()`, delay grants, make the
//! service unavailable; then check what happened ([`History`]). Normally used through the
//! `lock` crate's `testing` feature, as `lock::testing`.
//!
//! It is `local:` underneath (every semantic of the contract, no I/O), so a test runs under
//! tokio's paused clock (`#[tokio::test(start_paused = true)]`): a TTL or timeout of minutes
//! passes at once, and the same test gives the same history every run. Each fault gives the
//! signals and errors the `etcd:` backend gives for the same fault:
//!
//! | controller | the holder's `lost()`, `loss().cause()` | other effects |
//! |---|---|---|
//! | [`take_away(id)`](Controller::take_away) — as if the key were deleted by someone else | fires, `Removed` | the id goes to the next waiter |
//! | [`expire_session_of(id)`](Controller::expire_session_of), [`expire_all_sessions()`](Controller::expire_all_sessions) — as if the lease expired on the server | fires, `Removed` (etcd deletes the lease's keys, and its watch reports that first) | then the session ends: its `done()` resolves, its waiting `lock()`s fail with `Canceled`, later calls with `AlreadyClosed` |
//! | [`fail_next_lock(id, Injected::Transient)`](Controller::fail_next_lock) | — | that `lock()` fails with a transient `Error::Backend` (`is_transient()`) |
//! | [`fail_next_lock(id, Injected::Hang)`](Controller::fail_next_lock) | — | that `lock()` (or `try_lock()`) waits until the session's timeout: `Error::Timeout` |
//! | [`delay_grants(d)`](Controller::delay_grants) | — | every `lock()` takes `d` longer |
//! | [`set_available(false)`](Controller::set_available) | fires at the session's deadline (one TTL into the outage), `DeadlinePassed` | new sessions fail with a transient `Error::Backend`; `lock()` waits (until its timeout, or the service is back); `unlock()` fails with a transient error, the hold ending for its holder at once |
//!
//! ```
//! use std::time::Duration;
//! use lock_testing::Controller; // `lock::testing::Controller` through the façade
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> lock_core::Result<()> {
//! let control = Controller::new("doc-example");
//! // The application under test opens "test:doc-example" from its configuration.
//! let service = lock_core::new(&control.uri()).await?;
//! let config = lock_core::SessionConfig::new(Duration::from_secs(10));
//! let session = service.new_session(config).await?;
//! let held = session.new_locker("jobs").lock().await?;
//!
//! assert_eq!(control.take_away("jobs"), 1);
//! assert_eq!(held.loss().map(|l| l.cause()), Some(lock_core::LossCause::Removed));
//! assert!(control.history().check_no_two_holders().is_ok());
//! # Ok(()) }
//! ```

mod backend;
mod history;
mod world;

use std::sync::Arc;
use std::time::Duration;

use lock_core::backend::{ConnectionString, OpenFuture, Registry, ServiceFactory};
use lock_core::{Error, Held};

pub use history::{Event, History, What};
pub use world::Injected;

use world::World;

/// The scheme of this backend: `test`.
pub const SERVICE_TEST: &str = "test";

fn open(cs: ConnectionString) -> OpenFuture {
    let name = cs.body().to_owned();
    let opened = cs.options().finish().and_then(|()| {
        if name.is_empty() {
            return Err(Error::InvalidConnectionString(
                "test: needs a world's name, e.g. `test:my-app` (the name a test's \
                 `lock::testing::Controller::new` gave)"
                    .into(),
            ));
        }
        let service = backend::TestService::new(World::named(&name));
        Ok(lock_core::backend::service(service))
    });
    Box::pin(std::future::ready(opened))
}

/// The registration of this backend, for [`Registry::register`]. Linking this crate registers
/// it in [`Registry::global`] already.
pub const FACTORY: ServiceFactory = ServiceFactory::new(SERVICE_TEST, open);

/// Registers `test:` with `registry` (the global registry has it already).
pub fn register(registry: &Registry) {
    registry.register(FACTORY);
}

lock_core::register_service!(SERVICE_TEST, open);

/// A test's hand on the `test:NAME` world: every service the application opens with
/// `test:NAME` shares one lock table (as services on one etcd cluster do), and the controller
/// injects faults into it and reads its history.
///
/// Cheap to clone. [`Controller::new`] starts a fresh world, so each test begins from nothing;
/// use a name per test.
#[derive(Clone)]
pub struct Controller {
    name: String,
    world: Arc<World>,
}

impl Controller {
    /// A fresh world named `name`: `lock::new("test:NAME")` opens services on it. Call it
    /// inside the test's runtime (its clock is the history's).
    pub fn new(name: &str) -> Self {
        Controller {
            name: name.to_owned(),
            world: World::fresh(name),
        }
    }

    /// The connection string of this world: `test:NAME`.
    pub fn uri(&self) -> String {
        format!("{SERVICE_TEST}:{}", self.name)
    }

    /// Takes every hold of `id` away, as if its key were deleted by someone else: each
    /// holder's `lost()` fires (`LossCause::Removed`) and the id goes to the next waiter.
    /// Returns how many holds it took.
    pub fn take_away(&self, id: &str) -> usize {
        self.world.take_away(id)
    }

    /// Takes the one hold with fencing `token` away (one permit of a semaphore's, say), as
    /// [`take_away`](Controller::take_away) does; `false` if no live hold has that token.
    pub fn take_away_hold(&self, token: u64) -> bool {
        self.world.take_away_hold(token)
    }

    /// Ends the session(s) holding `id` as if their leases had expired on the server: their
    /// holds are lost as etcd reports it (`LossCause::Removed`: the lease's keys were deleted),
    /// then the sessions end: their `done()` resolves, their waiting `lock()`s fail with
    /// `Canceled`, later calls with `AlreadyClosed`. Returns how many sessions it ended.
    pub fn expire_session_of(&self, id: &str) -> usize {
        self.world.expire_session_of(id)
    }

    /// Ends every open session of the world as if its lease had expired.
    pub fn expire_all_sessions(&self) -> usize {
        self.world.expire_all_sessions()
    }

    /// Makes the next `lock()` (or `try_lock()`) of `id` fail with `fault` instead of doing
    /// its work; several calls queue several faults.
    pub fn fail_next_lock(&self, id: &str, fault: Injected) {
        self.world.inject(id, fault);
    }

    /// Delays every grant by `by` (zero: no delay).
    pub fn delay_grants(&self, by: Duration) {
        self.world.delay_grants(by);
    }

    /// Makes the service unavailable (`false`) or available again (`true`); see the table in
    /// the crate's documentation. Call it inside the test's runtime.
    pub fn set_available(&self, available: bool) {
        self.world.set_available(available);
    }

    /// The fencing tokens of the holds of `id` now.
    pub fn holders(&self, id: &str) -> Vec<u64> {
        self.world.holders(id)
    }

    /// Everything that happened so far, in order.
    pub fn history(&self) -> History {
        self.world.history()
    }

    /// A protected resource named `name` that records the application's writes in the
    /// history (for [`History::check_writes_under_live_holds`] and
    /// [`History::check_stopped_within`]) and refuses a token older than one it took.
    pub fn resource(&self, name: &str) -> Resource {
        Resource {
            name: name.to_owned(),
            world: self.world.clone(),
        }
    }
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A fenced resource of a test world: see [`Controller::resource`]. Cheap to clone.
#[derive(Clone)]
pub struct Resource {
    name: String,
    world: Arc<World>,
}

impl Resource {
    /// Writes with `token` (the writer's fencing token); `true` if taken, `false` if a newer
    /// token had written (a stale writer). Recorded either way.
    pub fn write(&self, token: u64) -> bool {
        self.world.write(&self.name, token)
    }

    /// Writes under `held`: [`write`](Resource::write) with its fencing token.
    pub fn write_under(&self, held: &Held) -> bool {
        self.write(held.fencing_token())
    }
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
