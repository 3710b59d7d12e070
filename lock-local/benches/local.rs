//! `cargo xtask bench local`: the `local:` backend, through the application handles, against
//! two keyed locks a user would pick instead, measured in the same run on one 2-worker runtime,
//! alternating in blocks so that all three see the same drift of this noisy machine:
//!
//! - **map**: the careful hand-written one, `std::sync::Mutex<HashMap<String,
//!   Arc<tokio::sync::Mutex<()>>>>` that removes an id's entry when its last user lets go (so
//!   that a million ids do not stay in memory);
//! - **lockable**: the `lockable` crate's `LockPool<String>`.
//!
//! Prints the Markdown table of docs/BENCHMARKS.md, with each target and whether it held.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lock_core::{Service, SessionConfig};
use lock_local::LocalService;

/// Worker threads of every benchmark's runtime.
const THREADS: usize = 2;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()
        .unwrap()
}

fn config() -> SessionConfig {
    SessionConfig::new(Duration::from_secs(10))
}

/// The careful hand-written keyed lock: an id's entry lives while somebody holds or waits.
#[derive(Default)]
struct Map {
    ids: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A hold of [`Map`]: unlocks, then removes the entry if nobody else uses it.
struct MapGuard<'a> {
    map: &'a Map,
    id: &'a str,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Map {
    async fn lock<'a>(&'a self, id: &'a str) -> MapGuard<'a> {
        let mutex = {
            let mut ids = self.ids.lock().unwrap();
            match ids.get(id) {
                Some(m) => m.clone(),
                None => ids.entry(id.to_owned()).or_default().clone(),
            }
        };
        MapGuard {
            map: self,
            id,
            guard: Some(mutex.lock_owned().await),
        }
    }

    fn len(&self) -> usize {
        self.ids.lock().unwrap().len()
    }
}

impl Drop for MapGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut ids = self.map.ids.lock().unwrap();
        // The map's reference is the last: nobody holds or waits.
        if ids.get(self.id).is_some_and(|m| Arc::strong_count(m) == 1) {
            ids.remove(self.id);
        }
    }
}

type Pool = lockable::LockPool<String>;

/// The three contenders.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Ours,
    Map,
    Lockable,
}

const SIDES: [Side; 3] = [Side::Ours, Side::Map, Side::Lockable];

