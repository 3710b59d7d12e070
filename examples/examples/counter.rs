//! The seed example: 1000 tasks, each with its own session, take the same lock and increment a
//! counter that only the lock protects. Prints `1000`.
//!
//! ```sh
//! cargo run --example counter                       # local: backend
//! cargo run --example counter --features lock-examples/etcd -- etcd:http://127.0.0.1:2379
//! ```

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use lock::SessionConfig;

/// A load followed by a store is not atomic: only the lock keeps increments from being lost.
static COUNTER: AtomicU64 = AtomicU64::new(0);

#[tokio::main]
async fn main() -> lock::Result<()> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "local:".to_owned());
    let service = lock::new(&uri).await?;
    let config = SessionConfig::new(Duration::from_secs(10));
    let id = "mylock";

    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let session = service.new_session(config).await?;
            let held = session.new_locker(id).lock().await?;
            if held.is_lost() {
                panic!("lost lock");
            }
            COUNTER.store(COUNTER.load(Relaxed) + 1, Relaxed);
            held.unlock().await?;
            session.close().await
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked")?;
    }
    println!("{}", COUNTER.load(Relaxed));
    service.close().await
}
