//! Every backend enabled by feature is registered, and unknown schemes are reported clearly.

#[test]
fn every_enabled_backend_is_registered() {
    let registered = lock::services();
    for scheme in lock::ENABLED_BACKENDS {
        assert!(
            registered.contains(scheme),
            "`{scheme}` is enabled but not registered: {registered:?}"
        );
    }
    #[cfg(feature = "local")]
    assert!(lock::ENABLED_BACKENDS.contains(&"local"));
    #[cfg(feature = "etcd")]
    assert!(lock::ENABLED_BACKENDS.contains(&"etcd"));
}

#[tokio::test]
async fn unknown_scheme_lists_the_available_ones() {
    let err = lock::new("nosuch:whatever").await.unwrap_err();
    assert!(
        matches!(err, lock::Error::UnsupportedService { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("`nosuch`"), "{text}");
    for scheme in lock::services() {
        assert!(text.contains(scheme), "{text} does not list {scheme}");
    }
    assert_eq!(err.kind(), lock::ErrorKind::UnsupportedService);
    // A backend crate that is a dependency but never referenced is not linked: say so.
    assert!(
        text.contains("use lock_nosuch as _;") && text.contains("Cargo.toml"),
        "{text} does not say how to link a backend crate"
    );
}

#[tokio::test]
async fn malformed_connection_strings_are_rejected() {
    for uri in [
        "",
        "no-colon",
        "1abc:",
        ":x",
        "lo cal:",
        "local:?a=1&a=2",
        "local:?=x",
    ] {
        let err = lock::new(uri).await.unwrap_err();
        assert!(
            matches!(err, lock::Error::InvalidConnectionString(_)),
            "{uri:?}: {err:?}"
        );
    }
}

#[cfg(feature = "local")]
#[tokio::test]
async fn local_rejects_a_body_and_options() {
    for uri in ["local:x", "local:?opt=1"] {
        let err = lock::new(uri).await.unwrap_err();
        assert!(
            matches!(err, lock::Error::InvalidConnectionString(_)),
            "{uri:?}: {err:?}"
        );
    }
    assert!(
        lock::new("LOCAL:").await.is_ok(),
        "schemes are case-insensitive"
    );
}

#[cfg(feature = "local")]
#[tokio::test]
async fn explicit_registration_works_without_inventory() {
    let registry = lock::backend::Registry::new();
    assert!(registry.open("local:").await.is_err());
    lock::local::register(&registry);
    assert_eq!(registry.schemes(), ["local"]);
    registry
        .open("local:")
        .await
        .expect("explicitly registered");
}
