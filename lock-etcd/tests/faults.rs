//! Safety under faults, on a private 3-member cluster: contending clients record every grant,
//! loss, release and fenced write in a `History`, faults are injected mid-run, and the checker
//! must find zero violations (no two holders at once, tokens increasing, no stale write taken).

mod common;
#[path = "common/fenced.rs"]
mod fenced;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::SessionConfig;
use lock_etcd::{EtcdConfig, EtcdService};
use lock_testkit::contend::{Contender, Fenced, Primitive};
use lock_testkit::history::{History, Kind};
use lock_tools::etcd::{Cluster, ClusterSpec};

use fenced::EtcdResource;

const TTL: Duration = Duration::from_secs(3);

async fn connect(endpoints: &str, prefix: &str) -> lock_core::Result<EtcdService> {
    let uri = format!("etcd:{endpoints}?prefix={prefix}&dial-timeout=5s&request-timeout=3s");
    EtcdService::connect(EtcdConfig::from_uri(&uri)?).await
}

async fn resource(endpoints: &str, prefix: &str) -> EtcdResource {
    let client = etcd_client::Client::connect(endpoints.split(',').collect::<Vec<_>>(), None)
        .await
        .unwrap();
    EtcdResource {
        client,
        prefix: prefix.to_owned(),
    }
}

struct Run {
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn contend(cluster: &Cluster, clients: usize, id: &str) -> Run {
    let prefix = common::unique_prefix("faults");
    let (history, stop) = (Arc::new(History::new()), Arc::new(AtomicBool::new(false)));
    let resource: Arc<dyn Fenced> = Arc::new(resource(&cluster.endpoints(), &prefix).await);
    let mut tasks = Vec::new();
    for n in 0..clients {
        let service = connect(&cluster.endpoints(), &prefix).await.unwrap();
        let contender = Contender {
            client: n,
            service: lock_core::backend::service(service),
            id: id.to_owned(),
            primitive: Primitive::Lock,
            ttl: TTL,
            resource: resource.clone(),
            history: history.clone(),
            stop: stop.clone(),
            long_holds: false,
        };
        tasks.push(tokio::spawn(contender.run()));
    }
    Run {
        history,
        stop,
        tasks,
    }
}

impl Run {
    fn acquisitions_since(&self, at: Instant) -> usize {
        let from = self.history.offset(at);
        self.history
            .events()
            .iter()
            .filter(|e| e.at >= from && matches!(e.kind, Kind::Acquired(_)))
            .count()
    }

