//! What is secret, and how it is shown: the one place that decides both. Connection-string
//! errors, `Debug` output of configurations, and the `lock` command's messages all go through
//! here, so a password never reaches a terminal, a log line or a panic message.

use std::fmt;

/// What is printed in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// A secret, such as a password: its `Debug` output is `<redacted>`, it has no `Display`, and
/// its value is read only through [`Secret::expose`].
///
/// # Examples
///
/// ```
/// use lock_core::backend::Secret;
///
/// let password = Secret::from_bytes("LOCK_PASSWORD", b"s3cret-Pw".to_vec()).unwrap();
/// assert_eq!(format!("{password:?}"), "<redacted>");
/// assert_eq!(password.expose(), "s3cret-Pw");
///
/// // Refused input is named, never shown.
/// let err = Secret::from_bytes("LOCK_PASSWORD", b"\xffs3cret-Pw".to_vec()).unwrap_err();
/// assert!(err.to_string().contains("LOCK_PASSWORD is not valid UTF-8"));
/// assert!(!err.to_string().contains("s3cret"));
/// assert!(Secret::from_bytes("LOCK_PASSWORD", Vec::new()).is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret from a string known to be one (for example, read by your own code).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret in `bytes`, which must be non-empty UTF-8; `what` names where it came from
    /// (`LOCK_PASSWORD`, `the password file /etc/lock/pw`, ``option `password` ``).
    ///
    /// # Errors
    ///
    /// [`InvalidSecret`], naming `what` and saying what is wrong with it, never its value.
    pub fn from_bytes(what: &str, bytes: Vec<u8>) -> Result<Self, InvalidSecret> {
        let invalid = |why| InvalidSecret {
            what: what.to_owned(),
            why,
        };
        if bytes.is_empty() {
            return Err(invalid("is empty"));
        }
        String::from_utf8(bytes)
            .map(Secret)
            .map_err(|_| invalid("is not valid UTF-8 (it must be; its value is not shown)"))
    }

    /// The secret itself, to hand to whatever needs it (never to a message).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Bytes that cannot be a [`Secret`]; the message names where they came from and why, never
/// what they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {why}")]
pub struct InvalidSecret {
    what: String,
    why: &'static str,
}

/// Whether the value of option `key` is a secret that must never be printed: `password`, or
/// any name ending in `password`, `secret` or `token`.
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|s| key.ends_with(s))
}

/// An option's value as a message shows it: quoted, or `the value` when the option is secret.
pub(crate) fn shown(key: &str, value: &str) -> String {
    if is_secret_option(key) {
        "the value".to_owned()
    } else {
        format!("`{value}`")
    }
}

/// `endpoint` as a message may show it: credentials written into it (`user:password@host`)
/// replaced by `<redacted>`.
///
/// # Examples
///
/// ```
/// use lock_core::backend::redact_endpoint;
///
/// assert_eq!(redact_endpoint("http://app:pw@10.0.0.1:2379"), "http://<redacted>@10.0.0.1:2379");
/// assert_eq!(redact_endpoint("10.0.0.1:2379"), "10.0.0.1:2379");
/// ```
pub fn redact_endpoint(endpoint: &str) -> String {
    let (scheme, rest) = match endpoint.find("://") {
        Some(at) => endpoint.split_at(at + 3),
        None => ("", endpoint),
    };
    // Credentials end at the last `@` (a password may hold `@` itself).
    match rest.rfind('@') {
        Some(at) => format!("{scheme}{REDACTED}{}", &rest[at..]),
        None => endpoint.to_owned(),
    }
}
