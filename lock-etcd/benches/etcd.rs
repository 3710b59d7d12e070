//! `cargo xtask bench etcd`: the `etcd:` backend against baselines measured in the same run on
//! the same etcd (a fresh single member unless stated):
//!
//! - F, the floor: sequential `put` + `delete` of one key with etcd-client;
//! - R, etcd's own lock: the `Lock`/`Unlock` RPC (the server-side `concurrency.Mutex`) with
//!   leases that outlive the run.
//!
//! Prints a Markdown table (the one in docs/BENCHMARKS.md).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, LockOptions};
use lock_core::{Service, SessionConfig};
use lock_etcd::{EtcdConfig, EtcdService};

const UNCONTENDED: usize = 1000;
const CONTENDERS: usize = 16;
const CONTENDED_FOR: Duration = Duration::from_secs(5);

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("bench/{name}/{nanos:x}")
}

async fn ours(endpoints: &str) -> Service {
    ours_with(endpoints, "").await
}

/// The two settings of `lock-delay` compared side by side: the default, and the behaviour
/// before lock-delays existed (`lock-delay=0`: no delay, and the waiter's confirming read).
const SETTINGS: [(&str, &str); 2] = [("auto", ""), ("lock-delay=0", "&lock-delay=0")];

/// Ours with extra connection-string options (`&lock-delay=0`).
async fn ours_with(endpoints: &str, options: &str) -> Service {
    open(&format!(
        "etcd:{endpoints}?prefix={}/{options}",
        unique("ours")
    ))
    .await
}

/// An `etcd:` service from its connection string.
async fn open(uri: &str) -> Service {
    let config = EtcdConfig::from_uri(uri).unwrap();
    lock_core::backend::service(EtcdService::connect(config).await.unwrap())
}

async fn raw(endpoints: &str) -> Client {
    Client::connect(endpoints.split(',').collect::<Vec<_>>(), None)
        .await
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Mean, p50 and p99 of `n` sequential runs of `f`.
async fn timed<F, Fut>(n: usize, mut f: F) -> (Duration, Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed());
    }
    let mean = start.elapsed() / n as u32;
    times.sort();
    (mean, percentile(&times, 0.5), percentile(&times, 0.99))
}

struct Row {
    name: String,
    ours: String,
    baseline: String,
    ratio: String,
    target: &'static str,
}

/// Mean, p50 and p99 of a set of cycle times.
fn summary(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    times.sort();
    (mean, percentile(&times, 0.5), percentile(&times, 0.99))
}

/// Row 1 (F against ours, in alternating blocks so that both see the same drift of the
/// machine and of etcd); returns the sequential put rate.
async fn floor_and_uncontended(endpoints: &str, rows: &mut Vec<Row>) -> f64 {
    const BLOCKS: usize = 10;
    let kv = raw(endpoints).await.kv_client();
    let key = unique("floor");
    let service = ours(endpoints).await;
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut locker = session.new_locker("uncontended");
    let (mut floor, mut mine) = (Vec::new(), Vec::new());
    for _ in 0..BLOCKS {
        for _ in 0..UNCONTENDED / BLOCKS {
            let mut kv = kv.clone();
            let t = Instant::now();
            kv.put(key.as_str(), "x", None).await.unwrap();
            kv.delete(key.as_str(), None).await.unwrap();
            floor.push(t.elapsed());
        }
        for _ in 0..UNCONTENDED / BLOCKS {
            let t = Instant::now();
            let _held = locker.lock().await.unwrap();
            locker.unlock().await.unwrap();
            mine.push(t.elapsed());
        }
    }
    service.close().await.unwrap();
    let (p_mean, _, _) = timed(UNCONTENDED, || {
        let (mut kv, key) = (kv.clone(), key.clone());
        async move {
            kv.put(key.as_str(), "x", None).await.unwrap();
        }
    })
    .await;
    kv.clone().delete(key.as_str(), None).await.unwrap();
    let (f_mean, f50, f99) = summary(floor);
    let (o_mean, o50, o99) = summary(mine);
    rows.push(Row {
        name: "1. uncontended lock+unlock, one task (ms/cycle; p50/p99)".into(),
        ours: format!("{:.3} ({:.3}/{:.3})", ms(o_mean), ms(o50), ms(o99)),
        baseline: format!("F {:.3} ({:.3}/{:.3})", ms(f_mean), ms(f50), ms(f99)),
        ratio: format!("{:.2}× F", o_mean.as_secs_f64() / f_mean.as_secs_f64()),
        target: "≤ 1.1× F",
    });
    1.0 / p_mean.as_secs_f64()
}

