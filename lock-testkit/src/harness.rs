//! What the conformance functions are given: a way to open the backend under test, and what
//! the backend declares about itself.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lock_core::backend::OpenFuture;
use lock_core::{Service, SessionConfig};

use crate::Failure;

type Opener = Arc<dyn Fn() -> OpenFuture + Send + Sync>;
type FaultyOpener = Arc<dyn Fn(Vec<String>) -> OpenFuture + Send + Sync>;

/// What ending a holder's lease from outside returns: done, or why not.
pub type EndLeaseFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type LeaseEnder = Arc<dyn Fn(String) -> EndLeaseFuture + Send + Sync>;

/// Which lockers see each other's locks: what a backend declares, and the suite checks both
/// ways (what is declared shared must exclude; what is declared separate must not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sharing {
    /// Only the lockers of one service: two services opened from the same connection string
    /// are independent (`local:`, an in-process backend).
    Service,
    /// Every service opened in one OS process, but not other processes.
    Process,
    /// Every service in every process that opens the same backend: a distributed lock. The
    /// default, and what the suite checks with a child process it starts.
    Processes,
}

/// Which waiters a backend serves in the order they started waiting: what it declares, and the
/// suite checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fifo {
    /// No order is promised.
    No,
    /// Waiters of one service are served in order; waiters of different services (or
    /// processes) are not ordered among each other.
    WithinService,
    /// Every waiter that shares the lock (see [`Sharing`]) is served in order: the default.
    Shared,
}

impl From<bool> for Fifo {
    /// `true`: [`Fifo::Shared`]; `false`: [`Fifo::No`].
    fn from(fifo: bool) -> Self {
        match fifo {
            true => Fifo::Shared,
            false => Fifo::No,
        }
    }
}

/// How the suite puts a service behind its fault proxies: the addresses to proxy, and how to
/// open a service that connects through the proxies' URLs instead.
#[derive(Clone)]
pub(crate) struct Faults {
    pub(crate) targets: Vec<SocketAddr>,
    pub(crate) open: FaultyOpener,
}

/// How to open the backend under test, what it declares about itself, and the timings to test
/// it with.
///
/// Every harness draws a random id prefix, so runs against a shared server never collide.
///
/// The declarations default to the strictest reading of the contract: shared across
/// processes, FIFO, leased (a holder that dies loses its lock within the TTL). A backend that
/// is less says so:
///
/// ```
/// use lock_testkit::{Harness, Sharing};
///
/// let harness = Harness::from_uri("local:")
///     .with_sharing(Sharing::Service) // in-process: each service is its own lock table
///     .with_leases(false); // nothing can die without its service: the TTL is not enforced
/// assert_eq!(harness.sharing(), Sharing::Service);
/// ```
#[derive(Clone)]
pub struct Harness {
    label: String,
    open: Opener,
    ttl: Duration,
    settle: Duration,
    prefix: String,
    sharing: Sharing,
    fifo: Fifo,
    leases: bool,
    lock_delay: Duration,
    faults: Option<Faults>,
    end_lease: Option<LeaseEnder>,
    child: Option<String>,
    semaphores: bool,
    elections: bool,
}

impl Harness {
    /// A harness that opens `uri` through the global registry (`lock::new`).
    pub fn from_uri(uri: impl Into<String>) -> Self {
        let uri: String = uri.into();
        let label = lock_core::backend::ConnectionString::parse(&uri)
            .map(|cs| cs.scheme().to_owned())
            .unwrap_or_else(|_| "invalid".to_owned());
        Harness::new(label, move || {
            let uri = uri.clone();
            Box::pin(async move { lock_core::new(&uri).await })
        })
    }

