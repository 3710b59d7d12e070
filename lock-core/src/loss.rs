//! Why a hold ended, as the backend saw it: what [`Held::loss`](crate::Held::loss) reports.

use std::fmt;
use std::time::Instant;

/// What ended a hold. Backends record it when they fire a hold's [`Signal`](crate::backend::Signal)
/// with [`Signal::fire_because`](crate::backend::Signal::fire_because); a backend that records nothing
/// gives [`LossCause::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossCause {
    /// Its holder released it: `unlock()`, or the locker was dropped.
    Unlocked,
    /// Its session was closed or dropped by its owner.
    SessionEnded,
    /// Its service was closed.
    ServiceClosed,
    /// The session's deadline passed: the backend could not confirm in time that the session
    /// was still alive (for etcd: no keep-alive acknowledged), so it gave the lock up before
    /// the server could hand it on.
    DeadlinePassed,
    /// The server said the session no longer exists (for etcd: the lease was revoked or had
    /// expired).
    SessionGone,
    /// The lock's record was removed behind the holder's back (for etcd: its key was
    /// deleted by another client or by the server).
    Removed,
    /// The backend did not record why.
    Unknown,
}

impl LossCause {
    /// A short lowercase description.
    pub fn describe(self) -> &'static str {
        match self {
            LossCause::Unlocked => "unlocked",
            LossCause::SessionEnded => "session ended",
            LossCause::ServiceClosed => "service closed",
            LossCause::DeadlinePassed => "session deadline passed",
            LossCause::SessionGone => "session gone on the server",
            LossCause::Removed => "removed by someone else",
            LossCause::Unknown => "cause not recorded",
        }
    }
}

impl fmt::Display for LossCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why and when a hold ended.
///
/// # Examples
///
/// ```
/// # async fn demo(mut locker: lock_core::Locker) -> lock_core::Result<()> {
/// let held = locker.lock().await?;
/// held.lost().await;
/// if let Some(loss) = held.loss() {
///     eprintln!("lost the lock: {loss}"); // e.g. "session deadline passed: …"
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss(Box<Record>);

/// What a [`Loss`] says, boxed: an [`Error`](crate::Error) that carries a loss stays small, so
/// every `Result` of the crate moves little.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    cause: LossCause,
    at: Option<Instant>,
    detail: String,
}

impl Loss {
    /// A loss with `cause` at `at` (`None` if the backend did not note the time). Backends
    /// record theirs with [`Signal::fire_because`](crate::backend::Signal::fire_because).
    pub(crate) fn new(cause: LossCause, at: Option<Instant>, detail: impl Into<String>) -> Self {
        Loss(Box::new(Record {
            cause,
            at,
            detail: detail.into(),
        }))
    }

    /// What ended the hold.
    pub fn cause(&self) -> LossCause {
        self.0.cause
    }

    /// The moment the holder's view changed: from then on [`Held::is_lost`](crate::Held::is_lost)
    /// was `true`. For a passed deadline that is the deadline itself, even if the backend's
    /// task noticed later.
    pub fn at(&self) -> Option<Instant> {
        self.0.at
    }

    /// What the backend knows beyond the cause (revisions, leases, how late it noticed).
    pub fn detail(&self) -> &str {
        &self.0.detail
    }

    /// Adds a sentence to the detail.
    pub(crate) fn explain(&mut self, more: &str) {
        let detail = &mut self.0.detail;
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(more);
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail() {
            "" => write!(f, "{}", self.cause()),
            detail => write!(f, "{}: {detail}", self.cause()),
        }
    }
}
