//! A leader loop: candidates race for one lock; the leader works until it loses the lock, steps
//! down at once, and campaigns again. Here the leader gives leadership up after a few rounds
//! (dropping its `Held`), and once its session is closed under it, to show both ways out.
//!
//! ```sh
//! cargo run --example leader                                  # local: backend
//! cargo run --example leader --features lock-examples/etcd -- etcd:http://127.0.0.1:2379
//! ```

use std::time::Duration;

use lock::{Service, SessionConfig};

/// Campaigns for leadership `terms` times; each term lasts until the lock is lost or the work is
/// done.
async fn candidate(service: Service, name: String, terms: u32) -> lock::Result<()> {
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(5)))
        .await?;
    let mut locker = session.new_locker("singleton-worker");
    for _ in 0..terms {
        let held = locker.lock().await?;
        let token = held.fencing_token();
        println!("{name}: leader (fencing token {token})");
        tokio::select! {
            () = held.lost() => {
                println!("{name}: lost leadership ({:?}); stepping down at once", held.loss());
                continue;
            }
            () = lead(&name, token) => {}
        }
        println!("{name}: stepping down");
        drop(held); // releases the lock; `held.unlock().await?` would report a failed release
    }
    session.close().await
}

/// The leader's work: every write carries the fencing token.
async fn lead(name: &str, token: u64) {
    for round in 1..=3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        println!("{name}: work round {round} with token {token}");
    }
}

#[tokio::main]
async fn main() -> lock::Result<()> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "local:".to_owned());
    let service = lock::new(&uri).await?;
    let tasks: Vec<_> = (1..=3)
        .map(|n| tokio::spawn(candidate(service.clone(), format!("worker-{n}"), 2)))
        .collect();

    // A leader whose session ends under it (on etcd: its lease expired) steps down at once.
    let doomed = service
        .new_session(SessionConfig::new(Duration::from_secs(5)))
        .await?;
    let held = doomed.new_locker("singleton-worker").lock().await?;
    println!("doomed: leader (fencing token {})", held.fencing_token());
    let watcher = tokio::spawn({
        let lost = held.lost();
        async move {
            lost.await;
            println!("doomed: lost leadership; stepping down at once");
        }
    });
    doomed.close().await?; // its lease "expires"
    watcher.await.expect("the watcher panicked");
    assert!(held.is_lost());

    for task in tasks {
        task.await.expect("a candidate panicked")?;
    }
    service.close().await
}
