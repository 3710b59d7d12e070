//! The one error type of the `lock` crates.

use std::time::Duration;

use crate::Loss;

/// A boxed error from a backend's transport, client library or server.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when opening services, sessions and locks.
///
/// Messages never contain secrets such as passwords.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No backend is registered for the connection string's scheme.
    #[error(
        "unsupported service: `{scheme}` (available schemes: {}); a backend crate registers its \
         scheme only if the program links it: add the crate to Cargo.toml and reference it once, \
         e.g. `use lock_{} as _;` for a crate named `lock-{scheme}`",
        available.join(", "),
        scheme.replace('-', "_")
    )]
    UnsupportedService {
        /// The scheme that was asked for.
        scheme: String,
        /// The schemes that are registered in this program.
        available: Vec<String>,
    },
    /// The connection string could not be parsed or names an unknown option.
    #[error("invalid connection string: {0}")]
    InvalidConnectionString(String),
    /// The operation was canceled because its session ended while it waited.
    #[error("canceled: {0}")]
    Canceled(String),
    /// The service, session or locker was already closed.
    #[error("already closed: {0}")]
    AlreadyClosed(&'static str),
    /// `lock()` did not get the lock within the session's timeout (or the call's, for
    /// [`Locker::lock_timeout`](crate::Locker::lock_timeout)).
    #[error("timed out after {} waiting for the lock", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The session configuration is not usable with this backend.
    #[error("invalid session configuration: {0}")]
    InvalidConfig(String),
    /// The lock id is empty or too long.
    #[error("invalid lock id: {0}")]
    InvalidId(String),
    /// This locker already holds the lock or is already waiting for it.
    #[error(
        "this locker already holds or is acquiring the lock; unlock it first or use another locker"
    )]
    AlreadyLocked,
    /// `unlock()` was called on a locker that does not hold the lock.
    #[error("this locker does not hold the lock")]
    NotHeld,
    /// The backend does not offer this primitive (a semaphore or an election): use another
    /// backend, or a lock.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Two parties of one semaphore asked for different limits: the limit is part of the
    /// semaphore, and every party must use the same one.
    #[error(
        "semaphore `{id}` is in use with a limit of {theirs}, and this locker asked for {ours}: \
         every party of a semaphore must use the same limit (change it only while nobody holds \
         or waits for it)"
    )]
    LimitMismatch {
        /// The semaphore's id.
        id: String,
        /// The limit this locker asked for.
        ours: u32,
        /// The limit the semaphore is in use with.
        theirs: u32,
    },
    /// The lock was lost before it was released (its session ended, its lease expired, its
    /// record was removed): what was done under it may have overlapped with another holder.
    #[error("the lock was lost before it was released ({0})")]
    Lost(Loss),
    /// The backend failed: transport, authentication, permissions or server errors.
    ///
    /// Its message names the backend only; what went wrong is its [`source`] (and theirs), as
    /// Rust errors do: print the chain (`{:#}` with `anyhow`, or walk
    /// [`std::error::Error::source`]), and downcast a link to the backend's own error type.
    ///
    /// [`source`]: std::error::Error::source
    #[error("{backend} backend failed")]
    #[non_exhaustive]
    Backend {
        /// The backend's scheme, e.g. `etcd`.
        backend: &'static str,
        /// What went wrong underneath.
        #[source]
        source: BoxError,
        /// Whether trying again later may succeed (see [`Error::is_transient`]).
        transient: bool,
    },
}

/// What kind of [`Error`] it is: `Copy + Eq`, to match on or compare, like
/// [`std::io::ErrorKind`].
///
/// ```
/// use std::time::Duration;
/// use lock_core::{Error, ErrorKind};
///
/// assert_eq!(Error::Timeout(Duration::from_secs(1)).kind(), ErrorKind::Timeout);
/// assert_eq!(Error::backend("etcd", "permission denied").kind(), ErrorKind::Backend);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::UnsupportedService`].
    UnsupportedService,
    /// [`Error::InvalidConnectionString`].
    InvalidConnectionString,
    /// [`Error::Canceled`].
    Canceled,
    /// [`Error::AlreadyClosed`].
    AlreadyClosed,
    /// [`Error::Timeout`].
    Timeout,
    /// [`Error::InvalidConfig`].
    InvalidConfig,
    /// [`Error::InvalidId`].
    InvalidId,
    /// [`Error::AlreadyLocked`].
    AlreadyLocked,
    /// [`Error::NotHeld`].
    NotHeld,
    /// [`Error::Unsupported`].
    Unsupported,
    /// [`Error::LimitMismatch`].
    LimitMismatch,
    /// [`Error::Lost`].
    Lost,
    /// [`Error::Backend`].
    Backend,
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::UnsupportedService { .. } => ErrorKind::UnsupportedService,
            Error::InvalidConnectionString(_) => ErrorKind::InvalidConnectionString,
            Error::Canceled(_) => ErrorKind::Canceled,
            Error::AlreadyClosed(_) => ErrorKind::AlreadyClosed,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::InvalidConfig(_) => ErrorKind::InvalidConfig,
            Error::InvalidId(_) => ErrorKind::InvalidId,
            Error::AlreadyLocked => ErrorKind::AlreadyLocked,
            Error::NotHeld => ErrorKind::NotHeld,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::LimitMismatch { .. } => ErrorKind::LimitMismatch,
            Error::Lost(_) => ErrorKind::Lost,
            Error::Backend { .. } => ErrorKind::Backend,
        }
    }

    /// Wraps a backend's own error, keeping the backend's name: a failure that trying again
    /// will not fix (credentials refused, permission denied, a request the server rejects).
    /// See [`Error::backend_transient`] for the others.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
            transient: false,
        }
    }

    /// Wraps a backend's own error that trying again later may fix: the server could not be
    /// reached or did not answer in time, a connection broke, the cluster has no leader for a
    /// moment. [`Error::is_transient`] is `true` for it.
    pub fn backend_transient(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
            transient: true,
        }
    }

    /// Whether retrying the same call later may succeed: a [`Timeout`](Error::Timeout), or a
    /// backend failure its backend marked transient ([`Error::backend_transient`]: the server
    /// unreachable or slow, a broken connection). `false` for everything else, including
    /// backend failures such as refused credentials, which retrying repeats.
    ///
    /// ```
    /// use std::error::Error as _;
    /// use lock_core::Error;
    ///
    /// let unreachable = Error::backend_transient("etcd", "no answer within 5s");
    /// let refused = Error::backend("etcd", "authentication failed");
    /// assert!(unreachable.is_transient());
    /// assert!(!refused.is_transient());
    /// // The message names the backend; the source says what went wrong, once.
    /// assert_eq!(unreachable.to_string(), "etcd backend failed");
    /// assert_eq!(unreachable.source().unwrap().to_string(), "no answer within 5s");
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout(_) => true,
            Error::Backend { transient, .. } => *transient,
            _ => false,
        }
    }

    /// The message and every source under it, joined by `: ` (what `anyhow` prints for
    /// `{:#}`), for a log line or a command-line tool's last words.
    ///
    /// ```
    /// use lock_core::Error;
    ///
    /// let e = Error::backend("etcd", "authentication failed");
    /// assert_eq!(e.report().to_string(), "etcd backend failed: authentication failed");
    /// ```
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

/// An [`Error`] with its sources, as [`Error::report`] shows it.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(&'a Error);

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
