//! Session configuration.

use std::time::Duration;

use crate::{Error, Result};

/// The configuration of a session: how long `lock()` may wait, and how long the session (and
/// so every lock it holds) survives without a successful keep-alive.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lock_core::SessionConfig;
///
/// let config = SessionConfig::new(Duration::from_secs(10)).with_timeout(Duration::from_secs(30));
/// assert_eq!(config.ttl, Duration::from_secs(10));
/// assert_eq!(config.timeout, Some(Duration::from_secs(30)));
/// ```
///
/// Built with [`new`](SessionConfig::new) (or [`default`](SessionConfig::default)) and the
/// `with_*` methods, never as a struct literal, so that a later option is not a breaking
/// change:
///
/// ```compile_fail
/// # use std::time::Duration;
/// let config = lock_core::SessionConfig { ttl: Duration::from_secs(10), timeout: None };
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SessionConfig {
    /// How long `lock()` waits before failing with [`Error::Timeout`]; `None` waits until the
    /// lock is granted or the session ends.
    pub timeout: Option<Duration>,
    /// The time-to-live of the session. A distributed backend must keep the session alive
    /// within this interval, and reports every lock of the session lost when it cannot.
    pub ttl: Duration,
}

impl SessionConfig {
    /// The TTL of [`SessionConfig::default`]: 10 seconds.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

    /// A configuration with the given TTL and no lock timeout.
    pub const fn new(ttl: Duration) -> Self {
        SessionConfig { timeout: None, ttl }
    }

    /// Sets the time `lock()` may wait.
    #[must_use]
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the TTL.
    #[must_use]
    pub const fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Checks what every backend requires: a non-zero TTL and, when set, a non-zero timeout.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.ttl.is_zero() {
            return Err(Error::InvalidConfig("ttl must be greater than zero".into()));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidConfig(
                "timeout must be greater than zero; use None to wait without limit".into(),
            ));
        }
        Ok(())
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig::new(Self::DEFAULT_TTL)
    }
}
