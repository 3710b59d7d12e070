//! What the conformance functions are given: a way to open the backend under test.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{OpenFuture, Service, SessionConfig};

use crate::Failure;

type Opener = Arc<dyn Fn() -> OpenFuture + Send + Sync>;

/// How to open the backend under test, and the timings to test it with.
///
/// Every harness draws a random id prefix, so runs against a shared server never collide.
#[derive(Clone)]
pub struct Harness {
    label: String,
    open: Opener,
    ttl: Duration,
    settle: Duration,
    prefix: String,
}

impl Harness {
    /// A harness that opens `uri` through the global registry (`lock::new`).
    pub fn from_uri(uri: impl Into<String>) -> Self {
        let uri: String = uri.into();
        let label = lock_core::ConnectionString::parse(&uri)
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
        }
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
    pub async fn service(&self) -> Result<Box<dyn Service>, Failure> {
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
            .finish()
    }
}

fn random_prefix() -> String {
    format!("t{}/", crate::random_hex())
}
