//! Connection strings: `scheme:body[?option=value&…]`.

use std::fmt;
use std::time::Duration;

use crate::secret::{is_secret_option, redact_endpoint, shown, Secret, REDACTED};
use crate::{Error, Result};

/// A parsed connection string, `scheme:body[?option=value&…]`.
///
/// The scheme picks the backend; the body (for example a list of endpoints) and the options
/// are the backend's to interpret. Option values are percent-decoded (`+` is a space, as in
/// forms) and must then be UTF-8. The values of secret options (see
/// [`is_secret_option`](crate::backend::is_secret_option)) never appear in `Debug` output or in
/// errors, and neither does any option after one (it may be the rest of a password that holds
/// a raw `&`).
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
    options: Vec<Opt>,
}

/// One option of a connection string.
#[derive(Clone, PartialEq, Eq)]
struct Opt {
    key: String,
    value: String,
    /// It comes after a secret option: it may be the rest of a password that holds a raw `&`,
    /// so messages never show it.
    follows_secret: bool,
}

/// How messages refer to an option that follows a secret one.
const SECRET_TAIL: &str =
    "after a secret option (not shown: if the password holds `&`, write it as %26)";

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
        let mut options: Vec<Opt> = Vec::new();
        let mut after_secret = false;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let follows_secret = after_secret;
            let key = decode(key).map_err(|_| {
                invalid(match follows_secret {
                    true => format!("the name of an option {SECRET_TAIL} is not valid UTF-8"),
                    false => "the name of an option is not valid UTF-8 once percent-decoded".into(),
                })
            })?;
            if key.is_empty() {
                return Err(invalid("an option has an empty name"));
            }
            let name = match follows_secret {
                true => SECRET_TAIL.to_owned(),
                false => format!("`{key}`"),
            };
            let value = decode(value).map_err(|lossy| {
                let value = match follows_secret {
                    true => "the value".to_owned(),
                    false => shown(&key, &lossy),
                };
                invalid(format!(
                    "option {name}: {value} is not valid UTF-8 once percent-decoded"
                ))
            })?;
            if options.iter().any(|o| o.key == key) {
                return Err(invalid(format!("option {name} is given more than once")));
            }
            after_secret |= is_secret_option(&key);
            options.push(Opt {
                key,
                value,
                follows_secret,
            });
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
            .map(|o| match (o.follows_secret, is_secret_option(&o.key)) {
                (true, _) => (REDACTED, REDACTED),
                (false, true) => (o.key.as_str(), REDACTED),
                (false, false) => (o.key.as_str(), o.value.as_str()),
            })
            .collect();
        let body: Vec<String> = self.body.split(',').map(redact_endpoint).collect();
        f.debug_struct("ConnectionString")
            .field("scheme", &self.scheme)
            .field("body", &body.join(","))
            .field("options", &options)
            .finish()
    }
}

/// The options of a [`ConnectionString`], taken one at a time by the backend that parses them.
/// [`finish`](Options::finish) rejects whatever was not taken.
pub struct Options {
    remaining: Vec<Opt>,
    known: Vec<&'static str>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("remaining", &self.remaining.len())
            .field("known", &self.known)
            .finish()
    }
}

impl Options {
    /// Takes option `key` as a string.
    pub fn string(&mut self, key: &'static str) -> Option<String> {
        self.take(key).map(|(value, _)| value)
    }

    /// Takes option `key`: its value, and how a message may show it.
    fn take(&mut self, key: &'static str) -> Option<(String, Shown)> {
        self.known.push(key);
        let at = self.remaining.iter().position(|o| o.key == key)?;
        let o = self.remaining.swap_remove(at);
        let shown = match o.follows_secret {
            true => Shown::Hidden,
            false => Shown::As(key),
        };
        Some((o.value, shown))
    }