/// R: the Lock RPC, 16 contenders each with its own lease; handoffs per second.
async fn contended_rpc(endpoints: &str) -> f64 {
    let client = raw(endpoints).await;
    let name = unique("rpc");
    let stop = Instant::now() + CONTENDED_FOR;
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONTENDERS {
        let (mut client, name, count) = (client.clone(), name.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let lease = client.lease_grant(60, None).await.unwrap().id();
            while Instant::now() < stop {
                let key = client
                    .lock(name.as_str(), Some(LockOptions::new().with_lease(lease)))
                    .await
                    .unwrap();
                client.unlock(key.key()).await.unwrap();
                count.fetch_add(1, Relaxed);
            }
            client.lease_revoke(lease).await.unwrap();
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Ours: 16 tasks, each with its own session, on one id; handoffs per second.
async fn contended_ours(endpoints: &str, options: &str) -> f64 {
    contended_on(endpoints, options, None).await
}

/// 16 tasks, each with its own session, on one id: the lock, or (`Some(n)`) a semaphore of `n`
/// permits; grants per second.
async fn contended_on(endpoints: &str, options: &str, permits: Option<u32>) -> f64 {
    let service = ours_with(endpoints, options).await;
    let stop = Instant::now() + CONTENDED_FOR;
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONTENDERS {
        let (service, count) = (service.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let session = service
                .new_session(SessionConfig::new(Duration::from_secs(10)))
                .await
                .unwrap();
            let mut locker = match permits {
                Some(n) => session.new_semaphore("contended", n).unwrap(),
                None => session.new_locker("contended"),
            };
            while Instant::now() < stop {
                let _held = locker.lock().await.unwrap();
                locker.unlock().await.unwrap();
                count.fetch_add(1, Relaxed);
            }
            session.close().await.unwrap();
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = count.load(Relaxed) as f64 / start.elapsed().as_secs_f64();
    service.close().await.unwrap();
    rate
}

/// Row 2 (and its 3-member twin): ours with each `lock-delay` setting beside R.
async fn contended(endpoints: &str, put_rate: Option<f64>, label: &str, rows: &mut Vec<Row>) {
    let r_rate = contended_rpc(endpoints).await;
    for (setting, options) in SETTINGS {
        let o_rate = contended_ours(endpoints, options).await;
        let (baseline, ratio, target) = match put_rate {
            Some(puts) => (
                format!("R {r_rate:.0}; puts/s {puts:.0}"),
                format!("{:.2}× R; {:.2}× puts", o_rate / r_rate, o_rate / puts),
                if setting == "auto" {
                    "≥ 1500/s; ≥ 3× R"
                } else {
                    "today's, for comparison"
                },
            ),
            None => (
                format!("R {r_rate:.0}"),
                format!("{:.2}× R", o_rate / r_rate),
                if setting == "auto" {
                    "≥ 3× R"
                } else {
                    "today's, for comparison"
                },
            ),
        };
        rows.push(Row {
            name: format!(
                "{label}{CONTENDERS} tasks on one id, own sessions (handoffs/s), {setting}"
            ),
            ours: format!("{o_rate:.0}"),
            baseline,
            ratio,
            target,
        });
    }
}

/// The seed example on `service`: the wall time, or the first error.
async fn seed_ours(service: &Service, sessions: usize) -> Result<Duration, String> {
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let (service, counter) = (service.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let config = SessionConfig::new(Duration::from_secs(30));
            let session = service.new_session(config).await?;
            let mut locker = session.new_locker("seed");
            let held = locker.lock().await?;
            assert!(!held.is_lost());
            counter.store(counter.load(Relaxed) + 1, Relaxed);
            locker.unlock().await?;
            session.close().await
        }));
    }
    let mut first_error = None;
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            first_error.get_or_insert(e.to_string());
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    assert_eq!(counter.load(Relaxed), sessions as u64, "lost updates");
    Ok(start.elapsed())
}

async fn seed_rpc(endpoints: &str, sessions: usize) -> Duration {
    let client = raw(endpoints).await;
    let name = unique("seed-rpc");
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let (mut client, name, counter) = (client.clone(), name.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let lease = client.lease_grant(60, None).await.unwrap().id();
            let key = client
                .lock(name.as_str(), Some(LockOptions::new().with_lease(lease)))
                .await
                .unwrap();
            counter.store(counter.load(Relaxed) + 1, Relaxed);
            client.unlock(key.key()).await.unwrap();
            client.lease_revoke(lease).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Relaxed), sessions as u64);
    start.elapsed()
}

async fn seed(endpoints: &str, rows: &mut Vec<Row>) {
    let secs = |d: &Result<Duration, String>| match d {
        Ok(d) => format!("{:.2}", d.as_secs_f64()),
        Err(e) => format!("failed: {e}"),
    };
    let r = seed_rpc(endpoints, 1000).await;
    // `lock-delay=0` first, then the default, whose service also runs the 10,000.
    let mut auto = None;
    for (setting, options) in SETTINGS.iter().rev() {
        let service = ours_with(endpoints, options).await;
        let o = seed_ours(&service, 1000).await;
        rows.push(Row {
            name: format!("3. seed example, 1000 sessions (s), {setting}"),
            ours: secs(&o),
            baseline: format!("R {:.2}", r.as_secs_f64()),
            ratio: o.as_ref().map_or("–".into(), |o| {
                format!("{:.2}× R", o.as_secs_f64() / r.as_secs_f64())
            }),
            target: if *setting == "auto" {
                "≤ 0.5× R"
            } else {
                "today's, for comparison"
            },
        });
        match *setting {
            "auto" => auto = Some((service, o)),
            _ => {
                let _ = service.close().await;
            }
        }
    }
    let (service, o) = auto.expect("SETTINGS has auto");
    let limit = Duration::from_secs(180);
    let o10 = tokio::time::timeout(limit, seed_ours(&service, 10_000))
        .await
        .unwrap_or_else(|_| Err(format!("not done within {}s", limit.as_secs())));
    let _ = service.close().await;
    let ratio = match (&o, &o10) {
        (Ok(one), Ok(ten)) => format!("{:.1}× (10k/1k)", ten.as_secs_f64() / one.as_secs_f64()),
        _ => "–".into(),
    };
    rows.push(Row {
        name: "4. seed example, 10,000 sessions (s)".into(),
        ours: secs(&o10),
        baseline: format!("ours at 1000: {}", secs(&o)),
        ratio,
        target: "≤ 12×, no error, no lost update",
    });
}

/// etcd's own counter `name` (a line of its `/metrics`, labels included), summed over the
/// members in `endpoints`.
fn server_metric(endpoints: &str, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut total = 0.0;
    for endpoint in endpoints.split(',') {
        let host = endpoint.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(host).unwrap();
        write!(
            conn,
            "GET /metrics HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        total += text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l[name.len()..].trim().parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

/// Requests that read (ranges, also inside txns) and that write (puts, deletes), as etcd
/// counted them.
fn server_ops(endpoints: &str) -> (f64, f64) {
    (
        server_metric(endpoints, "etcd_mvcc_range_total"),
        server_metric(endpoints, "etcd_mvcc_put_total")
            + server_metric(endpoints, "etcd_mvcc_delete_total"),
    )
}

/// CPU time this process has used (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name (which is in parentheses): utime is the 12th, stime
    // the 13th, in clock ticks of 1/100 s.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// 10,000 waiters queued on one id, released one after another: how many wake-ups and how
/// many etcd requests each release costs.
async fn waiters(endpoints: &str, rows: &mut Vec<Row>) {
    const WAITERS: usize = 10_000;
    const SESSIONS: usize = 100;
    let prefix = format!("{}/", unique("waiters"));
    let config = EtcdConfig::from_uri(&format!("etcd:{endpoints}?prefix={prefix}")).unwrap();
    let service = EtcdService::connect(config).await.unwrap();
    let ttl = SessionConfig::new(Duration::from_secs(60));
    let holder = service.new_session(ttl).await.unwrap();
    let mut first = holder.new_locker("queue");
    let _held = first.lock().await.unwrap();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(service.new_session(ttl).await.unwrap());
    }
    let order = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..WAITERS {
        let (session, order) = (sessions[i % SESSIONS].clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let mut locker = session.new_locker("queue");
            let held = locker.lock().await.unwrap();
            assert!(!held.is_lost());
            order.fetch_add(1, Relaxed);
            locker.unlock().await.unwrap();
        }));
    }
    // Wait until every waiter's key is in etcd.
    let mut kv = raw(endpoints).await.kv_client();
    let range = format!("{prefix}queue/");
    let count_only = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    while kv
        .get(range.as_str(), Some(count_only.clone()))
        .await
        .unwrap()
        .count()
        < (WAITERS + 1) as i64
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = service.stats();
    let (reads, writes) = server_ops(endpoints);
    let start = Instant::now();
    first.unlock().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let after = service.stats();
    let (reads_after, writes_after) = server_ops(endpoints);
    assert_eq!(order.load(Relaxed), WAITERS as u64);
    drop(sessions);
    drop(holder);
    service.close().await.unwrap();
    let releases = WAITERS as f64; // the holder's, then every waiter's but the last
    let wakeups = (after.waiter_wakeups - before.waiter_wakeups) as f64;
    rows.push(Row {
        name: format!(
            "4b. {WAITERS} waiters on one id, released in turn (wake-ups, etcd reads, writes per release)"
        ),
        ours: format!(
            "{:.2} wake-ups, {:.2} reads, {:.2} writes ({:.0} handoffs/s)",
            wakeups / releases,
            (reads_after - reads) / releases,
            (writes_after - writes) / releases,
            releases / elapsed.as_secs_f64()
        ),
        baseline: "–".into(),
        ratio: format!("{:.2} wake-ups per release", wakeups / releases),
        target: "exactly 1 wake-up per release",
    });
}

/// 1,000 idle sessions held for 60 s by one service.
async fn idle(endpoints: &str, rows: &mut Vec<Row>) {
    const SESSIONS: usize = 1000;
    const FOR: Duration = Duration::from_secs(60);
    let config =
        EtcdConfig::from_uri(&format!("etcd:{endpoints}?prefix={}/", unique("idle"))).unwrap();
    let service = EtcdService::connect(config).await.unwrap();
    let streams_method = "grpc_server_started_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"}";
    let server_streams = server_metric(endpoints, streams_method);
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(
            service
                .open_session(SessionConfig::default())
                .await
                .unwrap(),
        );
    }
    let before = service.stats();
    let cpu = cpu_time();
    let start = Instant::now();
    tokio::time::sleep(FOR).await;
    let cpu = cpu_time() - cpu;
    let wall = start.elapsed();
    let after = service.stats();
    let streams = server_metric(endpoints, streams_method) - server_streams;
    let ended = sessions
        .iter()
        .filter(|s| lock_core::backend::Session::done(*s).is_some_and(|d| d.is_done()))
        .count();
    let sent = after.keep_alives_sent - before.keep_alives_sent;
    let unanswered = after.keep_alives_sent - after.keep_alives_acknowledged;
    service.close().await.unwrap();
    let share = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    rows.push(Row {
        name: format!(
            "5. {SESSIONS} idle sessions (TTL {}s) for {} s: client CPU, keep-alive streams, keep-alives",
            SessionConfig::default().ttl.as_secs(),
            FOR.as_secs()
        ),
        ours: format!(
            "{share:.2}% of one core; {} stream(s) (etcd counted {streams:.0}); {sent} sent, {unanswered} unanswered, {ended} sessions ended",
            after.keep_alive_streams_opened
        ),
        baseline: "–".into(),
        ratio: format!("{share:.2}% CPU"),
        target: "< 2% CPU, 1 stream, none missed",
    });
}