/// Runs `run(side)` for each side, `runs` times in each of `blocks` alternating blocks, and
/// returns every side's results in order.
fn alternating<T, F>(
    rt: &tokio::runtime::Runtime,
    blocks: usize,
    runs: usize,
    run: impl Fn(Side) -> F,
) -> [Vec<T>; 3]
where
    F: Future<Output = T>,
{
    let mut out: [Vec<T>; 3] = Default::default();
    for _ in 0..blocks {
        for (n, side) in SIDES.into_iter().enumerate() {
            for _ in 0..runs {
                out[n].push(rt.block_on(run(side)));
            }
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One task, one id, `CYCLES` lock+unlock: nanoseconds per cycle.
async fn uncontended(side: Side) -> f64 {
    const CYCLES: u32 = 200_000;
    let task = tokio::spawn(async move {
        let id = "bench/uncontended";
        let start = Instant::now();
        match side {
            Side::Ours => {
                let service = Service::from_backend(LocalService::new());
                let session = service.new_session(config()).await.unwrap();
                let locker = session.new_locker(id);
                let start = Instant::now();
                for _ in 0..CYCLES {
                    let held = locker.lock().await.unwrap();
                    std::hint::black_box(&held);
                    held.unlock().await.unwrap();
                }
                return start.elapsed();
            }
            Side::Map => {
                let map = Map::default();
                for _ in 0..CYCLES {
                    drop(std::hint::black_box(map.lock(id).await));
                }
            }
            Side::Lockable => {
                let pool = Pool::new();
                for _ in 0..CYCLES {
                    drop(std::hint::black_box(pool.async_lock(id.to_owned()).await));
                }
            }
        }
        start.elapsed()
    });
    task.await.unwrap().as_nanos() as f64 / f64::from(CYCLES)
}

const TASKS: usize = 1000;
const INCREMENTS: u64 = 100_000;

/// One run of the contended case: 1000 tasks on one id, each looping lock → counter += 1 →
/// unlock until 100,000 increments in all.
#[derive(Debug, Clone, Copy)]
struct Contended {
    /// Increments per second.
    rate: f64,
    /// The turns of the task that took the most.
    busiest: u64,
    /// Tasks that never got a turn.
    starved: usize,
}

impl Contended {
    /// One task took more than 10× its fair share.
    fn taken_over(&self) -> bool {
        self.busiest > 10 * INCREMENTS / TASKS as u64
    }
}

async fn contended(side: Side) -> Contended {
    let counter = Arc::new(AtomicU64::new(0));
    let (service, map, pool) = (
        Service::from_backend(LocalService::new()),
        Arc::new(Map::default()),
        Arc::new(Pool::new()),
    );
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let (counter, service, map, pool) =
            (counter.clone(), service.clone(), map.clone(), pool.clone());
        tasks.push(tokio::spawn(async move {
            let id = "bench/contended";
            // A load and a store: only the lock keeps increments from being lost.
            let turn = || {
                let n = counter.load(Relaxed);
                (n < INCREMENTS).then(|| counter.store(n + 1, Relaxed))
            };
            let mut turns = 0u64;
            match side {
                Side::Ours => {
                    let session = service.new_session(config()).await.unwrap();
                    let locker = session.new_locker(id);
                    loop {
                        let held = locker.lock().await.unwrap();
                        let more = turn();
                        held.unlock().await.unwrap();
                        if more.is_none() {
                            break;
                        }
                        turns += 1;
                    }
                }
                Side::Map => loop {
                    let guard = map.lock(id).await;
                    let more = turn();
                    drop(guard);
                    if more.is_none() {
                        break;
                    }
                    turns += 1;
                },
                Side::Lockable => loop {
                    let guard = pool.async_lock(id.to_owned()).await;
                    let more = turn();
                    drop(guard);
                    if more.is_none() {
                        break;
                    }
                    turns += 1;
                },
            }
            turns
        }));
    }
    let mut turns = Vec::with_capacity(TASKS);
    for t in tasks {
        turns.push(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    assert_eq!(counter.load(Relaxed), INCREMENTS, "{side:?} lost an update");
    assert_eq!(turns.iter().sum::<u64>(), INCREMENTS);
    Contended {
        rate: INCREMENTS as f64 / elapsed.as_secs_f64(),
        busiest: turns.iter().copied().max().unwrap_or(0),
        starved: turns.iter().filter(|t| **t == 0).count(),
    }
}

/// The seed example: 1000 tasks, each its own session (ours), one increment each under one
/// lock: milliseconds per run.
async fn seed(side: Side) -> f64 {
    let counter = Arc::new(AtomicU64::new(0));
    let (service, map, pool) = (
        Service::from_backend(LocalService::new()),
        Arc::new(Map::default()),
        Arc::new(Pool::new()),
    );
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let (counter, service, map, pool) =
            (counter.clone(), service.clone(), map.clone(), pool.clone());
        tasks.push(tokio::spawn(async move {
            let increment = || counter.store(counter.load(Relaxed) + 1, Relaxed);
            match side {
                Side::Ours => {
                    let session = service.new_session(config()).await.unwrap();
                    let held = session.new_locker("mylock").lock().await.unwrap();
                    assert!(!held.is_lost());
                    increment();
                    held.unlock().await.unwrap();
                    session.close().await.unwrap();
                }
                Side::Map => {
                    let guard = map.lock("mylock").await;
                    increment();
                    drop(guard);
                }
                Side::Lockable => {
                    let guard = pool.async_lock("mylock".to_owned()).await;
                    increment();
                    drop(guard);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Relaxed), 1000);
    start.elapsed().as_secs_f64() * 1e3
}

/// Peak resident memory of this process since the last [`reset_peak`], in KiB (Linux).
fn peak_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak resident memory to the current one (Linux ≥ 4.0).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// 1,000,000 distinct ids locked and unlocked once each, in one task: seconds, the peak
/// resident memory above the start in MiB, and how many ids the structure still keeps.
#[derive(Debug, Clone, Copy)]
struct Distinct {
    secs: f64,
    grew_mib: Option<f64>,
    left: usize,
}

async fn distinct(side: Side) -> Distinct {
    const IDS: u32 = 1_000_000;
    let task = tokio::spawn(async move {
        reset_peak();
        let before = peak_kib();
        let start = Instant::now();
        let left = match side {
            Side::Ours => {
                let local = LocalService::new();
                let service = Service::from_backend(local.clone());
                let session = service.new_session(config()).await.unwrap();
                for n in 0..IDS {
                    let held = session.new_locker(&format!("job/{n}")).lock().await;
                    held.unwrap().unlock().await.unwrap();
                }
                local.active_ids()
            }
            Side::Map => {
                let map = Map::default();
                for n in 0..IDS {
                    drop(map.lock(&format!("job/{n}")).await);
                }
                map.len()
            }
            Side::Lockable => {
                let pool = Pool::new();
                for n in 0..IDS {
                    drop(pool.async_lock(format!("job/{n}")).await);
                }
                pool.num_locked()
            }
        };
        let secs = start.elapsed().as_secs_f64();
        let grew_mib = peak_kib()
            .zip(before)
            .map(|(after, before)| after.saturating_sub(before) as f64 / 1024.0);
        Distinct {
            secs,
            grew_mib,
            left,
        }
    });
    task.await.unwrap()
}

/// A table row: the three sides' figures, ours over the best baseline, the target, and
/// whether it held.
fn row(name: &str, figures: [String; 3], ratio: String, target: &str, held: bool) {
    let [ours, map, lockable] = figures;
    let verdict = if held { "yes" } else { "**no**" };
    println!("| {name} | {ours} | {map} | {lockable} | {ratio} | {target} | {verdict} |");
}

fn main() {
    // `cargo bench` passes `--bench`; a bare word runs only that case: uncontended |
    // contended | seed | distinct; `contended-ours` (`-map`, `-lockable`) runs one side of the
    // contended case 50 times, `uncontended-ours` (…) 20 times, `seed-ours` (…) one side of the
    // seed example 2000 times, for a profiler.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let rt = runtime();
    // One side alone, many times: for a profiler.
    if let Some((case, side)) = only.as_deref().and_then(|o| o.split_once('-')) {
        let side = match side {
            "ours" => Side::Ours,
            "map" => Side::Map,
            _ => Side::Lockable,
        };
        match case {
            "seed" => (0..2000).for_each(|_| {
                rt.block_on(seed(side));
            }),
            "uncontended" => (0..20).for_each(|_| {
                rt.block_on(uncontended(side));
            }),
            _ => (0..50).for_each(|_| {
                rt.block_on(contended(side));
            }),
        }
        return;
    }
    println!(
        "| case | local: | map | lockable | local: ÷ best baseline | target | held |\n|---|---:|---:|---:|---:|---|---|"
    );
    if run("uncontended") {
        let [ours, map, pool] = alternating(&rt, 5, 3, uncontended).map(median);
        let ratio = ours / map.min(pool);
        row(
            "uncontended lock+unlock, one task (ns)",
            [ours, map, pool].map(|v| format!("{v:.1}")),
            format!("{ratio:.2}× time"),
            "≤ 0.6×",
            ratio <= 0.6,
        );
    }
    if run("contended") {
        let [ours, map, pool] = alternating(&rt, 4, 10, contended);
        let rate = |v: &[Contended]| median(v.iter().map(|c| c.rate).collect());
        let busiest = |v: &[Contended]| v.iter().map(|c| c.busiest).max().unwrap_or(0);
        let taken_over = |v: &[Contended]| v.iter().filter(|c| c.taken_over()).count();
        let starved_runs = |v: &[Contended]| v.iter().filter(|c| c.starved > 0).count();
        let most_starved = |v: &[Contended]| v.iter().map(|c| c.starved).max().unwrap_or(0);
        let ratio = rate(&ours) / rate(&map).max(rate(&pool));
        row(
            "1000 tasks on one id: increments/s (median)",
            [&ours, &map, &pool].map(|v| format!("{:.0}", rate(v))),
            format!("{ratio:.2}× rate"),
            "≥ 1.0×",
            ratio >= 1.0,
        );
        row(
            &format!(
                "… runs with a task over 10× its fair share (of {})",
                ours.len()
            ),
            [&ours, &map, &pool].map(|v| taken_over(v).to_string()),
            "–".to_owned(),
            "≤ map's",
            taken_over(&ours) <= taken_over(&map),
        );
        row(
            "… busiest task's turns, worst run (fair share 100)",
            [&ours, &map, &pool].map(|v| busiest(v).to_string()),
            format!("{:.2}× map's", busiest(&ours) as f64 / busiest(&map) as f64),
            "≤ 2× map's",
            busiest(&ours) <= 2 * busiest(&map),
        );
        row(
            "… runs where a task got no turn (most tasks without one)",
            [&ours, &map, &pool].map(|v| format!("{} ({})", starved_runs(v), most_starved(v))),
            "–".to_owned(),
            "0",
            starved_runs(&ours) == 0,
        );
    }
    if run("seed") {
        let [ours, map, pool] = alternating(&rt, 10, 11, seed).map(median);
        let ratio = ours / map.min(pool);
        row(
            "seed example, 1000 tasks (ms per run)",
            [ours, map, pool].map(|v| format!("{v:.2}")),
            format!("{ratio:.2}× time"),
            "≤ 0.9×",
            ratio <= 0.9,
        );
    }
    if run("distinct") {
        let [ours, map, pool] = alternating(&rt, 1, 1, distinct).map(|v| v[0]);
        let ratio = ours.secs / map.secs.min(pool.secs);
        let mib = |d: Distinct| d.grew_mib.map_or("?".to_owned(), |m| format!("{m:.1}"));
        row(
            "1,000,000 distinct ids once each (s)",
            [ours, map, pool].map(|d| format!("{:.2}", d.secs)),
            format!("{ratio:.2}× time"),
            "≤ 1.0×",
            ratio <= 1.0,
        );
        row(
            "… peak RSS growth (MiB), ids left",
            [ours, map, pool].map(|d| format!("{}, {}", mib(d), d.left)),
            "–".to_owned(),
            "0 left, flat",
            ours.left == 0 && ours.grew_mib.is_none_or(|m| m < 16.0),
        );
    }
}
