//! False losses of fresh sessions on a healthy cluster: N times, what `lock exec` does — a new
//! service (its own connection), a session, a lock held for a moment, then everything closed —
//! counting holds reported lost while nobody took them (and any error).
//!
//! ```text
//! cargo xtask etcd                                   # prints etcd:http://127.0.0.1:…
//! cargo run --release -p lock-etcd --example fresh_sessions -- \
//!     --endpoints http://127.0.0.1:…,… [--sessions 5000] [--parallel 16] [--hold-ms 50]
//! ```
//!
//! Each session's id is its own, so a hold can only end by this program's unlock: any loss
//! before it is a false one. Exits non-zero if there was any.

#[path = "common/args.rs"]
mod args;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::SessionConfig;

use args::{arg, number};
use lock_etcd::{EtcdConfig, EtcdService};

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    false_losses: AtomicU64,
    errors: AtomicU64,
}

async fn one(uri: &str, n: u64, hold: Duration, counts: &Counts) -> Result<(), String> {
    let config = EtcdConfig::from_uri(uri).map_err(|e| e.to_string())?;
    let service = EtcdService::connect(config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .map_err(|e| format!("session: {e}"))?;
    let mut locker = session.new_locker(&format!("fresh-{n}"));
    let held = locker.lock().await.map_err(|e| format!("lock: {e}"))?;
    tokio::time::sleep(hold).await;
    if held.is_lost() || session.done().is_done() {
        counts.false_losses.fetch_add(1, Relaxed);
        let why = held
            .loss()
            .map_or_else(|| "no cause recorded".to_owned(), |l| l.to_string());
        eprintln!("session {n}: FALSE LOSS {hold:?} after the grant: {why}");
    }
    locker.unlock().await.map_err(|e| format!("unlock: {e}"))?;
    session.close().await.map_err(|e| format!("close: {e}"))?;
    service
        .close()
        .await
        .map_err(|e| format!("service close: {e}"))?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let endpoints = arg("--endpoints")
        .or_else(|| std::env::var(lock_tools::etcd::ENDPOINTS_VAR).ok())
        .expect("--endpoints http://127.0.0.1:PORT,… (or LOCK_ETCD_ENDPOINTS)");
    let (sessions, parallel) = (number("--sessions", 5000), number("--parallel", 16));
    let hold = Duration::from_millis(number("--hold-ms", 50));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let uri = Arc::new(format!("etcd:{endpoints}?prefix=fresh-sessions-{nanos:x}/"));
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..parallel {
        let (uri, counts, next) = (uri.clone(), counts.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Relaxed);
                if n >= sessions {
                    return;
                }
                if let Err(e) = one(&uri, n, hold, &counts).await {
                    counts.errors.fetch_add(1, Relaxed);
                    eprintln!("session {n}: error: {e}");
                }
                counts.done.fetch_add(1, Relaxed);
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
    let (false_losses, errors) = (
        counts.false_losses.load(Relaxed),
        counts.errors.load(Relaxed),
    );
    println!(
        "{} fresh sessions ({parallel} at a time, each holding a lock {hold:?}) in {:.1?}: \
         {false_losses} false losses, {errors} errors",
        counts.done.load(Relaxed),
        start.elapsed()
    );
    if false_losses + errors > 0 {
        std::process::exit(1);
    }
}
