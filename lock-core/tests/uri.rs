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
    let cs = ConnectionString::parse("x:?password=hunter2&api-token=t0k&user=bob").unwrap();
    let shown = format!("{cs:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("t0k") && shown.contains("bob"),
        "{shown}"
    );
    let err = cs.options().bool("password").unwrap_err().to_string();
    assert!(!err.contains("hunter2"), "{err}");
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
