//! Connection strings and the registry.

use lock_core::backend::{ConnectionString, OpenFuture, Registry, ServiceFactory};
use lock_core::Error;

#[test]
fn parts_and_options() {
    let cs = ConnectionString::parse("My-Scheme+v2:body,with:colons?a=1&b=x%20y&c").unwrap();
    assert_eq!(cs.scheme(), "my-scheme+v2");
    assert_eq!(cs.body(), "body,with:colons");
    let mut o = cs.options();
    assert_eq!(o.string("b").as_deref(), Some("x y"));
    assert_eq!(o.bool("c").unwrap(), Some(true));
    let err = o.finish().unwrap_err().to_string();
    assert!(
        err.contains("unknown option `a`") && err.contains("known options: b, c"),
        "{err}"
    );
}

#[test]
fn secrets_are_redacted() {
    let cs = ConnectionString::parse("x:?user=bob&password=hunter2&api-token=t0k").unwrap();
    let shown = format!("{cs:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("t0k") && shown.contains("bob"),
        "{shown}"
    );
    let err = cs.options().bool("password").unwrap_err().to_string();
    assert!(!err.contains("hunter2"), "{err}");
    let mut options = cs.options();
    assert_eq!(
        options.secret("password").unwrap().unwrap().expose(),
        "hunter2"
    );
    let err = ConnectionString::parse("x:?password=")
        .unwrap()
        .options()
        .secret("password")
        .unwrap_err();
    assert!(
        err.to_string().contains("option `password` is empty"),
        "{err}"
    );
}

/// A password written into the string without percent-encoding its `&` runs on into what
/// looks like another option: that one is never named, in errors or in `Debug`.
#[test]
fn what_follows_a_secret_option_is_never_shown() {
    let cs = ConnectionString::parse("x:?password=hun&ter2-Pw&a=1").unwrap();
    assert!(!format!("{cs:?}").contains("ter2"), "{cs:?}");
    let mut options = cs.options();
    options.secret("password").unwrap();
    options.string("a");
    let err = options.finish().unwrap_err().to_string();
    assert!(!err.contains("ter2") && err.contains("%26"), "{err}");
    let err = ConnectionString::parse("x:?password=a&ter2-Pw&ter2-Pw")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("ter2"), "{err}");
}

/// Percent-decoding must give UTF-8: a password mistyped as `%FF` is refused, not changed.
#[test]
fn percent_decoded_values_must_be_utf8() {
    let err = ConnectionString::parse("x:?password=%FFhunter2")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("option `password`")
            && err.contains("not valid UTF-8")
            && !err.contains("hunter2"),
        "{err}"
    );
    let err = ConnectionString::parse("x:?name=caf%E9")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("option `name`") && err.contains("caf"),
        "{err}"
    );
    // `+` is a space and a `%` without two hex digits stays, as forms decode them.
    let cs = ConnectionString::parse("x:?a=1+2%2B3&b=100%&c=%zz").unwrap();
    let mut o = cs.options();
    assert_eq!(o.string("a").as_deref(), Some("1 2+3"));
    assert_eq!(o.string("b").as_deref(), Some("100%"));
    assert_eq!(o.string("c").as_deref(), Some("%zz"));
}

#[test]
fn bad_strings() {
    for uri in ["", "nocolon", "9x:", "a b:", "x:?a=1&a=2", "x:?=1"] {
        assert!(
            matches!(
                ConnectionString::parse(uri),
                Err(Error::InvalidConnectionString(_))
            ),
            "{uri:?}"
        );
    }
}

fn refuse(_: ConnectionString) -> OpenFuture {
    Box::pin(async { Err(Error::InvalidConfig("refused".into())) })
}

#[tokio::test]
async fn registries_are_values() {
    let r = Registry::new();
    assert!(r.register(ServiceFactory::new("one", refuse)).is_none());
    assert!(
        r.register(ServiceFactory::new("one", refuse)).is_some(),
        "replaces"
    );
    r.register(ServiceFactory::new("two", refuse));
    assert_eq!(r.schemes(), ["one", "two"]);
    assert!(matches!(r.open("one:").await, Err(Error::InvalidConfig(_))));
    match r.open("three:").await {
        Err(Error::UnsupportedService { scheme, available }) => {
            assert_eq!(scheme, "three");
            assert_eq!(available, ["one", "two"]);
        }
        other => panic!("{other:?}"),
    }
}
