//! The seed example: 1000 tasks, each with its own session, take the same lock and increment a
//! counter that only the lock protects. Prints `1000`.
//!
//! ```sh
//! cargo run --example counter                       # local: backend
//! cargo run --example counter --features lock-examples/etcd -- etcd:http://127.0.0.1:2379
//! ```

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use lock::{Service, SessionConfig};

#[tokio::main]
async fn main() -> lock::Result<()> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "local:".to_owned());
    let service: Arc<dyn Service> = lock::new(&uri).await?.into();
    let config = SessionConfig::new(Duration::from_secs(10));
    let id = "mylock";
    // A load followed by a store is not atomic: only the lock keeps increments from being lost.
    let counter = Arc::new(AtomicU64::new(0));
    let niter = 1000;

    let mut tasks = Vec::with_capacity(niter);
    for _ in 0..niter {
        let (service, counter) = (service.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let session = service.new_session(&config).await?;
            let locker = session.new_locker(id);
            let held = locker.lock().await?;
            if held.is_lost() {
                panic!("lost lock");
            }
            counter.store(counter.load(Relaxed) + 1, Relaxed);
            locker.unlock().await?;
            session.close().await
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked")?;
    }
    println!("{}", counter.load(Relaxed));
    service.close().await
}
