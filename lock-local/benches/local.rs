//! `cargo xtask bench local`: the `local:` backend against the keyed lock a user would write by
//! hand — `std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>` — measured in the
//! same run. Prints a Markdown table (the one in docs/BENCHMARKS.md).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lock_core::{Service, SessionConfig};
use lock_local::LocalService;

/// The baseline: look up (or insert) the id's mutex, then lock it.
#[derive(Default)]
struct Baseline {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Baseline {
    fn entry(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap();
        if let Some(m) = map.get(id) {
            return m.clone();
        }
        map.entry(id.to_owned()).or_default().clone()
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
            .unwrap(),
    }
}

/// Median of `runs` timings of `f`.
fn median<F, Fut>(rt: &tokio::runtime::Runtime, runs: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            rt.block_on(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn config() -> SessionConfig {
    SessionConfig::new(Duration::from_secs(10))
}

const CYCLES: u32 = 1_000_000;
/// Worker threads of the multi-threaded benchmarks.
const THREADS: usize = 2;

fn uncontended() -> (f64, f64) {
    let rt = runtime(1);
    let service = Service::from_backend(LocalService::new());
    let session = rt.block_on(service.new_session(config())).unwrap();
    let locker = session.new_locker("bench/uncontended");
    let ours = median(&rt, 7, || async {
        for _ in 0..CYCLES {
            let held = locker.lock().await.unwrap();
            std::hint::black_box(&held);
            locker.unlock().await.unwrap();
        }
    });
    let baseline = Baseline::default();
    let base = median(&rt, 7, || async {
        for _ in 0..CYCLES {
            let m = baseline.entry("bench/uncontended");
            let guard = m.lock().await;
            std::hint::black_box(&guard);
        }
    });
    let per = |d: Duration| d.as_nanos() as f64 / f64::from(CYCLES);
    (per(ours), per(base))
}

const TASKS: usize = 1000;
const ROUNDS: usize = 100;

/// 1000 tasks (each its own session) taking turns on one id: handoffs per second.
fn contended() -> (f64, f64) {
    let (ours, base) = alternating(5, 3, contended_ours_run, contended_base_run);
    let rate = |d: Duration| (TASKS * ROUNDS) as f64 / d.as_secs_f64();
    (rate(ours), rate(base))
}

async fn contended_ours_run() {
    let service = Service::from_backend(LocalService::new());
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let session = service.new_session(config()).await.unwrap();
            let locker = session.new_locker("bench/contended");
            for _ in 0..ROUNDS {
                let _held = locker.lock().await.unwrap();
                locker.unlock().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn contended_base_run() {
    let baseline = Arc::new(Baseline::default());
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let baseline = baseline.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let m = baseline.entry("bench/contended");
                let guard = m.lock().await;
                drop(guard);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The seed example: 1000 tasks, each its own session, one increment each under one lock
/// (ms per run).
fn seed_example() -> (f64, f64) {
    let (ours, base) = alternating(10, 21, seed_ours_run, seed_base_run);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(ours), ms(base))
}

/// Runs both programs on one 2-worker runtime, `runs` times each in `blocks` alternating
/// blocks, so that both see the same drift of this noisy machine. Returns the median run time
/// of each.
fn alternating<O, B, FO, FB>(blocks: usize, runs: usize, ours: O, base: B) -> (Duration, Duration)
where
    O: Fn() -> FO,
    B: Fn() -> FB,
    FO: Future<Output = ()>,
    FB: Future<Output = ()>,
{
    let rt = runtime(THREADS);
    let (mut o, mut b) = (Vec::new(), Vec::new());
    for _ in 0..blocks {
        o.extend((0..runs).map(|_| timed(&rt, ours())));
        b.extend((0..runs).map(|_| timed(&rt, base())));
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    (median(o), median(b))
}

fn timed(rt: &tokio::runtime::Runtime, fut: impl Future<Output = ()>) -> Duration {
    let start = Instant::now();
    rt.block_on(fut);
    start.elapsed()
}

/// One run of the seed example on `local:`.
async fn seed_ours_run() {
    let service = Service::from_backend(LocalService::new());
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (service, counter) = (service.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let session = service.new_session(config()).await.unwrap();
            let locker = session.new_locker("mylock");
            let held = locker.lock().await.unwrap();
            assert!(!held.is_lost());
            counter.store(counter.load(Relaxed) + 1, Relaxed);
            locker.unlock().await.unwrap();
            session.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Relaxed), 1000);
}

/// The same program on the baseline.
async fn seed_base_run() {
    let baseline = Arc::new(Baseline::default());
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (baseline, counter) = (baseline.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let m = baseline.entry("mylock");
            let guard = m.lock().await;
            counter.store(counter.load(Relaxed) + 1, Relaxed);
            drop(guard);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Relaxed), 1000);
}

/// Peak resident memory of this process so far, in KiB (Linux).
fn peak_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// 1,000,000 distinct ids locked and unlocked once each: time, peak memory, entries left.
fn distinct_ids() -> (f64, Option<u64>, usize) {
    let rt = runtime(1);
    let local = LocalService::new();
    let service = Service::from_backend(local.clone());
    let session = rt.block_on(service.new_session(config())).unwrap();
    let start = Instant::now();
    rt.block_on(async {
        for n in 0..1_000_000u32 {
            let locker = session.new_locker(&format!("job/{n}"));
            let _held = locker.lock().await.unwrap();
            locker.unlock().await.unwrap();
        }
    });
    (
        start.elapsed().as_secs_f64(),
        peak_kib(),
        local.active_ids(),
    )
}

/// Runs one side of a multi-task benchmark `n` times (for `perf`).
fn repeat<F: Future<Output = ()>>(n: usize, run: impl Fn() -> F) {
    let rt = runtime(THREADS);
    (0..n).for_each(|_| rt.block_on(run()));
}

fn main() {
    // `cargo bench` passes `--bench`; a bare word runs only that benchmark: distinct |
    // uncontended | contended | seed, or one side alone, many times, for a profiler:
    // contended-ours | contended-base | seed-ours | seed-base.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if !run("distinct") {
        match only.as_deref() {
            Some("uncontended") => println!("{:?}", uncontended()),
            Some("contended") => println!("{:?}", contended()),
            Some("contended-ours") => repeat(20, contended_ours_run),
            Some("contended-base") => repeat(20, contended_base_run),
            Some("seed") => println!("{:?}", seed_example()),
            Some("seed-ours") => repeat(3000, seed_ours_run),
            Some("seed-base") => repeat(3000, seed_base_run),
            Some(other) => eprintln!("unknown benchmark `{other}`"),
            None => {}
        }
        return;
    }
    let (distinct_secs, peak, left) = distinct_ids();
    let (u_ours, u_base) = uncontended();
    let (c_ours, c_base) = contended();
    let (s_ours, s_base) = seed_example();
    println!("| benchmark | local: | baseline | ratio (ours / baseline) | target |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| uncontended lock+unlock, one task (ns/cycle) | {u_ours:.1} | {u_base:.1} | {:.2}× time | ≤ 1.5× |",
        u_ours / u_base
    );
    println!(
        "| 1000 tasks on one id, own sessions (handoffs/s) | {c_ours:.0} | {c_base:.0} | {:.2}× rate | ≥ 1.0× |",
        c_ours / c_base
    );
    println!(
        "| seed example, 1000 sessions (ms per run) | {s_ours:.2} | {s_base:.2} | {:.2}× time | ≤ 1.0× |",
        s_ours / s_base
    );
    println!(
        "| 1,000,000 distinct ids, lock+unlock once | {distinct_secs:.2} s, peak RSS {} MiB, {left} ids left | – | – | 0 ids left |",
        peak.map_or("?".to_owned(), |k| (k / 1024).to_string())
    );
}