    /// Takes option `key` as a [`Secret`] (a password): never shown in errors or `Debug`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionString`] when the value is empty.
    pub fn secret(&mut self, key: &'static str) -> Result<Option<Secret>> {
        self.string(key)
            .map(|v| {
                Secret::from_bytes(&format!("option `{key}`"), v.into_bytes())
                    .map_err(|e| invalid(e.to_string()))
            })
            .transpose()
    }

    /// Takes option `key` as a duration in humantime form: `500ms`, `2s`, `1m 30s`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionString`] when the value is not a duration.
    pub fn duration(&mut self, key: &'static str) -> Result<Option<Duration>> {
        self.take(key)
            .map(|(v, how)| {
                humantime::parse_duration(v.trim()).map_err(|e| {
                    invalid(format!(
                        "option `{key}`: {} is not a duration like `2s` or `500ms`{}",
                        how.value(&v),
                        how.detail(&e)
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
        self.take(key)
            .map(|(v, how)| match v.to_ascii_lowercase().as_str() {
                "" | "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(invalid(format!(
                    "option `{key}`: {} is not a boolean (use true or false)",
                    how.value(&v)
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
            .map(|o| match o.follows_secret {
                true => SECRET_TAIL.to_owned(),
                false => format!("`{}`", o.key),
            })
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

/// A connection string as a message may show it: credentials in its endpoints and the values
/// of its secret options replaced by `<redacted>`, and everything after a secret option too (a
/// password that holds a raw `&` runs on into what looks like further options).
///
/// # Examples
///
/// ```
/// use lock_core::backend::redact_uri;
///
/// assert_eq!(
///     redact_uri("etcd:http://a:2379?username=app&password=x&y&dial-timeout=2s"),
///     "etcd:http://a:2379?username=app&password=<redacted>",
/// );
/// assert_eq!(redact_uri("etcd:http://app:pw@a:2379"), "etcd:http://<redacted>@a:2379");
/// ```
pub fn redact_uri(uri: &str) -> String {
    let (head, query) = match uri.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (uri, None),
    };
    let (scheme, body) = match head.split_once(':') {
        Some((scheme, body)) => (format!("{scheme}:"), body),
        None => (String::new(), head),
    };
    let body: Vec<String> = body.split(',').map(redact_endpoint).collect();
    let mut out = format!("{scheme}{}", body.join(","));
    if let Some(query) = query {
        out.push('?');
        let mut options = Vec::new();
        for option in query.split('&') {
            let key = option.split_once('=').map_or(option, |(k, _)| k);
            if is_secret_option(&decode_lossy(key)) {
                options.push(format!("{key}={REDACTED}"));
                break;
            }
            options.push(option.to_owned());
        }
        out.push_str(&options.join("&"));
    }
    out
}

/// How a message may show an option's value.
#[derive(Clone, Copy)]
enum Shown {
    /// As [`shown`] decides for this option's name.
    As(&'static str),
    /// Not at all: the option follows a secret one.
    Hidden,
}

impl Shown {
    fn value(self, value: &str) -> String {
        match self {
            Shown::As(key) => shown(key, value),
            Shown::Hidden => "the value".to_owned(),
        }
    }

    /// A parser's own words about the value, which may quote it.
    fn detail(self, error: &dyn std::fmt::Display) -> String {
        match self {
            Shown::As(key) if !is_secret_option(key) => format!(" ({error})"),
            _ => String::new(),
        }
    }
}

/// Decodes one part of a query as forms do: `+` is a space and `%XX` a byte (a `%` not followed
/// by two hex digits stays as it is). `Err` holds a lossy rendering when the bytes are not
/// UTF-8: a password mistyped that way must be refused, not quietly changed.
fn decode(part: &str) -> std::result::Result<String, String> {
    let bytes = decode_bytes(part);
    String::from_utf8(bytes).map_err(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// [`decode`], with invalid UTF-8 replaced.
fn decode_lossy(part: &str) -> String {
    String::from_utf8_lossy(&decode_bytes(part)).into_owned()
}

fn decode_bytes(part: &str) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidConnectionString(reason.into())
}
