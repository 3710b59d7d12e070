//! The connection string: every option parsed, every invalid form rejected clearly, and no
//! input — however mangled — makes the parser panic or print the password.

use std::path::PathBuf;
use std::time::Duration;

use lock_core::Error;
use lock_etcd::{EtcdConfig, DEFAULT_DIAL_TIMEOUT, DEFAULT_PREFIX, DEFAULT_REQUEST_TIMEOUT};

fn invalid(uri: &str) -> String {
    match EtcdConfig::from_uri(uri) {
        Err(Error::InvalidConnectionString(reason)) => reason,
        other => panic!("{uri}: expected InvalidConnectionString, got {other:?}"),
    }
}

#[test]
fn every_option_is_parsed() {
    let c = EtcdConfig::from_uri(
        "etcd:https://a:1,https://b:2?auto-sync-interval=90s&dial-timeout=250ms&dial-keep-alive-time=30s\
         &dial-keep-alive-timeout=5s&username=u&password=p&reject-old-cluster=true&prefix=x/y/\
         &ca-file=/ca.pem&cert-file=/c.pem&key-file=/k.pem&request-timeout=1m",
    )
    .unwrap();
    assert_eq!(c.endpoints, ["https://a:1", "https://b:2"]);
    assert_eq!(c.auto_sync_interval, Some(Duration::from_secs(90)));
    assert_eq!(c.dial_timeout, Duration::from_millis(250));
    assert_eq!(c.dial_keep_alive_time, Some(Duration::from_secs(30)));
    assert_eq!(c.dial_keep_alive_timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        (c.username.as_deref(), c.password().map(|p| p.expose())),
        (Some("u"), Some("p"))
    );
    assert!(c.reject_old_cluster);
    assert_eq!(c.prefix, "x/y/");
    let tls = c.tls.unwrap();
    assert_eq!(tls.ca_file, Some(PathBuf::from("/ca.pem")));
    assert_eq!(tls.cert_file, Some(PathBuf::from("/c.pem")));
    assert_eq!(tls.key_file, Some(PathBuf::from("/k.pem")));
    assert_eq!(c.request_timeout, Duration::from_secs(60));
}

