//! A program that returns from `main` (or panics) while it holds a lock, without closing its
//! session: its keys, records and lease go at once, not after its TTL and lock-delay.
//!
//! The program is this test binary run again as a child (`exit_child`, selected with
//! `--exact`), which opens the shared cluster, takes the lock, and returns from its runtime
//! the way `#[tokio::main]` does: its locals dropped, then the runtime.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lock_core::SessionConfig;
use lock_etcd as _;

const CHILD: &str = "LOCK_EXIT_CHILD";
const URI: &str = "LOCK_EXIT_URI";
/// Long, so that waiting for it would show: the lease and then the lock-delay.
const TTL: Duration = Duration::from_secs(10);

/// The child: does nothing unless the parent test started it.
#[test]
fn exit_child() {
    let Ok(how) = std::env::var(CHILD) else {
        return;
    };
    let uri = std::env::var(URI).expect("the parent sets the connection string");
    // `#[tokio::main(flavor = "current_thread")]` for the return (nothing runs after `main`'s
    // future: deterministic), the default multi-thread runtime for the panic.
    let runtime = match how.as_str() {
        "panic" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .unwrap();
    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            let service = lock_core::new(&uri).await.unwrap();
            let session = service.new_session(SessionConfig::new(TTL)).await.unwrap();
            let mut locker = session.new_locker("x");
            let held = locker.lock().await.unwrap();
            println!("locked {}", held.fencing_token());
            if how == "panic" {
                panic!("the program panics while it holds the lock");
            }
            // Returns holding it: `held`, `locker`, `session` and `service` drop here.
        })
    }));
    drop(runtime); // as `#[tokio::main]` does when `main` returns (or unwinds)
    assert_eq!(ended.is_err(), how == "panic");
}

/// Runs the child, which takes the lock and exits as `how` says; returns how long another
/// program then waited for the lock.
fn next_grant_after(test: &str, how: &str) -> Option<Duration> {
    let endpoints = common::shared(test)?;
    let prefix = format!("exit-{how}-{}/", std::process::id());
    let uri = format!("etcd:{endpoints}?prefix={prefix}");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "exit_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, how)
        .env(URI, &uri)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "the child failed: {out}");
    assert!(out.contains("locked "), "the child took no lock: {out}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Some(runtime.block_on(async {
        let service = lock_core::new(&uri).await.unwrap();
        let limit = Duration::from_secs(30);
        let config = SessionConfig::new(TTL).with_timeout(limit);
        let session = service.new_session(config).await.unwrap();
        let started = Instant::now();
        let held = session.new_locker("x").lock().await.unwrap();
        let waited = started.elapsed();
        eprintln!(
            "{how}: the next program was granted the lock {waited:?} after the holder exited"
        );
        held.unlock().await.unwrap();
        service.close().await.unwrap();
        waited
    }))
}

#[test]
fn returning_from_main_while_holding_frees_the_lock_at_once() {
    let Some(waited) = next_grant_after("exit_return", "return") else {
        return;
    };
    assert!(
        waited < Duration::from_secs(2),
        "the next program waited {waited:?} for a lock whose holder returned from main \
         (TTL {TTL:?})"
    );
}

#[test]
fn panicking_while_holding_frees_the_lock_at_once() {
    let Some(waited) = next_grant_after("exit_panic", "panic") else {
        return;
    };
    assert!(
        waited < Duration::from_secs(2),
        "the next program waited {waited:?} for a lock whose holder panicked (TTL {TTL:?})"
    );
}
