//! The etcd connection string: `etcd:<endpoint>[,<endpoint>…][?option=value&…]`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lock_core::backend::{redact_endpoint, ConnectionString, Options, Secret};
use lock_core::{Error, Result};

use crate::delay::LockDelay;

/// How long opening a service waits for the cluster to answer, as in etcd's Go client.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take before it fails.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The key namespace of locks when the connection string names none.
pub const DEFAULT_PREFIX: &str = "lock/";
/// The oldest etcd release `reject-old-cluster=true` accepts.
pub const OLDEST_SUPPORTED_VERSION: (u32, u32) = (3, 4);

/// Client TLS material, from the `ca-file`, `cert-file` and `key-file` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA that signed the servers' certificates.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate, for clusters that require one.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's key.
    pub key_file: Option<PathBuf>,
}

/// A parsed etcd connection string.
///
/// `Debug` never shows the password.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lock_etcd::EtcdConfig;
///
/// let c = EtcdConfig::from_uri("etcd:http://10.0.0.1:2379,http://10.0.0.2:2379?dial-timeout=2s").unwrap();
/// assert_eq!(c.endpoints, ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
/// assert_eq!(c.dial_timeout, Duration::from_secs(2));
/// assert_eq!(c.prefix, "lock/");
/// assert_eq!(c.lock_delay, lock_etcd::LockDelay::Auto);
///
/// // Every option of etcd's Go client, plus a key prefix, TLS files and a request timeout:
/// let c = EtcdConfig::from_uri(
///     "etcd:https://etcd.internal:2379?auto-sync-interval=1m&dial-keep-alive-time=30s\
///      &dial-keep-alive-timeout=10s&username=app&password=s%26cret&reject-old-cluster=true\
///      &prefix=jobs/locks/&ca-file=/etc/etcd/ca.pem&cert-file=/etc/etcd/me.pem\
///      &key-file=/etc/etcd/me-key.pem&request-timeout=2s&lock-delay=5s",
/// ).unwrap();
/// assert_eq!(c.lock_delay, lock_etcd::LockDelay::Fixed(Duration::from_secs(5)));
/// assert_eq!(c.username.as_deref(), Some("app"));
/// assert!(!format!("{c:?}").contains("s&cret"));
///
/// // Endpoints without a scheme are http (https when TLS files are given):
/// let c = EtcdConfig::from_uri("etcd:127.0.0.1:2379").unwrap();
/// assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
///
/// assert!(EtcdConfig::from_uri("etcd:http://a:2379?dial-timeout=soon").is_err());
/// assert!(EtcdConfig::from_uri("etcd:?dial-timeout=2s").is_err());
/// ```
///
/// Not built as a struct literal (a later option would break it): parse a connection string
/// and change fields after.
///
/// ```compile_fail
/// let config = lock_etcd::EtcdConfig { endpoints: vec![], ..lock_etcd::EtcdConfig::from_uri("etcd:http://a:2379").unwrap() };
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// Namespace of the lock keys (`prefix`, default [`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// Refresh the endpoints from the cluster's member list this often (`auto-sync-interval`).
    pub auto_sync_interval: Option<Duration>,
    /// How long opening the service waits for the cluster (`dial-timeout`).
    pub dial_timeout: Duration,
    /// HTTP/2 keep-alive ping interval (`dial-keep-alive-time`); `request-timeout` when not
    /// given.
    pub dial_keep_alive_time: Option<Duration>,
    /// How long a keep-alive ping may go unanswered (`dial-keep-alive-timeout`); twice
    /// `request-timeout` when not given.
    pub dial_keep_alive_timeout: Option<Duration>,
    /// User to authenticate as (`username`).
    pub username: Option<String>,
    password: Option<Secret>,
    /// Refuse clusters older than [`OLDEST_SUPPORTED_VERSION`] (`reject-old-cluster`).
    pub reject_old_cluster: bool,
    /// TLS files; set for `https://` endpoints.
    pub tls: Option<TlsFiles>,
    /// How long one request may take (`request-timeout`).
    pub request_timeout: Duration,
    /// How long a hold of this service that ends without a clean release (its lease revoked
    /// or expired on the server, its key deleted by someone else) keeps the lock from others
    /// (`lock-delay`: `auto`, the default, the session's TTL; a duration; or `0`).
    pub lock_delay: LockDelay,
}

impl EtcdConfig {
    /// Parses `etcd:…`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionString`] naming the problem (never the password).
    pub fn from_uri(uri: &str) -> Result<Self> {
        let cs = ConnectionString::parse(uri)?;
        if cs.scheme() != crate::SERVICE_ETCD {
            return Err(invalid(format!(
                "expected scheme `etcd:`, got `{}:`",
                cs.scheme()
            )));
        }
        EtcdConfig::parse(&cs)
    }