#[test]
fn defaults_match_the_documentation() {
    let c = EtcdConfig::from_uri("etcd:http://127.0.0.1:2379").unwrap();
    assert_eq!(DEFAULT_DIAL_TIMEOUT, Duration::from_secs(3));
    assert_eq!(c.dial_timeout, DEFAULT_DIAL_TIMEOUT);
    assert_eq!(c.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    assert_eq!(c.prefix, DEFAULT_PREFIX);
    assert_eq!(lock_etcd::SERVICE_ETCD, "etcd");
    assert!(
        !c.reject_old_cluster
            && c.auto_sync_interval.is_none()
            && c.tls.is_none()
            && c.username.is_none()
    );
}

#[test]
fn booleans_and_endpoint_forms() {
    for (v, want) in [
        ("true", true),
        ("1", true),
        ("", true),
        ("false", false),
        ("no", false),
    ] {
        let c = EtcdConfig::from_uri(&format!("etcd:http://h:1?reject-old-cluster={v}")).unwrap();
        assert_eq!(c.reject_old_cluster, want, "{v}");
    }
    let c = EtcdConfig::from_uri("etcd:h:1, HTTP://[::1]:2/,127.0.0.1:3").unwrap();
    assert_eq!(
        c.endpoints,
        ["http://h:1", "http://[::1]:2", "http://127.0.0.1:3"]
    );
    let c = EtcdConfig::from_uri("etcd:h:1?ca-file=/ca.pem").unwrap();
    assert_eq!(
        c.endpoints,
        ["https://h:1"],
        "TLS files make bare endpoints https"
    );
}

#[test]
fn invalid_forms_are_rejected_with_the_reason() {
    let cases = [
        ("etcd:", "no endpoints"),
        ("etcd:?dial-timeout=1s", "no endpoints"),
        ("etcd:http://a:1,", "empty"),
        ("etcd:http://a:1,,http://b:2", "empty"),
        ("etcd:http://a", "no port"),
        ("etcd:http://a:0", "not a port"),
        ("etcd:http://a:99999", "not a port"),
        ("etcd:http://a:x", "not a port"),
        ("etcd:ftp://a:1", "not http or https"),
        ("etcd:http://a:1/path", "nothing after"),
        ("etcd:http://user@a:1", "has credentials in it"),
        ("etcd:http://user:pw@a:1", "`http://<redacted>@a:1`"),
        ("etcd:ftp://user:pw@a:1", "<redacted>@a:1"),
        (
            "etcd:http://a:1?username=u&password=",
            "option `password` is empty",
        ),
        ("etcd:http://a:1?username=u&password=%FF", "not valid UTF-8"),
        ("etcd:http://:1", "no valid host"),
        ("etcd:http://a:1,https://b:2", "mix"),
        ("etcd:http://a:1?ca-file=/x", "https"),
        ("etcd:https://a:1?cert-file=/x", "go together"),
        ("etcd:http://a:1?dial-timeout=soon", "not a duration"),
        ("etcd:http://a:1?dial-timeout=0s", "greater than zero"),
        ("etcd:http://a:1?request-timeout=-1s", "not a duration"),
        ("etcd:http://a:1?reject-old-cluster=maybe", "not a boolean"),
        ("etcd:http://a:1?password=p", "needs `username`"),
        ("etcd:http://a:1?username=", "empty"),
        (
            "etcd:http://a:1?dial-timeout=1s&dial-timeout=2s",
            "more than once",
        ),
        ("etcd:http://a:1?bogus=1", "unknown option `bogus`"),
    ];
    for (uri, says) in cases {
        let reason = invalid(uri);
        assert!(
            reason.contains(says),
            "{uri}: `{reason}` should say `{says}`"
        );
    }
    let reason = invalid("etcd:http://a:1?bogus=1");
    assert!(
        reason.contains("dial-timeout") && reason.contains("prefix"),
        "lists the known options: {reason}"
    );
}

#[tokio::test]
async fn invalid_strings_fail_through_the_registry_too() {
    use lock_etcd as _;
    let err = lock_core::new("etcd:http://a:1?nope=1").await.unwrap_err();
    assert!(matches!(err, Error::InvalidConnectionString(_)), "{err:?}");
}

/// A tiny deterministic generator, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[test]
fn mangled_strings_never_panic_nor_echo_the_password() {
    const SECRET: &str = "Pa55w0rd-Zq9";
    let pieces = [
        "etcd:",
        "http://",
        "https://",
        "a",
        "127.0.0.1",
        ":",
        "2379",
        ",",
        "?",
        "&",
        "=",
        "%",
        "%2",
        "%26",
        "/",
        "[",
        "]",
        "::1",
        " ",
        "\u{0}",
        "ü",
        "dial-timeout",
        "auto-sync-interval",
        "username",
        "password",
        "prefix",
        "ca-file",
        "reject-old-cluster",
        "2s",
        "0s",
        "-1",
        "true",
        "x",
        "99999999999999999999s",
        "\n",
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..20_000 {
        let mut uri = String::from("etcd:");
        for _ in 0..(rng.next() % 12) {
            uri.push_str(rng.pick(&pieces));
        }
        uri.push_str(&format!("?username=u&password={SECRET}"));
        for _ in 0..(rng.next() % 6) {
            uri.push_str(rng.pick(&pieces));
        }
        let outcome = std::panic::catch_unwind(|| EtcdConfig::from_uri(&uri));
        let result = outcome.unwrap_or_else(|_| panic!("the parser panicked on {uri:?}"));
        let shown = match &result {
            Ok(config) => format!("{config:?}"),
            Err(e) => format!("{e} {e:?}"),
        };
        assert!(
            !shown.contains(SECRET),
            "the password leaked for {uri:?}: {shown}"
        );
    }
}