/// The TTL of the sessions in the recovery row.
const RECOVERY_TTL: Duration = Duration::from_secs(3);

/// The child process of the recovery row: takes the lock `recovery` on the service in
/// `BENCH_HOLD_URI`, says `held`, and holds it until it is killed.
fn hold() {
    in_child(|session| async move {
        let mut locker = session.new_locker("recovery");
        let held = locker.lock().await.unwrap();
        (held, locker)
    });
}

/// The body of a child process of the bench: opens a session (TTL [`RECOVERY_TTL`]) on the
/// service in `BENCH_HOLD_URI`, takes what `take` takes, says `held`, and keeps it until it is
/// killed.
fn in_child<F, Fut, T>(take: F)
where
    F: FnOnce(lock_core::Session) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let uri = std::env::var("BENCH_HOLD_URI").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let service = open(&uri).await;
        let session = service
            .new_session(SessionConfig::new(RECOVERY_TTL))
            .await
            .unwrap();
        let _kept = take(session).await;
        println!("held");
        std::future::pending::<()>().await;
    });
}

/// Starts this bench binary as a child that holds (`mode` `hold`: the lock `recovery`; `lead`:
/// leadership of `leader`) on the service at `uri`, and waits until it says it does.
fn holding_child(mode: &str, uri: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg(mode)
        .env("BENCH_HOLD_URI", uri)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    child
}

