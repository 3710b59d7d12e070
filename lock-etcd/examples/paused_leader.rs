//! Does etcd revoke a lease that its owner keeps alive, when a leader resumes from a stop longer
//! than the TTL? No `lock` code involved: a raw etcd client keeps one lease alive through the two
//! other members (every keep-alive must be answered with TTL > 0), the leader is stopped
//! (SIGSTOP) for longer than the TTL and resumed, and the lease is checked afterwards.
//!
//! ```text
//! cargo run -p lock-etcd --example paused_leader -- [--rounds 10] [--ttl 3] [--pause-ms 3700] [--load]
//! ```
//!
//! (`LOCK_ETCD_BIN` names the etcd to test; `cargo xtask provision` prints the tooling's.)
//! With `--load`, a thread per core spins and a writer syncs files beside it, as the torture
//! run's burners do. Prints, per round, whether every keep-alive was answered and whether the
//! lease survived; exits non-zero if a lease that was kept alive was revoked.

#[path = "common/args.rs"]
mod args;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use args::number;
use lock_tools::etcd::{binaries, Cluster, ClusterSpec};

/// CPU and disk burners until `stop`.
fn burn(stop: Arc<AtomicBool>) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    for _ in 0..=cores {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(SeqCst) {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            std::hint::black_box(x);
        });
    }
    std::thread::spawn(move || {
        let path = std::env::temp_dir().join(format!("paused-leader-burn-{}", std::process::id()));
        let block = vec![7u8; 32 << 20];
        while !stop.load(SeqCst) {
            if let Ok(mut f) = std::fs::File::create(&path) {
                let _ = f.write_all(&block);
                let _ = f.sync_all();
            }
        }
        let _ = std::fs::remove_file(&path);
    });
}

#[tokio::main]
async fn main() {
    let rounds = number("--rounds", 10);
    let ttl = number("--ttl", 3) as i64;
    let pause = Duration::from_millis(number("--pause-ms", 3700));
    let load = std::env::args().any(|a| a == "--load");
    let stop = Arc::new(AtomicBool::new(false));
    if load {
        burn(stop.clone());
    }
    let bins = binaries("paused_leader").expect("no etcd: set LOCK_ETCD_BIN");
    let mut cluster = Cluster::start(&bins, &ClusterSpec::default()).expect("cluster");
    let urls = cluster.urls();
    let mut revoked_while_kept = 0;
    for round in 1..=rounds {
        let leader = cluster.leader().expect("a leader");
        let others: Vec<String> = (0..3)
            .filter(|i| *i != leader)
            .map(|i| urls[i].clone())
            .collect();
        let options = ConnectOptions::new().with_timeout(Duration::from_secs(1));
        let client = Client::connect(others.clone(), Some(options))
            .await
            .expect("connect");
        let lease = client
            .lease_client()
            .grant(ttl, None)
            .await
            .expect("grant")
            .id();
        // Keep it alive every TTL/6, each keep-alive on a fresh stream (no stream stuck behind a
        // forward), counting answers with TTL > 0 and anything else.
        let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let keeping = Arc::new(AtomicBool::new(true));
        let keeper = {
            let (client, answered, failed, keeping) = (
                client.clone(),
                answered.clone(),
                failed.clone(),
                keeping.clone(),
            );
            tokio::spawn(async move {
                let mut last_ok = Instant::now();
                let mut longest_gap = Duration::ZERO;
                // The first answer saying the lease is gone, after how long since the last
                // send that was answered with TTL > 0.
                let mut gone_after: Option<Duration> = None;
                while keeping.load(SeqCst) {
                    let mut leases = client.lease_client();
                    let sent = Instant::now();
                    let once = tokio::time::timeout(Duration::from_millis(400), async {
                        let (_keeper, mut stream) = leases.keep_alive(lease).await?;
                        let _ = &mut stream;
                        Ok::<(), etcd_client::Error>(())
                    })
                    .await;
                    match once {
                        Ok(Ok(())) => {
                            answered.fetch_add(1, SeqCst);
                            longest_gap = longest_gap.max(sent - last_ok);
                            last_ok = sent;
                        }
                        Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => {
                            failed.fetch_add(1, SeqCst);
                            gone_after.get_or_insert(Instant::now() - last_ok);
                        }
                        _ => {
                            failed.fetch_add(1, SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(ttl as u64 * 1000 / 6)).await;
                }
                (longest_gap, gone_after)
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.pause(leader);
        tokio::time::sleep(pause).await;
        cluster.resume(leader);
        tokio::time::sleep(Duration::from_secs(2)).await;
        keeping.store(false, SeqCst);
        let (longest_gap, gone_after) = keeper.await.expect("keeper");
        let alive = client
            .lease_client()
            .time_to_live(lease, None)
            .await
            .map(|r| r.ttl() > 0)
            .unwrap_or(false);
        let ttl_d = Duration::from_secs(ttl as u64);
        // Kept alive: no gap between answered sends reached the TTL, and the lease was found
        // gone less than a TTL after the last answered send (the server had renewed it to at
        // least that send + TTL).
        let early = !alive && longest_gap < ttl_d && gone_after.is_some_and(|g| g < ttl_d);
        if early {
            revoked_while_kept += 1;
        }
        println!(
            "round {round}: leader n{leader} stopped {pause:?}; keep-alives answered {}, failed {}, \
             longest gap between answered sends {longest_gap:.2?}; lease {}",
            answered.load(SeqCst),
            failed.load(SeqCst),
            match (alive, gone_after) {
                (true, _) => "alive".to_owned(),
                (false, Some(g)) => format!(
                    "REVOKED: said gone {g:.2?} after the last send answered with TTL > 0{}",
                    if early { " (before its TTL ran out)" } else { "" }
                ),
                (false, None) => "gone".to_owned(),
            }
        );
        let _ = client.lease_client().revoke(lease).await;
        cluster.wait_healthy(leader, Duration::from_secs(10)).ok();
    }
    stop.store(true, SeqCst);
    println!("{revoked_while_kept} of {rounds} leases kept alive throughout were revoked");
    drop(cluster);
    if revoked_while_kept > 0 {
        std::process::exit(1);
    }
}
