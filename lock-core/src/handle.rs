//! The handles applications hold for a service and a session: [`Service`] and [`Session`].
//! Each is one `Arc`, `Send + Sync + 'static` and `Clone` (clone them into tasks freely).
//!
//! Lifetimes follow the handles, as with `Arc`: a locker keeps its session open, and a
//! [`Held`](crate::Held) keeps its locker; a session ends when it is closed, its service is
//! closed, or the last handle of it (its lockers and holds included) is dropped.

use std::fmt;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::Arc;
use std::time::Duration;

use crate::config::SessionConfig;
use crate::contract::{self, Layer, Party, ServiceShared, ServiceState, SessionState};
use crate::election::Election;
use crate::error::{Error, Result};
use crate::hold::Done;
use crate::id::validate_id;
use crate::locker::{invalid_locker, Locker};

/// A locking service: a connection to a backend, from which sessions are opened. Open one with
/// [`crate::new`] from a connection string (`local:`, `etcd:http://127.0.0.1:2379`, …).
///
/// Cheap to clone; every clone is the same service. Sessions keep the service's resources
/// alive: dropping the handles ends nothing; [`close`](Service::close) ends every session.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> lock_core::Result<()> {
/// use std::time::Duration;
/// use lock_core::SessionConfig;
///
/// let service = lock_core::new("local:").await?;
/// let session = service.new_session(SessionConfig::new(Duration::from_secs(10))).await?;
/// let mut held = session.new_locker("jobs/nightly").lock().await?;
/// println!("token {}", held.fencing_token());
/// held.unlock().await?;
/// service.close().await
/// # }
/// ```
#[derive(Clone)]
pub struct Service {
    state: Arc<ServiceState>,
}

impl Service {
    /// Wraps a backend's service (see [`backend::service`](crate::backend::service)).
    pub(crate) fn new(backend: Arc<dyn contract::Service>) -> Self {
        Service {
            state: Arc::new(ServiceState {
                backend,
                shared: Arc::new(ServiceShared::default()),
                layers: Vec::new(),
            }),
        }
    }

    /// This service with `layer` around it: sessions opened and lockers made through the
    /// returned handle go through the layer (metrics, tracing, retries; see
    /// [`backend::Layer`](crate::backend::Layer)). Layers applied later wrap earlier ones.
    /// Both handles are the same service: closing either closes it.
    #[must_use = "the layer applies to the returned handle only"]
    pub fn layer(&self, layer: impl Layer) -> Service {
        let layer: Arc<dyn Layer> = Arc::new(layer);
        let mut layers = self.state.layers.clone();
        layers.push(layer.clone());
        Service {
            state: Arc::new(ServiceState {
                backend: layer.service(self.state.backend.clone()),
                shared: self.state.shared.clone(),
                layers,
            }),
        }
    }

    /// Opens a session: the TTL its locks live by without a keep-alive, and how long `lock()`
    /// may wait (see [`SessionConfig`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a configuration the backend cannot honour (a zero TTL or
    /// timeout for every backend); [`Error::AlreadyClosed`] after `close`; [`Error::Backend`]
    /// when the backend cannot be reached.
    pub async fn new_session(&self, config: SessionConfig) -> Result<Session> {
        config.validate()?;
        if self.state.shared.closed.load(Acquire) {
            return Err(Error::AlreadyClosed("service"));
        }
        let mut backend = self.state.backend.new_session(config).await?;
        for layer in &self.state.layers {
            backend = layer.session(backend);
        }
        Ok(Session::new(backend, config, Some(self.state.clone())))
    }

    /// Closes the service: every session ends and every lock is reported lost.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] on the second call; what the backend could not do (the service
    /// is closed regardless).
    pub async fn close(&self) -> Result<()> {
        if self.state.shared.closed.swap(true, AcqRel) {
            return Err(Error::AlreadyClosed("service"));
        }
        self.state.shared.end_sessions();
        self.state.backend.close().await
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.state.backend, f)
    }
}

/// A session: one party's identity towards the backend, with a TTL. Every lock taken through
/// its lockers lives at most as long as the session.
///
/// Cheap to clone. The session ends when [`close`](Session::close)d, when its service is
/// closed, when (on a remote backend) its lease is lost, or when the last handle of it — its
/// lockers and their holds included — is dropped (then in the background).
#[derive(Clone)]
pub struct Session {
    state: Arc<SessionState>,
}

impl Session {
    /// Wraps a backend's session (see [`backend::session`](crate::backend::session)).
    pub(crate) fn new(
        backend: Arc<dyn contract::Session>,
        config: SessionConfig,
        service: Option<Arc<ServiceState>>,
    ) -> Self {
        Session {
            state: SessionState::new(backend, config.timeout, service),
        }
    }