    /// A harness that opens services with `open`.
    pub fn new<F>(label: impl Into<String>, open: F) -> Self
    where
        F: Fn() -> OpenFuture + Send + Sync + 'static,
    {
        Harness {
            label: label.into(),
            open: Arc::new(open),
            ttl: Duration::from_secs(2),
            settle: Duration::from_millis(100),
            prefix: random_prefix(),
            sharing: Sharing::Processes,
            fifo: Fifo::Shared,
            leases: true,
            lock_delay: Duration::ZERO,
            faults: None,
            end_lease: None,
            child: None,
            semaphores: true,
            elections: true,
        }
    }

    /// Declares which lockers see each other's locks (default [`Sharing::Processes`]).
    #[must_use]
    pub fn with_sharing(mut self, sharing: Sharing) -> Self {
        self.sharing = sharing;
        self
    }

    /// Declares which waiters are granted in the order they started waiting (default
    /// [`Fifo::Shared`], as the contract says; a backend that is less must say so to its users
    /// too). `true` and `false` stand for [`Fifo::Shared`] and [`Fifo::No`].
    #[must_use]
    pub fn with_fifo(mut self, fifo: impl Into<Fifo>) -> Self {
        self.fifo = fifo.into();
        self
    }

    /// Declares whether sessions are leases the backend enforces (default `true`): a session
    /// whose owner stops renewing it (killed, partitioned) ends within its TTL, and its locks
    /// with it. A backend without leases validates the TTL and otherwise ignores it: its
    /// sessions end only when closed or dropped (or their process exits).
    #[must_use]
    pub fn with_leases(mut self, leases: bool) -> Self {
        self.leases = leases;
        self
    }