    /// Waits until a grant happens after `at`; returns how long that took.
    async fn grants_resume(&self, at: Instant, limit: Duration) -> Duration {
        while self.acquisitions_since(at) == 0 {
            assert!(
                at.elapsed() < limit,
                "no lock granted within {limit:?} of the fault"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        at.elapsed()
    }

    async fn finish(self) -> lock_testkit::history::Summary {
        self.stop.store(true, SeqCst);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        match self.history.check() {
            Ok(summary) => summary,
            Err(violations) => panic!("{violations}"),
        }
    }
}

fn cluster(test: &str) -> Option<Cluster> {
    common::own_cluster(test, ClusterSpec::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_16_way_contention() {
    let Some(mut cluster) = cluster("leader_killed") else {
        return;
    };
    let run = contend(&cluster, 16, "hot").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.leader().expect("a leader");
    let killed = Instant::now();
    cluster.kill(leader);
    let resumed = run.grants_resume(killed, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let history = &run.history;
    history.record_fault(
        "leader killed (not restarted)",
        leader,
        killed,
        Instant::now(),
    );
    let summary = run.finish().await;
    eprintln!("leader n{leader} killed: grants resumed after {resumed:?}; {summary:?}");
    assert!(summary.acquisitions > 20, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_down_longer_than_the_ttl() {
    let Some(mut cluster) = cluster("cluster_down") else {
        return;
    };
    let run = contend(&cluster, 8, "hot").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let down = Instant::now();
    for i in 0..3 {
        cluster.kill(i);
    }
    tokio::time::sleep(TTL + Duration::from_secs(2)).await;
    // Every hold that was open when the cluster went down was lost within the TTL.
    let events = run.history.events();
    let down_at = run.history.offset(down);
    let mut open = std::collections::BTreeMap::new();
    for e in &events {
        match e.kind {
            Kind::Acquired(t) => {
                open.insert(e.client, (t, None));
            }
            Kind::Lost(t) | Kind::Unlocked(t) => {
                if let Some(entry) = open.get_mut(&e.client).filter(|entry| entry.0 == t) {
                    entry.1.get_or_insert(e.at);
                }
            }
            _ => {}
        }
    }
    for (client, (token, end)) in &open {
        let end = end
            .unwrap_or_else(|| panic!("client {client} (token {token}) never saw its lock lost"));
        assert!(
            end <= down_at + TTL,
            "client {client} (token {token}) saw the loss {:?} after the cluster went down",
            end.saturating_sub(down_at)
        );
    }
    cluster.restart_all().unwrap();
    let up = Instant::now();
    let everyone = lock_testkit::history::Event::EVERYONE;
    run.history
        .record_fault("whole cluster down", everyone, down, up);
    let resumed = run.grants_resume(up, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let summary = run.finish().await;
    eprintln!(
        "cluster down {:?}: grants resumed {resumed:?} after it came back; {summary:?}",
        up - down
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_contention() {
    let Some(mut cluster) = cluster("rolling_restart") else {
        return;
    };
    let run = contend(&cluster, 8, "hot").await;
    // A quiet session holding another lock through the whole restart: its lease survives.
    let prefix = common::unique_prefix("rolling-quiet");
    let quiet = connect(&cluster.endpoints(), &prefix).await.unwrap();
    let session = quiet
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut locker = session.new_locker("quiet");
    let held = locker.lock().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        let restarted = Instant::now();
        cluster.restart(i).unwrap();
        run.history
            .record_fault("member restarted", i, restarted, Instant::now());
        run.grants_resume(restarted, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let summary = run.finish().await;
    assert!(
        !held.is_lost(),
        "a session whose lease survived lost its lock"
    );
    eprintln!("rolling restart: {summary:?}");
    locker.unlock().await.unwrap();
    quiet.close().await.unwrap();
}

#[test]
fn a_frozen_holder_sees_the_loss_at_once_and_its_stale_write_is_rejected() {
    let Some(endpoints) = common::shared("frozen_holder") else {
        return;
    };
    let prefix = common::unique_prefix("frozen");
    let history = Arc::new(History::new());
    // The holder runs on its own single-threaded runtime; blocking that thread freezes all of
    // the client (its keep-alives too), like SIGSTOP freezes a process.
    let (granted_tx, granted_rx) = std::sync::mpsc::channel::<u64>();
    let (next_tx, next_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let (endpoints, prefix, history) = (endpoints.clone(), prefix.clone(), history.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let service = connect(&endpoints, &prefix).await.unwrap();
                let session = service.new_session(SessionConfig::new(TTL)).await.unwrap();
                let mut locker = session.new_locker("x");
                let held = locker.lock().await.unwrap();
                let token = held.fencing_token();
                history.record(1, "x", Kind::Acquired(token));
                granted_tx.send(token).unwrap();
                // Freeze: nothing of this client runs until the next holder has written.
                let paused = Instant::now();
                next_rx.recv().unwrap();
                // First thing after resuming: the loss must already be known.
                let resumed = Instant::now();
                history.record_at(
                    paused,
                    1,
                    "x",
                    Kind::Paused {
                        until: history.offset(resumed),
                    },
                );
                assert!(
                    held.is_lost(),
                    "is_lost() was false right after resuming past the deadline"
                );
                history.record_at(resumed, 1, "x", Kind::Lost(token));
                tokio::time::timeout(Duration::from_millis(50), held.lost())
                    .await
                    .expect("lost() at once");
                // A stale write anyway (as a buggy holder would): the resource refuses it.
                let (accepted, revision) = resource(&endpoints, &prefix)
                    .await
                    .write_token("x", token)
                    .await
                    .unwrap();
                history.record(
                    1,
                    "x",
                    Kind::Write {
                        token,
                        accepted,
                        revision,
                    },
                );
                assert!(!accepted, "the resource took a stale write");
            });
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stale = granted_rx.recv().unwrap();
        let service = connect(&endpoints, &prefix).await.unwrap();
        let session = service.new_session(SessionConfig::new(TTL)).await.unwrap();
        let mut locker = session.new_locker("x");
        let held = tokio::time::timeout(TTL * 4, locker.lock())
            .await
            .expect("granted after the TTL")
            .unwrap();
        history.record(2, "x", Kind::Acquired(held.fencing_token()));
        assert!(held.fencing_token() > stale);
        let (accepted, revision) = resource(&endpoints, &prefix)
            .await
            .write_token("x", held.fencing_token())
            .await
            .unwrap();
        history.record(
            2,
            "x",
            Kind::Write {
                token: held.fencing_token(),
                accepted,
                revision,
            },
        );
        assert!(accepted);
        next_tx.send(()).unwrap();
        holder.join().expect("the frozen holder's checks failed");
        history.record(2, "x", Kind::Unlocked(held.fencing_token()));
        locker.unlock().await.unwrap();
        service.close().await.unwrap();
    });
    match history.check() {
        Ok(summary) => assert_eq!((summary.writes_accepted, summary.writes_rejected), (1, 1)),
        Err(violations) => panic!("{violations}"),
    }
}