    /// A locker for lock `id`. Lockers of the same id exclude each other, whether they belong
    /// to the same session or to different ones. An invalid id is reported by the locker's
    /// first `lock`/`try_lock` call as [`Error::InvalidId`].
    ///
    /// The locker keeps this session open while it (or a [`Held`](crate::Held) of it) lives.
    pub fn new_locker(&self, id: &str) -> Locker {
        let party = self.party();
        if let Err(e) = validate_id(id) {
            return Locker::new(invalid_locker(id, e, party));
        }
        self.wrap(self.state.backend.new_locker(id, party))
    }

    /// A locker for one permit of semaphore `id`, which up to `limit` lockers hold at once
    /// (across services and processes, as for locks). Each permit is a hold with a lock's whole
    /// contract: [`lock`](Locker::lock) waits in FIFO order and returns a [`Held`](crate::Held)
    /// whose [`lost`](crate::Held::lost) fires before the permit can be granted to anybody
    /// else, with a fencing token of its own: unique among the permits of `id`, and ordered as
    /// their parties queued (a party that asked later gets a greater token; permits granted at
    /// about the same time may be granted out of token order).
    ///
    /// Every party of a semaphore must use the same limit: a `lock()` while others hold or
    /// wait with another limit fails with [`Error::LimitMismatch`]. Semaphore ids are their
    /// own namespace on `local:`; on `etcd:` see the guide ("Semaphores").
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`]; [`Error::InvalidConfig`] for a limit of 0;
    /// [`Error::Unsupported`] if the backend offers no semaphores.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(session: lock_core::Session) -> lock_core::Result<()> {
    /// let mut permit = session.new_semaphore("jobs/render", 4)?; // at most 4 renders at once
    /// let held = permit.lock().await?;
    /// render(held.fencing_token()).await;
    /// held.unlock().await
    /// # }
    /// # async fn render(_token: u64) {}
    /// ```
    pub fn new_semaphore(&self, id: &str, limit: u32) -> Result<Locker> {
        validate_id(id)?;
        if limit == 0 {
            return Err(Error::InvalidConfig(format!(
                "semaphore `{id}`: a limit of 0 would never grant a permit; use 1 or more"
            )));
        }
        let backend = self.state.backend.new_semaphore(id, limit, self.party())?;
        Ok(self.wrap(backend))
    }

    /// A party of election `name`: campaign for leadership with a value, learn who leads,
    /// observe every change (see [`Election`]). Election names are their own namespace on
    /// `local:`; on `etcd:` an election is visible to etcd's own (`etcdctl elect`; see the
    /// guide, "Elections").
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`]; [`Error::Unsupported`] if the backend offers no elections.
    pub fn new_election(&self, name: &str) -> Result<Election> {
        validate_id(name)?;
        let backend = self.state.backend.new_election(name, self.party())?;
        let locker = self.wrap(backend.clone().into_locker());
        Ok(Election::new(locker, backend))
    }

    /// A locker handle of `backend`, through the service's layers.
    fn wrap(&self, mut backend: Arc<dyn contract::Locker>) -> Locker {
        if let Some(service) = &self.state.service {
            for layer in &service.layers {
                backend = layer.locker(backend);
            }
        }
        self.state.joined(&backend);
        Locker::new(backend)
    }

    /// A future that resolves once the session has ended: closed, its service closed, or (for
    /// remote backends) its lease lost. `'static`.
    pub fn done(&self) -> Done {
        match self.state.done() {
            Some(done) => done,
            // A backend that ends its sessions answers `Some` (the handles asked at open).
            None => self.state.backend.done().unwrap_or_else(Done::ended),
        }
    }

    /// A new locker's party.
    pub(crate) fn party(&self) -> Party {
        Party::new(self.state.clone())
    }

    /// How long `lock()` waits at most ([`SessionConfig::timeout`]).
    pub fn timeout(&self) -> Option<Duration> {
        self.state.timeout
    }

    /// Ends the session: its locks are released (and reported lost), its waiters fail with
    /// [`Error::Canceled`]. Handles of it that remain fail with [`Error::AlreadyClosed`].
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] on the second call (or after its service was closed); what the
    /// backend could not do (the session is closed regardless).
    pub async fn close(&self) -> Result<()> {
        if self.state.closed.swap(true, AcqRel) {
            return Err(Error::AlreadyClosed("session"));
        }
        if self.state.ends_here() {
            // The handles end it; if its service was closed, it ended then.
            let service = self.state.service.as_ref();
            if service.is_some_and(|s| s.shared.closed.load(Acquire)) {
                return Err(Error::AlreadyClosed("session"));
            }
            self.state.end();
        }
        self.state.backend.close().await
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.state.backend, f)
    }
}
