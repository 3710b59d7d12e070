//! A semaphore that caps concurrent jobs: twelve render jobs, each in its own session (as if on
//! twelve machines), take one of four permits of `renders`; at most four render at once, each
//! with its permit's fencing token, and one that loses its permit stops at once.
//!
//! ```sh
//! cargo run --example semaphore                                  # local: backend
//! cargo run --example semaphore --features lock-examples/etcd -- etcd:http://127.0.0.1:2379
//! ```

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use lock::SessionConfig;

const PERMITS: u32 = 4;

#[tokio::main]
async fn main() -> lock::Result<()> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "local:".to_owned());
    let service = lock::new(&uri).await?;
    let rendering = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let jobs: Vec<_> = (1..=12)
        .map(|job| {
            let (service, rendering, most) = (service.clone(), rendering.clone(), most.clone());
            tokio::spawn(async move {
                let session = service
                    .new_session(SessionConfig::new(Duration::from_secs(10)))
                    .await?;
                let mut permit = session.new_semaphore("renders", PERMITS)?;
                let held = permit.lock().await?; // waits, in FIFO order, for a free permit
                let now = rendering.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                println!(
                    "job {job}: rendering ({now} at once, token {})",
                    held.fencing_token()
                );
                tokio::select! {
                    () = held.lost() => println!("job {job}: lost its permit; stopping at once"),
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                rendering.fetch_sub(1, SeqCst);
                held.unlock().await?; // the next job in line starts
                session.close().await
            })
        })
        .collect();
    for job in jobs {
        job.await.expect("a job panicked")?;
    }
    let most = most.load(SeqCst);
    println!("at most {most} jobs rendered at once");
    assert!(most <= PERMITS as usize);
    service.close().await
}
