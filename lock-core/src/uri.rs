//! Connection strings: `scheme:body[?option=value&…]`.

use std::fmt;
use std::time::Duration;

use crate::{Error, Result};

/// A parsed connection string, `scheme:body[?option=value&…]`.
///
/// The scheme picks the backend; the body (for example a list of endpoints) and the options
/// are the backend's to interpret. Option values are percent-decoded. The values of secret
/// options (see [`is_secret_option`]) never appear in `Debug` output or in errors.
///
/// # Examples
///
/// ```
/// use lock_core::backend::ConnectionString;
///
/// let cs = ConnectionString::parse("etcd:http://a:2379,http://b:2379?dial-timeout=2s").unwrap();
/// assert_eq!(cs.scheme(), "etcd");
/// assert_eq!(cs.body(), "http://a:2379,http://b:2379");
/// let mut options = cs.options();
/// assert_eq!(options.duration("dial-timeout").unwrap(), Some(std::time::Duration::from_secs(2)));
/// options.finish().unwrap();
///
/// let local = ConnectionString::parse("local:").unwrap();
/// assert_eq!((local.scheme(), local.body()), ("local", ""));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    scheme: String,
    body: String,
    options: Vec<(String, String)>,
}

impl ConnectionString {
    /// Parses a connection string.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionString`] when the scheme is missing or malformed, or an
    /// option is repeated or has an empty name.
    pub fn parse(uri: &str) -> Result<Self> {
        let Some((scheme, rest)) = uri.split_once(':') else {
            return Err(invalid(
                "missing `scheme:` prefix (for example `local:` or `etcd:http://127.0.0.1:2379`)",
            ));
        };
        let valid_scheme = scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid_scheme {
            return Err(invalid(
                "the scheme must start with a letter and contain only letters, digits, `+`, `-` and `.`",
            ));
        }
        let (body, query) = match rest.split_once('?') {
            Some((body, query)) => (body, Some(query)),
            None => (rest, None),
        };
        let mut options: Vec<(String, String)> = Vec::new();
        for (key, value) in query
            .map(|q| form_urlencoded::parse(q.as_bytes()))
            .into_iter()
            .flatten()
        {
            if key.is_empty() {
                return Err(invalid("an option has an empty name"));
            }
            if options.iter().any(|(k, _)| *k == key) {
                return Err(invalid(format!("option `{key}` is given more than once")));
            }
            options.push((key.into_owned(), value.into_owned()));
        }
        Ok(ConnectionString {
            scheme: scheme.to_ascii_lowercase(),
            body: body.to_owned(),
            options,
        })
    }

    /// The scheme, lowercased: `local`, `etcd`, …
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Everything between `scheme:` and `?`.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The options, to be taken one by one; see [`Options::finish`].
    pub fn options(&self) -> Options {
        Options {
            remaining: self.options.clone(),
            known: Vec::new(),
        }
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: Vec<_> = self
            .options
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_option(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("ConnectionString")
            .field("scheme", &self.scheme)
            .field("body", &self.body)
            .field("options", &options)
            .finish()
    }
}

/// Whether the value of option `key` is a secret that must never be printed: `password`, or
/// any name ending in `password`, `secret` or `token`.
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|s| key.ends_with(s))
}

/// The options of a [`ConnectionString`], taken one at a time by the backend that parses them.
/// [`finish`](Options::finish) rejects whatever was not taken.
#[derive(Debug)]
pub struct Options {
    remaining: Vec<(String, String)>,
    known: Vec<&'static str>,
}

impl Options {
    /// Takes option `key` as a string.
    pub fn string(&mut self, key: &'static str) -> Option<String> {
        self.known.push(key);
        let at = self.remaining.iter().position(|(k, _)| k == key)?;
        Some(self.remaining.swap_remove(at).1)
    }

    /// Takes option `key` as a duration in humantime form: `500ms`, `2s`, `1m 30s`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionString`] when the value is not a duration.
    pub fn duration(&mut self, key: &'static str) -> Result<Option<Duration>> {
        self.string(key)
            .map(|v| {
                humantime::parse_duration(v.trim()).map_err(|e| {
                    invalid(format!(
                        "option `{key}`: {} is not a duration like `2s` or `500ms` ({e})",
                        shown(key, &v)
                    ))
                })
            })
            .transpose()
    }

    /// Takes option `key` as a boolean: `true`/`false`, `1`/`0`, `yes`/`no`, or empty for true.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionString`] when the value is none of those.
    pub fn bool(&mut self, key: &'static str) -> Result<Option<bool>> {
        self.string(key)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "" | "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(invalid(format!(
                    "option `{key}`: {} is not a boolean (use true or false)",
                    shown(key, &v)
                ))),
            })
            .transpose()
    }

    /// Rejects every option that was not taken.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionString`] naming the unknown options and the known ones.
    pub fn finish(self) -> Result<()> {
        if self.remaining.is_empty() {
            return Ok(());
        }
        let unknown: Vec<_> = self
            .remaining
            .iter()
            .map(|(k, _)| format!("`{k}`"))
            .collect();
        let mut known = self.known;
        known.sort_unstable();
        known.dedup();
        let known = if known.is_empty() {
            "this service takes no options".to_owned()
        } else {
            format!("known options: {}", known.join(", "))
        };
        Err(invalid(format!(
            "unknown option {} ({known})",
            unknown.join(", ")
        )))
    }
}

fn shown(key: &str, value: &str) -> String {
    if is_secret_option(key) {
        "the value".to_owned()
    } else {
        format!("`{value}`")
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidConnectionString(reason.into())
}