/// Row 6: a holder (a child process) killed with SIGKILL, to the next grant, with each
/// `lock-delay` setting. etcd ends the lease within the TTL of its last keep-alive; the
/// default then waits out the holder's lock-delay (its TTL), since a lease that ran out cannot
/// be told from one revoked early.
async fn recovery(endpoints: &str, rows: &mut Vec<Row>) {
    const ROUNDS: usize = 3;
    let mut zero = String::new();
    for (setting, options) in SETTINGS.iter().rev() {
        let mut times = Vec::new();
        for _ in 0..ROUNDS {
            let uri = format!("etcd:{endpoints}?prefix={}/{options}", unique("recovery"));
            let mut child = holding_child("hold", &uri);
            let service = open(&uri).await;
            let session = service
                .new_session(SessionConfig::new(RECOVERY_TTL))
                .await
                .unwrap();
            let waiter = tokio::spawn(async move {
                let mut locker = session.new_locker("recovery");
                let held = locker.lock().await.unwrap();
                let at = Instant::now();
                drop(held);
                session.close().await.unwrap();
                at
            });
            tokio::time::sleep(Duration::from_millis(300)).await; // the waiter is queued
            let killed = Instant::now();
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let granted = waiter.await.unwrap();
            times.push(granted - killed);
            service.close().await.unwrap();
        }
        let (mean, min, max) = (
            times.iter().sum::<Duration>() / ROUNDS as u32,
            times.iter().min().unwrap(),
            times.iter().max().unwrap(),
        );
        let figure = format!(
            "{:.2} ({:.2}–{:.2})",
            mean.as_secs_f64(),
            min.as_secs_f64(),
            max.as_secs_f64()
        );
        let ttl = RECOVERY_TTL.as_secs();
        rows.push(Row {
            name: format!(
                "6. holder killed with SIGKILL → next grant, TTL {ttl} s (s, mean (min–max) of {ROUNDS}), {setting}"
            ),
            ours: figure.clone(),
            baseline: if *setting == "auto" {
                format!("lock-delay=0: {zero}")
            } else {
                "–".into()
            },
            ratio: format!("{:.2}× TTL", mean.as_secs_f64() / ttl as f64),
            target: if *setting == "auto" {
                "≤ TTL + lock-delay + 1 s"
            } else {
                "≤ TTL + 1 s"
            },
        });
        zero = figure;
    }
}

