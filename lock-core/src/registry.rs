//! The registry of backends, keyed by connection-string scheme.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{OnceLock, RwLock};

use crate::uri::ConnectionString;
use crate::{Error, Result, Service};

/// The future a backend's constructor returns: the service, wrapped with
/// [`backend::service`](crate::backend::service).
pub type OpenFuture = Pin<Box<dyn Future<Output = Result<Service>> + Send + 'static>>;

/// How to open one backend: its scheme and its constructor. Built in `const` context, so it can
/// be registered with [`register_service!`](crate::register_service).
#[derive(Clone, Copy)]
pub struct ServiceFactory {
    scheme: &'static str,
    open: fn(ConnectionString) -> OpenFuture,
}

impl ServiceFactory {
    /// A factory for `scheme` (lowercase, without the colon) calling `open`.
    pub const fn new(scheme: &'static str, open: fn(ConnectionString) -> OpenFuture) -> Self {
        ServiceFactory { scheme, open }
    }

    /// The scheme this factory serves.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// Opens a service from a parsed connection string.
    pub fn open(&self, cs: ConnectionString) -> OpenFuture {
        (self.open)(cs)
    }
}

impl fmt::Debug for ServiceFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceFactory")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

inventory::collect!(ServiceFactory);

/// A set of backends by scheme. [`Registry::global`] holds every backend linked into the
/// program; other registries are ordinary values (useful in tests).
///
/// # Examples
///
/// ```
/// use lock_core::backend::{Registry, ServiceFactory, ConnectionString, OpenFuture};
/// use lock_core::Error;
///
/// fn open(_: ConnectionString) -> OpenFuture {
///     Box::pin(async { Err(Error::InvalidConfig("demo only".into())) })
/// }
///
/// let registry = Registry::new();
/// registry.register(ServiceFactory::new("demo", open));
/// assert_eq!(registry.schemes(), ["demo"]);
/// ```
pub struct Registry {
    factories: RwLock<BTreeMap<&'static str, ServiceFactory>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            factories: RwLock::new(BTreeMap::new()),
        }
    }

    /// A registry of every backend registered with
    /// [`register_service!`](crate::register_service) in the crates linked into this program.
    pub fn linked() -> Self {
        let registry = Registry::new();
        for factory in inventory::iter::<ServiceFactory> {
            registry.register(*factory);
        }
        registry
    }

    /// The process-wide registry used by [`crate::new`]: starts as [`Registry::linked`];
    /// [`register`](Registry::register) adds to it at run time.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(Registry::linked)
    }

    /// Adds a backend, replacing (and returning) any earlier one for the same scheme.
    pub fn register(&self, factory: ServiceFactory) -> Option<ServiceFactory> {
        self.factories
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(factory.scheme, factory)
    }

    /// The registered schemes, sorted.
    pub fn schemes(&self) -> Vec<&'static str> {
        self.factories
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Opens a service from a connection string, choosing the backend by its scheme.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionString`] for a malformed string;
    /// [`Error::UnsupportedService`] (listing the registered schemes) for an unknown scheme;
    /// whatever the backend's constructor returns.
    pub async fn open(&self, uri: &str) -> Result<Service> {
        let cs = ConnectionString::parse(uri)?;
        let factory = {
            let factories = self.factories.read().unwrap_or_else(|e| e.into_inner());
            factories.get(cs.scheme()).copied()
        };
        match factory {
            Some(factory) => factory.open(cs).await,
            None => Err(Error::UnsupportedService {
                scheme: cs.scheme().to_owned(),
                available: self.schemes().into_iter().map(str::to_owned).collect(),
            }),
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes())
            .finish()
    }
}

/// Registers a backend in every program that links the calling crate:
/// `register_service!("scheme", open_fn)` where `open_fn: fn(ConnectionString) -> OpenFuture`.
///
/// See the `backend` module.
#[macro_export]
macro_rules! register_service {
    ($scheme:expr, $open:expr $(,)?) => {
        $crate::__private::inventory::submit! {
            $crate::__private::ServiceFactory::new($scheme, $open)
        }
    };
}

/// Opens a service from a connection string with the global registry.
///
/// # Errors
///
/// See [`Registry::open`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = lock_core::new("nosuch:").await.unwrap_err();
/// assert!(err.to_string().starts_with("unsupported service: `nosuch`"));
/// # }
/// ```
pub async fn new(uri: &str) -> Result<Service> {
    Registry::global().open(uri).await
}

/// The schemes of the global registry, sorted.
pub fn services() -> Vec<&'static str> {
    Registry::global().schemes()
}
