//! The outcome of a conformance check.

use std::fmt;
use std::panic::Location;

/// A violated property, with a message saying what was expected and what happened, and where
/// in the suite it was found (the line of the check that failed, shown with the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    message: String,
    at: &'static Location<'static>,
}

impl Failure {
    /// A failure with the given message, found where this is called.
    #[track_caller]
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            at: Location::caller(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where in the suite the failure was found: the check's line (or its helper's).
    pub fn location(&self) -> &'static Location<'static> {
        self.at
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (found at {})", self.message, self.at)
    }
}

impl std::error::Error for Failure {}

impl From<lock_core::Error> for Failure {
    /// An error the check did not expect, found where `?` returned it.
    #[track_caller]
    fn from(e: lock_core::Error) -> Self {
        Failure::new(format!("unexpected error: {}", e.report()))
    }
}

/// What every conformance function returns.
pub type Outcome = Result<(), Failure>;

/// Fails the current conformance function with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::Failure::new(format!($($msg)+)));
        }
    };
}
