//! `cargo xtask torture --seconds N --seed S`: random faults against a private 3-member etcd
//! cluster while clients contend on a few ids — two locks, a semaphore of two permits, an
//! election — then the history checker's verdict (at most one holder of a lock, at most two of
//! the semaphore, one leader per term).
//!
//! Faults (seeded, so a failure replays): a member killed (-9) and restarted, a member paused
//! (SIGSTOP/SIGCONT), the leader killed, one client partitioned, slowed (latency TTL/3) or cut off
//! (connections closed) through its own proxies, the whole cluster down for longer than the TTL,
//! a rolling restart. Clients reach the protected resource directly, so a partitioned holder
//! could still write: only fencing stops it. Exits non-zero on any violation; each violation is
//! printed with every hold's loss as the backend recorded it (cause, revision, what etcd said
//! about the lease) and the faults injected around it.
//!
//! `cargo xtask torture --load` runs CPU, memory and disk burners beside it (see xtask).

#[path = "common/args.rs"]
mod args;

#[path = "../tests/common/fenced.rs"]
mod fenced;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_etcd::{EtcdConfig, EtcdService};
use lock_testkit::contend::{Contender, Fenced, Primitive};
use lock_testkit::history::{Event, History, Kind};
use lock_testkit::proxy::{Fault, FaultProxy};
use lock_tools::etcd::{binaries, Cluster, ClusterSpec};

use args::arg;

const TTL: Duration = Duration::from_secs(3);
const CLIENTS: usize = 12;
/// What the clients contend for: client `n` takes `IDS[n % 4]`, three clients each.
const IDS: [(&str, Primitive); 4] = [
    ("alpha", Primitive::Lock),
    ("beta", Primitive::Lock),
    ("gamma", Primitive::Semaphore(2)),
    ("leader", Primitive::Election),
];

/// xorshift64*: small, seeded, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

struct Client {
    proxies: Vec<FaultProxy>,
}

impl Client {
    fn set(&self, fault: Fault) {
        self.proxies.iter().for_each(|p| p.set(fault));
    }
}

