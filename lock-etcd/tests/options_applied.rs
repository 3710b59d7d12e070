//! The connection-string options do what they say against a real cluster.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use lock_core::{Error, SessionConfig};
use lock_etcd::{EtcdConfig, EtcdService};
use lock_tools::etcd::ClusterSpec;

#[tokio::test]
async fn dial_timeout_bounds_opening_an_unresponsive_cluster() {
    // Accepts TCP connections (the kernel's backlog) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let start = Instant::now();
    let config = EtcdConfig::from_uri(&format!("etcd:http://{addr}?dial-timeout=500ms")).unwrap();
    let err = EtcdService::connect(config).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert!(
        err.report().to_string().contains("500ms"),
        "the error says how long it waited: {err}"
    );
}

#[tokio::test]
async fn prefix_namespaces_the_keys() {
    let Some(endpoints) = common::shared("prefix_namespaces_the_keys") else {
        return;
    };
    let prefix = common::unique_prefix("ns");
    let uri = format!("etcd:{endpoints}?prefix={prefix}");
    let service = EtcdService::connect(EtcdConfig::from_uri(&uri).unwrap())
        .await
        .unwrap();
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut locker = session.new_locker("a/b c");
    let held = locker.lock().await.unwrap();
    let mut raw = common::raw(&endpoints).await;
    let (keys, records) = common::lock_keys(&mut raw, &prefix).await;
    assert_eq!((keys.len(), records.len()), (1, 1));
    let key = keys[0].key_str().unwrap();
    assert!(key.starts_with(&format!("{prefix}a%2Fb c/")), "{key}");
    let record = [prefix.as_bytes(), b"a%2Fb c.\xff"].concat();
    assert!(
        records[0].key().starts_with(&record),
        "the record sits right below the id's range: {:?}",
        String::from_utf8_lossy(records[0].key())
    );
    assert_eq!(
        keys[0].create_revision() as u64,
        held.fencing_token(),
        "the token is the create revision"
    );
    service.close().await.unwrap();
}

#[tokio::test]
async fn reject_old_cluster_accepts_a_current_cluster_and_keep_alive_options_apply() {
    let Some(endpoints) = common::shared("reject_old_cluster_accepts_a_current_cluster") else {
        return;
    };
    use lock_etcd as _;
    let uri = format!("etcd:{endpoints}?reject-old-cluster=true&dial-keep-alive-time=1s&dial-keep-alive-timeout=1s");
    let service = lock_core::new(&uri).await.unwrap();
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut locker = session.new_locker(&common::unique_prefix("old"));
    let _held = locker.lock().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await; // idle across several pings
    locker.unlock().await.unwrap();
    service.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_sync_picks_up_members_not_in_the_connection_string() {
    let Some(mut cluster) =
        common::own_cluster("auto_sync_picks_up_members", ClusterSpec::default())
    else {
        return;
    };
    let urls = cluster.urls();
    let uri = format!("etcd:{}?auto-sync-interval=200ms", urls[0]);
    let service = EtcdService::connect(EtcdConfig::from_uri(&uri).unwrap())
        .await
        .unwrap();
    assert_eq!(service.endpoints(), [urls[0].clone()]);
    let all_known = common::eventually(Duration::from_secs(10), || {
        let known = service.endpoints();
        urls.iter().all(|u| known.contains(u))
    })
    .await;
    assert!(
        all_known,
        "auto-sync did not pick up the members: {:?}",
        service.endpoints()
    );
    // The only member named in the connection string dies: the others carry on.
    cluster.kill(0);
    let start = Instant::now();
    loop {
        let attempt = async {
            let session = service
                .new_session(SessionConfig::new(Duration::from_secs(5)))
                .await?;
            let mut locker = session.new_locker("after-sync");
            let _held = locker.lock().await?;
            locker.unlock().await?;
            session.close().await
        };
        match tokio::time::timeout(Duration::from_secs(6), attempt).await {
            Ok(Ok(())) => break,
            _ if start.elapsed() > Duration::from_secs(30) => {
                panic!("no lock through the synced members")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
