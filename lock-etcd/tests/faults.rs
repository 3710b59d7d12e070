//! Safety under faults, on a private 3-member cluster: contending clients record every grant,
//! loss, release and fenced write in a `History`, faults are injected mid-run, and the checker
//! must find zero violations (no two holders at once, tokens increasing, no stale write taken).

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use lock_core::{Service, SessionConfig};
use lock_etcd::{EtcdConfig, EtcdService};
use lock_testkit::etcd::{Cluster, ClusterSpec};
use lock_testkit::history::{History, Kind};

const TTL: Duration = Duration::from_secs(3);

async fn connect(endpoints: &str, prefix: &str) -> lock_core::Result<EtcdService> {
    let uri = format!("etcd:{endpoints}?prefix={prefix}&dial-timeout=5s&request-timeout=3s");
    EtcdService::connect(EtcdConfig::from_uri(&uri)?).await
}

/// The protected resource: `<prefix>res/<id>` written only if its stored token is older.
/// Returns whether the write was taken, and at which revision.
async fn fenced_write(
    service: &EtcdService,
    prefix: &str,
    id: &str,
    token: u64,
) -> Option<(bool, i64)> {
    let (data, tkey) = (
        format!("{prefix}res/{id}"),
        format!("{prefix}res/{id}.token"),
    );
    let padded = format!("{token:020}");
    let put = [
        TxnOp::put(data.as_str(), padded.as_str(), None),
        TxnOp::put(tkey.as_str(), padded.as_str(), None),
    ];
    let mut kv = service.client().kv_client();
    for compare in [
        Compare::version(tkey.as_str(), CompareOp::Equal, 0),
        Compare::value(tkey.as_str(), CompareOp::Less, padded.as_str()),
    ] {
        let txn = Txn::new().when([compare]).and_then(put.clone());
        let resp = tokio::time::timeout(Duration::from_secs(3), kv.txn(txn))
            .await
            .ok()?
            .ok()?;
        if resp.succeeded() {
            return Some((true, resp.header().map_or(0, |h| h.revision())));
        }
    }
    Some((false, 0))
}

/// One contending client: sessions, lock, one fenced write, a short hold, unlock; records all.
async fn client(
    n: usize,
    endpoints: String,
    prefix: String,
    id: String,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let Ok(service) = connect(&endpoints, &prefix).await else {
        return;
    };
    while !stop.load(SeqCst) {
        let Ok(session) = service.new_session(&SessionConfig::new(TTL)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let locker = session.new_locker(&id);
        while !stop.load(SeqCst) && !session.done().is_done() {
            let held = match tokio::time::timeout(Duration::from_secs(5), locker.lock()).await {
                Ok(Ok(held)) => held,
                _ => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            history.record(n, &id, Kind::Acquired(held.fencing_token()));
            if let Some((accepted, revision)) =
                fenced_write(&service, &prefix, &id, held.fencing_token()).await
            {
                history.record(
                    n,
                    &id,
                    Kind::Write {
                        token: held.fencing_token(),
                        accepted,
                        revision,
                    },
                );
            }
            let hold = Duration::from_millis(5 + (n as u64 * 7) % 20);
            tokio::select! {
                () = held.lost() => {
                    history.record(n, &id, Kind::Lost);
                    continue;
                }
                () = tokio::time::sleep(hold) => {}
            }
            if held.is_lost() {
                history.record(n, &id, Kind::Lost);
                continue;
            }
            history.record(n, &id, Kind::Unlocked);
            let _ = locker.unlock().await;
        }
    }
    let _ = service.close().await;
}

struct Run {
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn contend(cluster: &Cluster, clients: usize, id: &str) -> Run {
    let prefix = common::unique_prefix("faults");
    let (history, stop) = (Arc::new(History::new()), Arc::new(AtomicBool::new(false)));
    let tasks = (0..clients)
        .map(|n| {
            let args = (
                cluster.endpoints(),
                prefix.clone(),
                id.to_owned(),
                history.clone(),
                stop.clone(),
            );
            tokio::spawn(client(n, args.0, args.1, args.2, args.3, args.4))
        })
        .collect();
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
    let run = contend(&cluster, 16, "hot");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.leader().expect("a leader");
    let killed = Instant::now();
    cluster.kill(leader);
    let resumed = run.grants_resume(killed, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = run.finish().await;
    eprintln!("leader n{leader} killed: grants resumed after {resumed:?}; {summary:?}");
    assert!(summary.acquisitions > 20, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_down_longer_than_the_ttl() {
    let Some(mut cluster) = cluster("cluster_down") else {
        return;
    };
    let run = contend(&cluster, 8, "hot");
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
            Kind::Lost | Kind::Unlocked => {
                if let Some(entry) = open.get_mut(&e.client) {
                    entry.1 = Some(e.at);
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
    let run = contend(&cluster, 8, "hot");
    // A quiet session holding another lock through the whole restart: its lease survives.
    let prefix = common::unique_prefix("rolling-quiet");
    let quiet = connect(&cluster.endpoints(), &prefix).await.unwrap();
    let session = quiet
        .new_session(&SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap();
    let locker = session.new_locker("quiet");
    let held = locker.lock().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        let restarted = Instant::now();
        cluster.restart(i).unwrap();
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
                let session = service.new_session(&SessionConfig::new(TTL)).await.unwrap();
                let locker = session.new_locker("x");
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
                history.record_at(resumed, 1, "x", Kind::Lost);
                tokio::time::timeout(Duration::from_millis(50), held.lost())
                    .await
                    .expect("lost() at once");
                // A stale write anyway (as a buggy holder would): the resource refuses it.
                let (accepted, revision) =
                    fenced_write(&service, &prefix, "x", token).await.unwrap();
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
        let session = service.new_session(&SessionConfig::new(TTL)).await.unwrap();
        let locker = session.new_locker("x");
        let held = tokio::time::timeout(TTL * 4, locker.lock())
            .await
            .expect("granted after the TTL")
            .unwrap();
        history.record(2, "x", Kind::Acquired(held.fencing_token()));
        assert!(held.fencing_token() > stale);
        let (accepted, revision) = fenced_write(&service, &prefix, "x", held.fencing_token())
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
        history.record(2, "x", Kind::Unlocked);
        locker.unlock().await.unwrap();
        service.close().await.unwrap();
    });
    match history.check() {
        Ok(summary) => assert_eq!((summary.writes_accepted, summary.writes_rejected), (1, 1)),
        Err(violations) => panic!("{violations}"),
    }
}