/// Puts `fault` on the connections of a client picked at random, for a random time in
/// `millis`, then lifts it. Returns the client's number.
async fn fault_a_client(
    clients: &[Client],
    rng: &mut Rng,
    fault: Fault,
    millis: (u64, u64),
) -> usize {
    let n = rng.below(CLIENTS as u64) as usize;
    clients[n].set(fault);
    tokio::time::sleep(rng.millis(millis.0, millis.1)).await;
    clients[n].set(Fault::None);
    n
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = arg("--seconds").map_or(30, |s| s.parse().expect("--seconds N"));
    let seed: u64 = arg("--seed").map_or(1, |s| s.parse().expect("--seed S"));
    // The backend's warnings (losses, streams and endpoints given up), with times, to stderr:
    // the context of a violation. `RUST_LOG` overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("lock_etcd=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    tracing::warn!("the history's time 0 (violations count from here)");
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let bins = binaries("torture").expect("no etcd: run through `cargo xtask torture`");
    let mut cluster = Cluster::start(&bins, &ClusterSpec::default()).expect("starting etcd");
    let prefix = format!("torture-{seed}-{}/", std::process::id());
    let history = Arc::new(History::new());
    for (id, primitive) in IDS {
        if let Primitive::Semaphore(limit) = primitive {
            history.set_limit(id, limit as usize);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let direct = etcd_client::Client::connect(cluster.urls(), None)
        .await
        .unwrap();
    let resource: Arc<dyn Fenced> = Arc::new(fenced::EtcdResource {
        client: direct,
        prefix: prefix.clone(),
    });

    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let mut proxies = Vec::new();
        for url in cluster.urls() {
            let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
            proxies.push(FaultProxy::start(addr).await.unwrap());
        }
        let endpoints: Vec<String> = proxies.iter().map(FaultProxy::url).collect();
        let uri = format!(
            "etcd:{}?prefix={prefix}&dial-timeout=5s&request-timeout=3s",
            endpoints.join(",")
        );
        let service = EtcdService::connect(EtcdConfig::from_uri(&uri).unwrap())
            .await
            .unwrap();
        let contender = Contender {
            client: n,
            service: lock_core::backend::service(service),
            id: IDS[n % IDS.len()].0.to_owned(),
            primitive: IDS[n % IDS.len()].1,
            ttl: TTL,
            resource: resource.clone(),
            history: history.clone(),
            stop: stop.clone(),
            long_holds: true,
        };
        tasks.push(tokio::spawn(contender.run()));
        clients.push(Client { proxies });
    }

    let mut faults: BTreeMap<&str, (usize, Duration)> = BTreeMap::new();
    let mut injected: Vec<(&str, Instant)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    tokio::time::sleep(Duration::from_secs(1)).await;
    while Instant::now() + Duration::from_secs(3) < end {
        let at = Instant::now();
        let (kind, target) = match rng.below(100) {
            0..=17 => {
                let i = rng.below(3) as usize;
                cluster.kill(i);
                tokio::time::sleep(rng.millis(1000, 4000)).await;
                cluster.restart(i).expect("restart");
                ("member killed", i)
            }
            18..=29 => {
                let i = rng.below(3) as usize;
                cluster.pause(i);
                tokio::time::sleep(rng.millis(1000, 4000)).await;
                cluster.resume(i);
                ("member paused", i)
            }
            30..=39 => {
                let leader = cluster.leader();
                if let Some(leader) = leader {
                    cluster.kill(leader);
                    tokio::time::sleep(rng.millis(500, 2000)).await;
                    cluster.restart(leader).expect("restart");
                }
                ("leader killed", leader.unwrap_or(Event::EVERYONE))
            }
            40..=59 => {
                let n = fault_a_client(&clients, &mut rng, Fault::Blackhole, (500, 6000)).await;
                ("client partitioned", n)
            }
            60..=74 => {
                let slow = Fault::Latency(TTL / 3);
                let n = fault_a_client(&clients, &mut rng, slow, (1000, 5000)).await;
                ("client slowed (TTL/3)", n)
            }
            75..=89 => {
                let n = fault_a_client(&clients, &mut rng, Fault::Refuse, (100, 1500)).await;
                ("client cut off", n)
            }
            90..=94 => {
                for i in 0..3 {
                    cluster.kill(i);
                }
                tokio::time::sleep(TTL + rng.millis(500, 2000)).await;
                cluster.restart_all().expect("restart");
                ("whole cluster down", Event::EVERYONE)
            }
            _ => {
                for i in 0..3 {
                    cluster.restart(i).expect("restart");
                }
                ("rolling restart", Event::EVERYONE)
            }
        };
        history.record_fault(kind, target, at, Instant::now());
        faults.entry(kind).or_default().0 += 1;
        injected.push((kind, at));
        tokio::time::sleep(rng.millis(300, 1500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, SeqCst);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }

    // Longest unavailability after each kind of fault: injection to the next grant.
    let grants: Vec<Duration> = history
        .events()
        .iter()
        .filter(|e| matches!(e.kind, Kind::Acquired(_)))
        .map(|e| e.at)
        .collect();
    for (kind, at) in &injected {
        let from = history.offset(*at);
        let next = grants
            .iter()
            .find(|g| **g >= from)
            .map_or(Duration::MAX, |g| *g - from);
        let worst = &mut faults.get_mut(kind).unwrap().1;
        *worst = (*worst).max(next);
    }
    let verdict = history.check();
    let summary = verdict.as_ref().ok().cloned().unwrap_or_default();
    println!(
        "torture: {seconds} s, seed {seed}, {CLIENTS} clients on {} ids, TTL {TTL:?}",
        IDS.len()
    );
    println!();
    println!("| fault | injected | longest unavailability (fault → next grant) |");
    println!("|---|---:|---:|");
    for (kind, (count, worst)) in &faults {
        let worst = if *worst == Duration::MAX {
            "no grant after it".to_owned()
        } else {
            format!("{:.2} s", worst.as_secs_f64())
        };
        println!("| {kind} | {count} | {worst} |");
    }
    println!();
    let acquisitions = grants.len();
    let mut causes: BTreeMap<String, usize> = BTreeMap::new();
    let events = history.events();
    let losses = events.iter().filter(|e| matches!(e.kind, Kind::Lost(_)));
    for loss in losses.clone().filter_map(Event::loss) {
        *causes.entry(loss.cause().to_string()).or_default() += 1;
    }
    let signals = losses.count();
    println!(
        "acquisitions: {acquisitions}; holds ended by loss: {}; lost() signals seen: {signals}; \
         fenced writes accepted: {}, rejected: {}",
        summary.losses, summary.writes_accepted, summary.writes_rejected
    );
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| matches!(e.kind, Kind::Acquired(_)))
    {
        *per_id.entry(e.id.as_str()).or_default() += 1;
    }
    let per_id: Vec<String> = IDS
        .iter()
        .map(|(id, p)| format!("{id} ({p:?}): {}", per_id.get(id).copied().unwrap_or(0)))
        .collect();
    println!("acquisitions by id: {}", per_id.join(", "));
    let causes: Vec<String> = causes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    println!("holds ended by: {}", causes.join(", "));
    drop(clients);
    drop(cluster);
    match verdict {
        Ok(_) => println!("violations: 0"),
        Err(violations) => {
            println!("{violations}");
            std::process::exit(1);
        }
    }
}