/// Row 7: semaphores beside the lock, on one cluster, each 16 tasks with their own sessions:
/// a semaphore of 1 against the lock's handoffs, a semaphore of 4 against the semaphore of 1.
async fn semaphores(endpoints: &str, rows: &mut Vec<Row>) {
    let lock = contended_on(endpoints, "", None).await;
    let one = contended_on(endpoints, "", Some(1)).await;
    let four = contended_on(endpoints, "", Some(4)).await;
    rows.push(Row {
        name: format!("7. semaphore of 1 permit, {CONTENDERS} tasks on one id (grants/s)"),
        ours: format!("{one:.0}"),
        baseline: format!("the lock: {lock:.0}"),
        ratio: format!("{:.2}× the lock", one / lock),
        target: "within 10 % of the lock",
    });
    rows.push(Row {
        name: format!("7. semaphore of 4 permits, {CONTENDERS} tasks on one id (grants/s)"),
        ours: format!("{four:.0}"),
        baseline: format!("1 permit: {one:.0}"),
        ratio: format!("{:.2}× 1 permit", four / one),
        target: "≥ 2× 1 permit",
    });
}

/// The child process of the election row: campaigns in `leader` on the service in
/// `BENCH_HOLD_URI` with the value `child`, says `held`, and leads until it is killed.
fn lead() {
    in_child(|session| async move {
        let mut election = session.new_election("leader").unwrap();
        let term = election.campaign("child").await.unwrap();
        (term, election)
    });
}

