//! A 3-member cluster loses a member — the leader, then another — while a session holds a
//! lock: the session survives and new locks keep being granted.

mod common;

use std::time::{Duration, Instant};

use lock_core::{Service, SessionConfig};
use lock_tools::etcd::ClusterSpec;

async fn one_cycle(service: &Service) -> lock_core::Result<()> {
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(5)))
        .await?;
    let mut locker = session.new_locker("cycle");
    let _held = locker.lock().await?;
    locker.unlock().await?;
    session.close().await
}

/// Time until a full session/lock/unlock/close cycle succeeds again.
async fn recovery(service: &Service) -> Duration {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(6), one_cycle(service)).await {
            Ok(Ok(())) => return start.elapsed(),
            _ if start.elapsed() > Duration::from_secs(30) => {
                panic!("no lock granted 30 s after a member died")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_member_breaks_no_session() {
    let Some(mut cluster) =
        common::own_cluster("losing_a_member_breaks_no_session", ClusterSpec::default())
    else {
        return;
    };
    use lock_etcd as _;
    let service = lock_core::new(&format!("etcd:{}?dial-timeout=5s", cluster.endpoints()))
        .await
        .unwrap();
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut holder = session.new_locker("held");
    let held = holder.lock().await.unwrap();

    let leader = cluster.leader().expect("a leader");
    for victim in [leader, (leader + 1) % 3] {
        cluster.kill(victim);
        let took = recovery(&service).await;
        eprintln!("member n{victim} killed: locks granted again after {took:?}");
        for _ in 0..10 {
            one_cycle(&service).await.expect("locks keep being granted");
        }
        assert!(
            !held.is_lost(),
            "the held lock was lost when member n{victim} died"
        );
        cluster.restart(victim).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await; // longer than the TTL
    assert!(
        !held.is_lost() && !session.done().is_done(),
        "the session did not survive"
    );
    holder.unlock().await.unwrap();
    service.close().await.unwrap();
}
