//! A cluster with authentication: the right password works, a wrong one and a user without
//! permission on the lock prefix fail clearly, and the password never appears in errors.

mod common;

use std::time::Duration;

use lock_core::{Error, SessionConfig};
use lock_tools::etcd::ClusterSpec;

const PREFIX: &str = "auth-locks/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_permissions() {
    let spec = ClusterSpec {
        nodes: 1,
        ..ClusterSpec::default()
    };
    let Some(cluster) = common::own_cluster("authentication_and_permissions", spec) else {
        return;
    };
    let ctl = |args: &[&str]| {
        cluster
            .etcdctl(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    };
    ctl(&["user", "add", "root", "--new-user-password=r00t-pw"]);
    ctl(&["role", "add", "locker"]);
    ctl(&[
        "role",
        "grant-permission",
        "locker",
        "--prefix=true",
        "readwrite",
        PREFIX,
    ]);
    ctl(&["user", "add", "app", "--new-user-password=app-secret-77"]);
    ctl(&["user", "grant-role", "app", "locker"]);
    ctl(&[
        "user",
        "add",
        "nobody",
        "--new-user-password=nobody-secret-88",
    ]);
    ctl(&["auth", "enable"]);
    use lock_etcd as _;
    let base = format!("etcd:{}?prefix={PREFIX}", cluster.endpoints());

    // The right password: locks work.
    let service = lock_core::new(&format!("{base}&username=app&password=app-secret-77"))
        .await
        .unwrap();
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut locker = session.new_locker("job");
    let held = locker.lock().await.unwrap();
    assert!(!held.is_lost());
    locker.unlock().await.unwrap();
    service.close().await.unwrap();

    // A wrong password: a clear error, without the password.
    let err = lock_core::new(&format!("{base}&username=app&password=wrong-pw-55"))
        .await
        .unwrap_err();
    let text = err.report().to_string();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(
        !err.is_transient(),
        "refused credentials are not transient: {err:?}"
    );
    assert!(
        text.contains("authentication failed") && text.contains("username and password"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-pw-55") && !format!("{err:?}").contains("wrong-pw-55"),
        "{text}"
    );

    // A user whose role does not cover the prefix: a clear error naming permissions.
    let err = lock_core::new(&format!("{base}&username=nobody&password=nobody-secret-88"))
        .await
        .unwrap_err();
    let text = err.report().to_string();
    assert!(
        text.contains("permission denied") && text.contains("lock prefix"),
        "{text}"
    );
    assert!(
        !err.is_transient(),
        "a denied permission is not transient: {err:?}"
    );
    assert!(!text.contains("nobody-secret-88"), "{text}");

    // No credentials at all on an auth-enabled cluster.
    let err = lock_core::new(&base).await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
}