/// `etcdctl elect [args]` with its output lines, as they come.
fn etcdctl_elect(
    etcdctl: &std::path::Path,
    endpoints: &str,
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<(String, Instant)>,
) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("elect")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send((line, Instant::now()));
        }
    });
    (child, rx)
}

/// Waits for `rx` to say `value`; when it did.
fn said(rx: &std::sync::mpsc::Receiver<(String, Instant)>, value: &str) -> Instant {
    loop {
        let (line, at) = rx.recv_timeout(Duration::from_secs(120)).unwrap();
        if line == value {
            return at;
        }
    }
}

/// Row 8: a leader (a child process) killed with SIGKILL, to its successor observed (by an
/// observer of another service) and elected (its `campaign()` returned), TTL 3 s; beside the
/// same for `etcdctl elect` (whose sessions have etcd's default TTL, 60 s: it has no option).
async fn elections(endpoints: &str, rows: &mut Vec<Row>) {
    const ROUNDS: usize = 3;
    let (mut observed, mut elected) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let uri = format!("etcd:{endpoints}?prefix={}/", unique("elect"));
        let mut child = holding_child("lead", &uri);
        let service = open(&uri).await;
        let config = SessionConfig::new(RECOVERY_TTL);
        let watching = service.new_session(config).await.unwrap();
        let mut observer = watching
            .new_election("leader")
            .unwrap()
            .observe()
            .await
            .unwrap();
        let seen = tokio::spawn(async move {
            loop {
                let leader = observer.next().await.unwrap();
                if leader.is_some_and(|l| l.value_str() == Some("parent")) {
                    return Instant::now();
                }
            }
        });
        let session = service.new_session(config).await.unwrap();
        let candidate = tokio::spawn(async move {
            let mut election = session.new_election("leader").unwrap();
            let term = election.campaign("parent").await.unwrap();
            let at = Instant::now();
            term.unlock().await.unwrap();
            session.close().await.unwrap();
            at
        });
        tokio::time::sleep(Duration::from_millis(300)).await; // the candidate is queued
        let killed = Instant::now();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        observed.push(seen.await.unwrap() - killed);
        elected.push(candidate.await.unwrap() - killed);
        service.close().await.unwrap();
    }
    // etcdctl elect, once (its TTL is 60 s).
    let etcdctl = std::path::PathBuf::from(std::env::var("LOCK_ETCDCTL").unwrap_or_else(|_| {
        let bin = std::env::var("LOCK_ETCD_BIN").unwrap_or_default();
        format!("{bin}/etcdctl")
    }));
    let theirs = if etcdctl.exists() {
        let name = unique("etcdctl-elect");
        let (mut leader, said_leader) = etcdctl_elect(&etcdctl, endpoints, &[&name, "child"]);
        said(&said_leader, "child");
        let (mut listener, heard) = etcdctl_elect(&etcdctl, endpoints, &["-l", &name]);
        said(&heard, "child");
        let (mut candidate, said_candidate) =
            etcdctl_elect(&etcdctl, endpoints, &[&name, "parent"]);
        std::thread::sleep(Duration::from_millis(300));
        let killed = Instant::now();
        leader.kill().unwrap();
        leader.wait().unwrap();
        let seen = said(&heard, "parent") - killed;
        let won = said(&said_candidate, "parent") - killed;
        for child in [&mut listener, &mut candidate] {
            let _ = child.kill();
            let _ = child.wait();
        }
        format!(
            "etcdctl elect (TTL 60 s): observed {:.2}, elected {:.2}",
            seen.as_secs_f64(),
            won.as_secs_f64()
        )
    } else {
        "etcdctl not found".to_owned()
    };
    let stats = |times: &[Duration]| {
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        let (min, max) = (times.iter().min().unwrap(), times.iter().max().unwrap());
        (
            mean,
            format!(
                "{:.2} ({:.2}–{:.2})",
                mean.as_secs_f64(),
                min.as_secs_f64(),
                max.as_secs_f64()
            ),
        )
    };
    let ttl = RECOVERY_TTL.as_secs();
    let (mean, figure) = stats(&observed);
    rows.push(Row {
        name: format!("8. leader killed with SIGKILL → new leader observed, TTL {ttl} s (s, mean (min–max) of {ROUNDS})"),
        ours: figure,
        baseline: theirs.clone(),
        ratio: format!("{:.2}× TTL", mean.as_secs_f64() / ttl as f64),
        target: "≤ TTL + 1 s",
    });
    let (mean, figure) = stats(&elected);
    rows.push(Row {
        name: format!("8. leader killed with SIGKILL → new leader elected (its campaign returns), TTL {ttl} s, lock-delay auto"),
        ours: figure,
        baseline: theirs,
        ratio: format!("{:.2}× TTL", mean.as_secs_f64() / ttl as f64),
        target: "≤ TTL + lock-delay + 1 s",
    });
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("hold") {
        return hold();
    }
    if std::env::args().nth(1).as_deref() == Some("lead") {
        return lead();
    }
    let endpoints = std::env::var("LOCK_ETCD_ENDPOINTS")
        .expect("LOCK_ETCD_ENDPOINTS is not set: run `cargo xtask bench etcd`");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // `cargo bench` passes `--bench`; bare words run only those parts (for profiling):
    // uncontended | contended | seed | waiters | idle | recovery | semaphore | election |
    // cluster.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let mut rows = Vec::new();
    rt.block_on(async {
        let put_rate = if run("uncontended") || run("contended") {
            floor_and_uncontended(&endpoints, &mut rows).await
        } else {
            0.0
        };
        if run("contended") {
            contended(&endpoints, Some(put_rate), "2. ", &mut rows).await;
        }
        if run("seed") {
            seed(&endpoints, &mut rows).await;
        }
        if run("waiters") {
            waiters(&endpoints, &mut rows).await;
        }
        if run("idle") {
            idle(&endpoints, &mut rows).await;
        }
        if run("recovery") {
            recovery(&endpoints, &mut rows).await;
        }
        if run("semaphore") {
            semaphores(&endpoints, &mut rows).await;
        }
        if run("election") {
            elections(&endpoints, &mut rows).await;
        }
        if let Some(cluster) = std::env::var("LOCK_ETCD_CLUSTER_ENDPOINTS")
            .ok()
            .filter(|_| run("cluster"))
        {
            let mut informative = Vec::new();
            floor_and_uncontended(&cluster, &mut informative).await;
            for mut row in informative {
                row.name = format!("3-member cluster: {}", row.name.trim_start_matches("1. "));
                row.target = "informative";
                rows.push(row);
            }
            contended(&cluster, None, "3-member cluster: ", &mut rows).await;
        }
    });
    println!("| benchmark | etcd: | baseline | ratio | target |");
    println!("|---|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name, r.ours, r.baseline, r.ratio, r.target
        );
    }
}