    /// Declares the backend's lock-delay (default none): how long after a hold ends without a
    /// clean release (its holder killed or cut off, its lease expired or revoked on the
    /// server) the lock stays unavailable to others, so that a holder that has not heard yet
    /// knows by then. A killed process's lock is then free within the TTL, the delay and half
    /// a TTL.
    #[must_use]
    pub fn with_lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = delay;
        self
    }

    /// Lets the suite end a holder's lease from outside its session, as the backend's server
    /// does when the lease expires, or when it revokes it early: `end(id)` ends the session
    /// lease of whoever holds `id` (for etcd: a client of its own revokes the lease of the
    /// id's first key). With it and [`with_faults`](Self::with_faults), the suite checks that
    /// a lease that vanished behind a holder cut off from the backend is not granted to
    /// anyone else before the holder's `is_lost()` is true; without it, that check is skipped,
    /// visibly.
    #[must_use]
    pub fn with_lease_ending<F>(mut self, end: F) -> Self
    where
        F: Fn(String) -> EndLeaseFuture + Send + Sync + 'static,
    {
        self.end_lease = Some(Arc::new(end));
        self
    }

    /// Lets the suite inject network faults: it starts one [`FaultProxy`](crate::proxy::FaultProxy)
    /// in front of each of `targets` and opens a service with `open(proxy_urls)` (each URL
    /// `http://127.0.0.1:<port>`, in the order of `targets`). Without it, the fault checks are
    /// skipped, visibly.
    #[must_use]
    pub fn with_faults<F>(mut self, targets: Vec<SocketAddr>, open: F) -> Self
    where
        F: Fn(Vec<String>) -> OpenFuture + Send + Sync + 'static,
    {
        self.faults = Some(Faults {
            targets,
            open: Arc::new(open),
        });
        self
    }

    /// Names the test that runs the suite's child process (set by
    /// [`conformance_tests!`](crate::conformance_tests), which defines it). Without it the
    /// cross-process checks are skipped, visibly.
    #[doc(hidden)]
    #[must_use]
    pub fn with_child_test(mut self, test: impl Into<String>) -> Self {
        self.child = Some(test.into());
        self
    }

    /// Declares whether the backend offers semaphores (default `true`). One that does not must
    /// refuse them with [`Error::Unsupported`](lock_core::Error::Unsupported), which the suite
    /// checks instead of the semaphore checks.
    #[must_use]
    pub fn with_semaphores(mut self, offered: bool) -> Self {
        self.semaphores = offered;
        self
    }

    /// Declares whether the backend offers elections (default `true`); as
    /// [`with_semaphores`](Self::with_semaphores).
    #[must_use]
    pub fn with_elections(mut self, offered: bool) -> Self {
        self.elections = offered;
        self
    }

    /// What the backend declared: whether it offers semaphores.
    pub fn semaphores(&self) -> bool {
        self.semaphores
    }

    /// What the backend declared: whether it offers elections.
    pub fn elections(&self) -> bool {
        self.elections
    }

    /// What the backend declared: which lockers share locks.
    pub fn sharing(&self) -> Sharing {
        self.sharing
    }

    /// What the backend declared: which waiters are served in order.
    pub fn fifo(&self) -> Fifo {
        self.fifo
    }

    /// What the backend declared: leases enforced or not.
    pub fn leases(&self) -> bool {
        self.leases
    }

    /// What the backend declared: its lock-delay.
    pub fn lock_delay(&self) -> Duration {
        self.lock_delay
    }

    /// Ends the session lease of whoever holds `id`, from outside; `None` when the harness
    /// cannot (see [`with_lease_ending`](Self::with_lease_ending)).
    pub(crate) fn lease_ender(&self) -> Option<&LeaseEnder> {
        self.end_lease.as_ref()
    }

    /// Reports that `check` was skipped for this backend, and why (see [`crate::skip`]).
    pub fn skip(&self, check: &str, reason: &str) {
        crate::skip(&format!("{check} ({})", self.label), reason);
    }

    pub(crate) fn faults(&self) -> Option<&Faults> {
        self.faults.as_ref()
    }

    pub(crate) fn child_test(&self) -> Option<&str> {
        self.child.as_deref()
    }

    /// Sets the session TTL the suite uses (default 2 s).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how long the suite waits to be confident that something did *not* happen, or that
    /// a queued request reached the backend (default 100 ms). Remote backends want more.
    #[must_use]
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The backend's label, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The session TTL under test.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The settle time; see [`Harness::with_settle`].
    pub fn settle(&self) -> Duration {
        self.settle
    }

    /// A session configuration with the harness TTL and no timeout.
    pub fn config(&self) -> SessionConfig {
        SessionConfig::new(self.ttl)
    }

    /// Opens a new service.
    ///
    /// # Errors
    ///
    /// A [`Failure`] carrying the backend's error.
    pub async fn service(&self) -> Result<Service, Failure> {
        (self.open)()
            .await
            .map_err(|e| Failure::new(format!("opening the {} service failed: {e}", self.label)))
    }

    /// A lock id unique to this harness: `name` behind the random prefix.
    pub fn id(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The length of the random prefix [`Harness::id`] adds, in bytes.
    pub fn prefix_len(&self) -> usize {
        self.prefix.len()
    }

    /// Waits for `fut` at most `limit`, failing with a message naming `what`.
    ///
    /// # Errors
    ///
    /// A [`Failure`] when `limit` passes first.
    pub async fn within<T>(
        &self,
        limit: Duration,
        what: &str,
        fut: impl Future<Output = T>,
    ) -> Result<T, Failure> {
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| Failure::new(format!("{what}: nothing happened within {limit:?}")))
    }
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("label", &self.label)
            .field("ttl", &self.ttl)
            .field("settle", &self.settle)
            .field("prefix", &self.prefix)
            .field("sharing", &self.sharing)
            .field("fifo", &self.fifo)
            .field("leases", &self.leases)
            .field("lock_delay", &self.lock_delay)
            .field("faults", &self.faults.as_ref().map(|f| &f.targets))
            .field("ends_leases", &self.end_lease.is_some())
            .field("child", &self.child)
            .finish()
    }
}

fn random_prefix() -> String {
    format!("t{}/", crate::random_hex())
}
