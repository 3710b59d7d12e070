//! One member of three stops answering (SIGSTOP: its connections stay open, nothing comes
//! back), the quorum intact. With default options, new clients must not notice — 20 of 20
//! sequential fresh clients (as `lock exec` runs) lock and unlock, `lock()` with a 1 s timeout
//! returns within 1.1 s — and a session open before the hang keeps its lock (TTL 3 s), through
//! a hung follower and through a hung leader (it moves its keys to a fresh lease: see
//! docs/RELIABILITY.md "A hung member").

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::{LossCause, SessionConfig};
use lock_etcd::{EtcdConfig, EtcdService};
use lock_tools::etcd::{Cluster, ClusterSpec};

const TTL: Duration = Duration::from_secs(3);

async fn connect(cluster: &Cluster, prefix: &str) -> lock_core::Result<EtcdService> {
    let uri = format!("etcd:{}?prefix={prefix}", cluster.endpoints());
    EtcdService::connect(EtcdConfig::from_uri(&uri)?).await
}

/// What a `lock exec ID -- true` does: connect, open a session, lock, unlock, close.
async fn one_fresh_client(cluster: &Cluster, prefix: &str) -> lock_core::Result<()> {
    let service = connect(cluster, prefix).await?;
    let session = service.new_session(SessionConfig::new(TTL)).await?;
    let mut locker = session.new_locker("job");
    let _held = locker.lock().await?;
    locker.unlock().await?;
    service.close().await
}

/// Runs 20 fresh clients one after another with member `hung` stopped; returns the failures.
async fn twenty_fresh_clients(cluster: &Cluster, prefix: &str, hung: usize) -> Vec<String> {
    let mut failures = Vec::new();
    for n in 0..20 {
        let start = Instant::now();
        let result =
            tokio::time::timeout(Duration::from_secs(15), one_fresh_client(cluster, prefix)).await;
        let took = start.elapsed();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!(
                "client {n} (member {hung} hung): {e} after {took:?}"
            )),
            Err(_) => failures.push(format!(
                "client {n} (member {hung} hung): no result in 15 s"
            )),
        }
    }
    failures
}

async fn hang(cluster: &mut Cluster, member: usize, what: &str) {
    let quiet_ttl = TTL;
    let prefix = common::unique_prefix(&format!("hung-{what}"));
    // A session opened before the hang, holding a lock through it.
    let quiet = connect(cluster, &prefix).await.unwrap();
    let etcd_session = Arc::new(
        quiet
            .open_session(SessionConfig::new(quiet_ttl))
            .await
            .unwrap(),
    );
    let first_lease = etcd_session.lease_id();
    let session = lock_core::backend::session(etcd_session.clone(), SessionConfig::new(quiet_ttl));
    let mut locker = session.new_locker("quiet");
    let held = locker.lock().await.unwrap();

    cluster.pause(member);
    let started = Instant::now();
    let failures = twenty_fresh_clients(cluster, &prefix, member).await;
    let took = started.elapsed();
    // A lock() on the held id, with a 1 s timeout, returns within it (+ 100 ms).
    let waiting = quiet
        .new_session(SessionConfig::new(quiet_ttl).with_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let mut waiter = waiting.new_locker("quiet");
    let asked = Instant::now();
    let waited = waiter.lock().await;
    let waited_for = asked.elapsed();
    match waited {
        Err(lock_core::Error::Timeout(_)) => assert!(
            waited_for <= Duration::from_millis(1100),
            "{what} hung: lock() with a 1 s timeout returned after {waited_for:?}"
        ),
        other => panic!("{what} hung: lock() on a held id gave {other:?}"),
    }
    drop(waiter);
    drop(waiting);
    let quiet_lost = held.loss();
    // Still the same key, created at the hold's fencing token, bound to the session's lease:
    // a new one if the session's keep-alives stalled and it moved its keys.
    let answering: Vec<String> = (0..3)
        .filter(|&i| i != member)
        .map(|i| cluster.urls()[i].clone())
        .collect();
    let mut raw = etcd_client::Client::connect(answering, None).await.unwrap();
    let options = etcd_client::GetOptions::new().with_prefix();
    let keys = raw.get(prefix.as_str(), Some(options)).await.unwrap();
    // The key names carry the lease their session was opened with.
    let name = format!("{first_lease:016x}-");
    let key = keys
        .kvs()
        .iter()
        .find(|kv| kv.key_str().is_ok_and(|k| k.contains(&name)))
        .expect("the held key");
    let (token, lease) = (key.create_revision() as u64, key.lease());
    let moved = lease != first_lease;
    cluster.resume(member);
    eprintln!(
        "{what} (member {member}) hung: {} of 20 fresh clients failed in {took:?}; lock() with \
         a 1 s timeout returned after {waited_for:?}; the earlier session's lock (TTL \
         {quiet_ttl:?}): {}, its key {}",
        failures.len(),
        quiet_lost
            .as_ref()
            .map_or("kept".to_owned(), |l| format!("lost ({l})")),
        if moved {
            "moved to a fresh lease"
        } else {
            "on its first lease"
        }
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        (token, lease),
        (held.fencing_token(), etcd_session.lease_id()),
        "the held key: (create revision, lease) against (the fencing token, the session's lease)"
    );
    assert!(
        quiet_lost.is_none(),
        "a session open before the hang lost its lock: {}",
        quiet_lost.unwrap()
    );
    // After the member resumes: a leader stopped past the TTL can, as it comes back, make etcd
    // revoke leases that were kept alive all along (even etcd 3.5.30 under load; see
    // `examples/paused_leader.rs` and docs/RELIABILITY.md). That loss is the server's and is
    // reported as such; the client giving the lease up would be a failure.
    match locker.unlock().await {
        Ok(()) => quiet.close().await.unwrap(),
        Err(lock_core::Error::NotHeld) => {
            let loss = held
                .loss()
                .expect("a hold that is not held any more has a loss");
            assert!(
                matches!(loss.cause(), LossCause::SessionGone | LossCause::Removed),
                "after the {what} resumed, the client gave its lock up: {loss}"
            );
            eprintln!("after the {what} resumed, etcd revoked the session's lease: {loss}");
        }
        Err(e) => panic!("unlock after the {what} resumed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_follower_or_leader_goes_unnoticed_by_new_and_existing_clients() {
    // `RUST_LOG=lock_etcd=info` shows what the clients did.
    common::log();
    let Some(mut cluster) = common::own_cluster("hung_member", ClusterSpec::default()) else {
        return;
    };
    let leader = cluster.leader().expect("a leader");
    let follower = (leader + 1) % 3;
    hang(&mut cluster, follower, "follower").await;
    let leader = cluster.leader().expect("a leader");
    hang(&mut cluster, leader, "leader").await;
}
