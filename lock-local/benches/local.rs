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

use lock_core::SessionConfig;
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
                let service = lock_core::backend::service(LocalService::new());
                let session = service.new_session(config()).await.unwrap();
                let mut locker = session.new_locker(id);
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

/// How the contended tasks start. Both are judged: an application's tasks start as spawned,
/// and a lock's fairness among tasks that all contend shows best when they start together.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Every task makes its locker (ours), then waits until all have, then loops: what is
    /// measured is how the lock shares turns among tasks that all contend.
    Together,
    /// Each task makes its locker and loops as soon as it runs, as the independent check
    /// does. The first task loops alone until the others run: a lock that does not yield to
    /// them takes its first turns alone. When the spawning thread waits for a core (it shares
    /// the two with the workers), every lock takes over: measured, such runs spawned for over
    /// 1 ms instead of ~0.5 ms, and the busiest task took the turns taken meanwhile.
    AsSpawned,
}

async fn contended(side: Side, start_as: Start) -> Contended {
    let counter = Arc::new(AtomicU64::new(0));
    let (service, map, pool) = (
        lock_core::backend::service(LocalService::new()),
        Arc::new(Map::default()),
        Arc::new(Pool::new()),
    );
    let gate = Arc::new(tokio::sync::Barrier::new(match start_as {
        Start::Together => TASKS + 1,
        Start::AsSpawned => 1,
    }));
    let mut start = Instant::now();
    let mut tasks = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let (counter, service, map, pool, gate) = (
            counter.clone(),
            service.clone(),
            map.clone(),
            pool.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let id = "bench/contended";
            // A load and a store: only the lock keeps increments from being lost.
            let turn = || {
                let n = counter.load(Relaxed);
                (n < INCREMENTS).then(|| counter.store(n + 1, Relaxed))
            };
            let mut turns = 0u64;
            if side != Side::Ours {
                gate.wait().await;
            }
            match side {
                Side::Ours => {
                    let session = service.new_session(config()).await.unwrap();
                    let mut locker = session.new_locker(id);
                    gate.wait().await;
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
    gate.wait().await;
    if start_as == Start::Together {
        start = Instant::now();
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
    // Each side is its own program: its tasks capture only what that program needs.
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(1000);
    match side {
        Side::Ours => {
            let service = lock_core::backend::service(LocalService::new());
            for _ in 0..1000 {
                let (counter, service) = (counter.clone(), service.clone());
                tasks.push(tokio::spawn(async move {
                    let session = service.new_session(config()).await.unwrap();
                    let held = session.new_locker("mylock").lock().await.unwrap();
                    assert!(!held.is_lost());
                    counter.store(counter.load(Relaxed) + 1, Relaxed);
                    held.unlock().await.unwrap();
                    session.close().await.unwrap();
                }));
            }
        }
        Side::Map => {
            let map = Arc::new(Map::default());
            for _ in 0..1000 {
                let (counter, map) = (counter.clone(), map.clone());
                tasks.push(tokio::spawn(async move {
                    let guard = map.lock("mylock").await;
                    counter.store(counter.load(Relaxed) + 1, Relaxed);
                    drop(guard);
                }));
            }
        }
        Side::Lockable => {
            let pool = Arc::new(Pool::new());
            for _ in 0..1000 {
                let (counter, pool) = (counter.clone(), pool.clone());
                tasks.push(tokio::spawn(async move {
                    let guard = pool.async_lock("mylock".to_owned()).await;
                    counter.store(counter.load(Relaxed) + 1, Relaxed);
                    drop(guard);
                }));
            }
        }
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
                let service = lock_core::backend::service(local.clone());
                let session = service.new_session(config()).await.unwrap();
                for n in 0..IDS {
                    let held = session.new_locker(&format!("job/{n}")).lock().await;
                    held.unwrap().unlock().await.unwrap();
                }
                local.tracked_ids()
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

/// The contended case's rows: 80 runs per side, in 16 alternating blocks of 5 (the host's speed drifts
/// by up to 2× within a minute).
fn contended_rows(rt: &tokio::runtime::Runtime, start_as: Start, name: &str) {
    let [ours, map, pool] = alternating(rt, 16, 5, |side| contended(side, start_as));
    let rate = |v: &[Contended]| median(v.iter().map(|c| c.rate).collect());
    // The busiest task's turns in the median run (what "typically" means), and in the worst.
    let busiest = |v: &[Contended]| median(v.iter().map(|c| c.busiest as f64).collect());
    let worst = |v: &[Contended]| v.iter().map(|c| c.busiest).max().unwrap_or(0);
    let taken_over = |v: &[Contended]| v.iter().filter(|c| c.taken_over()).count();
    let starved_runs = |v: &[Contended]| v.iter().filter(|c| c.starved > 0).count();
    let most_starved = |v: &[Contended]| v.iter().map(|c| c.starved).max().unwrap_or(0);
    let ratio = rate(&ours) / rate(&map).max(rate(&pool));
    row(
        &format!("{name}: increments/s (median)"),
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
        "… busiest task's turns, median run (fair share 100)",
        [&ours, &map, &pool].map(|v| format!("{:.0}", busiest(v))),
        format!("{:.2}× map's", busiest(&ours) / busiest(&map)),
        "≤ 2× map's",
        busiest(&ours) <= 2.0 * busiest(&map),
    );
    row(
        "… busiest task's turns, worst run",
        [&ours, &map, &pool].map(|v| worst(v).to_string()),
        format!("{:.2}× map's", worst(&ours) as f64 / worst(&map) as f64),
        "(information)",
        true,
    );
    row(
        "… runs where a task got no turn (most tasks without one)",
        [&ours, &map, &pool].map(|v| format!("{} ({})", starved_runs(v), most_starved(v))),
        "–".to_owned(),
        "0",
        starved_runs(&ours) == 0,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a bare word runs only that case: uncontended |
    // contended (both starts) | spawned (the start as spawned only) | seed | distinct;
    // `contended-ours` (`-map`, `-lockable`) runs one side of the contended case 50 times
    // (`spawned-ours`: started as spawned), `uncontended-ours` (…) 20 times, `seed-ours` (…)
    // one side of the seed example 2000 times, for a profiler.
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
            "spawned" => (0..50).for_each(|_| {
                rt.block_on(contended(side, Start::AsSpawned));
            }),
            _ => (0..50).for_each(|_| {
                rt.block_on(contended(side, Start::Together));
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
        contended_rows(&rt, Start::Together, "1000 tasks on one id");
    }
    if run("contended") || run("spawned") {
        contended_rows(
            &rt,
            Start::AsSpawned,
            "1000 tasks on one id, started as spawned",
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
        // Three runs per side: the median time, the most memory and the most ids left.
        let [ours, map, pool] = alternating(&rt, 3, 1, distinct).map(|runs| Distinct {
            secs: median(runs.iter().map(|d| d.secs).collect()),
            grew_mib: runs.iter().filter_map(|d| d.grew_mib).reduce(f64::max),
            left: runs.iter().map(|d| d.left).max().unwrap_or(0),
        });
        let ratio = ours.secs / map.secs.min(pool.secs);
        let mib = |d: Distinct| d.grew_mib.map_or("?".to_owned(), |m| format!("{m:.1}"));
        row(
            "1,000,000 distinct ids once each (s, median of 3)",
            [ours, map, pool].map(|d| format!("{:.3}", d.secs)),
            format!("{ratio:.2}× time"),
            "≤ 1.0×",
            ratio <= 1.0,
        );
        row(
            "… peak RSS growth (MiB, most of 3), ids left",
            [ours, map, pool].map(|d| format!("{}, {}", mib(d), d.left)),
            "–".to_owned(),
            "0 left, flat",
            ours.left == 0 && ours.grew_mib.is_none_or(|m| m < 16.0),
        );
    }
}
