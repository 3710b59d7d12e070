//! A singleton worker: many candidates race for one lock; the holder works until it loses the
//! lock (here: it gives it up after a few rounds, or its session ends), then steps down and
//! another candidate takes over. Work stops the moment `lost()` fires.
//!
//! ```sh
//! cargo run --example leader                                  # local: backend
//! cargo run --example leader --features lock-examples/etcd -- etcd:http://127.0.0.1:2379
//! ```

use std::sync::Arc;
use std::time::Duration;

use lock::{Service, SessionConfig};

async fn candidate(service: Arc<dyn Service>, name: String) -> lock::Result<()> {
    let session = service
        .new_session(&SessionConfig::new(Duration::from_secs(5)))
        .await?;
    let locker = session.new_locker("singleton-worker");
    let held = locker.lock().await?;
    println!("{name}: leader (fencing token {})", held.fencing_token());
    let mut lost = std::pin::pin!(held.lost());
    for round in 1..=3 {
        tokio::select! {
            () = &mut lost => {
                println!("{name}: lost leadership; stepping down at once");
                return Ok(());
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                println!("{name}: work round {round} with token {}", held.fencing_token());
            }
        }
    }
    println!("{name}: stepping down");
    locker.unlock().await?;
    session.close().await
}

#[tokio::main]
async fn main() -> lock::Result<()> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "local:".to_owned());
    let service: Arc<dyn Service> = lock::new(&uri).await?.into();
    let tasks: Vec<_> = (1..=3)
        .map(|n| tokio::spawn(candidate(service.clone(), format!("worker-{n}"))))
        .collect();
    for task in tasks {
        task.await.expect("a candidate panicked")?;
    }
    service.close().await
}
