//! The outcome of a conformance check.

use std::fmt;

/// A violated property, with a message saying what was expected and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(String);

impl Failure {
    /// A failure with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        Failure(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

impl From<lock_core::Error> for Failure {
    fn from(e: lock_core::Error) -> Self {
        Failure(format!("unexpected error: {}", e.report()))
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
