//! Lock ids.

use crate::{Error, Result};

/// The longest accepted lock id, in bytes of UTF-8.
pub const MAX_ID_LEN: usize = 1024;

/// Checks that `id` is a usable lock id: non-empty and at most [`MAX_ID_LEN`] bytes.
///
/// Any other UTF-8 is fine: slashes, spaces, control characters and unicode included.
///
/// # Errors
///
/// [`Error::InvalidId`] saying what is wrong.
///
/// # Examples
///
/// ```
/// assert!(lock_core::backend::validate_id("jobs/nightly report ✓").is_ok());
/// assert!(lock_core::backend::validate_id("").is_err());
/// ```
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidId("the id is empty".into()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::InvalidId(format!(
            "the id is {} bytes long; the maximum is {MAX_ID_LEN}",
            id.len()
        )));
    }
    Ok(())
}