    /// Interprets a parsed connection string.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionString`] naming the problem (never the password).
    pub fn parse(cs: &ConnectionString) -> Result<Self> {
        let mut o = cs.options();
        let tls = TlsFiles {
            ca_file: o.string("ca-file").map(PathBuf::from),
            cert_file: o.string("cert-file").map(PathBuf::from),
            key_file: o.string("key-file").map(PathBuf::from),
        };
        let tls = (tls != TlsFiles::default()).then_some(tls);
        let config = EtcdConfig {
            endpoints: parse_endpoints(cs.body(), tls.is_some())?,
            prefix: o
                .string("prefix")
                .unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
            auto_sync_interval: positive(&mut o, "auto-sync-interval")?,
            dial_timeout: positive(&mut o, "dial-timeout")?.unwrap_or(DEFAULT_DIAL_TIMEOUT),
            dial_keep_alive_time: positive(&mut o, "dial-keep-alive-time")?,
            dial_keep_alive_timeout: positive(&mut o, "dial-keep-alive-timeout")?,
            username: o.string("username"),
            password: o.secret("password")?,
            reject_old_cluster: o.bool("reject-old-cluster")?.unwrap_or(false),
            request_timeout: positive(&mut o, "request-timeout")?
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            lock_delay: o
                .string("lock-delay")
                .map(|v| LockDelay::parse(&v))
                .transpose()?
                .unwrap_or_default(),
            tls,
        };
        o.finish()?;
        config.check()?;
        Ok(config)
    }

    /// The password, if one was given.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// Sets the password (for callers that read it from a file or the environment, with
    /// [`Secret::from_bytes`]).
    pub fn set_password(&mut self, password: Option<Secret>) {
        self.password = password;
    }

    fn check(&self) -> Result<()> {
        if self.username.as_deref() == Some("") {
            return Err(invalid("option `username` is empty"));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(invalid("option `password` needs `username`"));
        }
        let https = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != self.endpoints.len() {
            return Err(invalid(
                "endpoints mix http:// and https://; use one scheme for all",
            ));
        }
        if let Some(tls) = &self.tls {
            if https == 0 {
                return Err(invalid(
                    "TLS files are given but the endpoints are http://; use https://",
                ));
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(invalid("`cert-file` and `key-file` go together"));
            }
        }
        if self.prefix.contains('\0') {
            return Err(invalid("option `prefix` contains a NUL byte"));
        }
        Ok(())
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("auto_sync_interval", &self.auto_sync_interval)
            .field("dial_timeout", &self.dial_timeout)
            .field("dial_keep_alive_time", &self.dial_keep_alive_time)
            .field("dial_keep_alive_timeout", &self.dial_keep_alive_timeout)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("reject_old_cluster", &self.reject_old_cluster)
            .field("tls", &self.tls)
            .field("request_timeout", &self.request_timeout)
            .field("lock_delay", &self.lock_delay)
            .finish()
    }
}

fn positive(o: &mut Options, key: &'static str) -> Result<Option<Duration>> {
    match o.duration(key)? {
        Some(d) if d.is_zero() => Err(invalid(format!("option `{key}` must be greater than zero"))),
        d => Ok(d),
    }
}

fn parse_endpoints(body: &str, tls: bool) -> Result<Vec<String>> {
    if body.trim().is_empty() {
        return Err(invalid(
            "no endpoints: write `etcd:http://host:2379[,http://host2:2379]`",
        ));
    }
    body.split(',')
        .map(|e| parse_endpoint(e.trim(), tls))
        .collect()
}

fn parse_endpoint(endpoint: &str, tls: bool) -> Result<String> {
    if endpoint.is_empty() {
        return Err(invalid("an endpoint in the list is empty"));
    }
    if endpoint.contains('@') {
        return Err(invalid(format!(
            "endpoint `{}` has credentials in it; give them as the options `username` and \
             `password` instead (the password percent-encoded)",
            redact_endpoint(endpoint)
        )));
    }
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
            (s.to_ascii_lowercase(), rest)
        }
        Some((s, _)) => {
            return Err(invalid(format!(
                "endpoint `{endpoint}`: scheme `{s}` is not http or https"
            )))
        }
        None => ((if tls { "https" } else { "http" }).to_owned(), endpoint),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', ' ']) {
        return Err(invalid(format!(
            "endpoint `{endpoint}` must be scheme://host:port, with nothing after it"
        )));
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(invalid(format!(
            "endpoint `{endpoint}` has no port (etcd listens on 2379 by default)"
        )));
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']') || !host.contains([':', '[', ']']));
    if !host_ok {
        return Err(invalid(format!("endpoint `{endpoint}` has no valid host")));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(format!("{scheme}://{host}:{p}")),
        _ => Err(invalid(format!(
            "endpoint `{endpoint}`: `{port}` is not a port number"
        ))),
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidConnectionString(reason.into())
}
