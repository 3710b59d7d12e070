//! A leader loop (`lock_examples::candidate`, tested through `lock::testing` in
//! `tests/leader.rs`): candidates campaign in one election with their address; the leader
//! publishes it, works until it loses leadership, stops at once on `lost()`, and campaigns
//! again. An
//! observer prints every change of leader, in order. Here each leader resigns after a few rounds
//! of work, and one leader's session is closed under it (on etcd: its lease expired), to show
//! both ways out.
//!
//! ```sh
//! cargo run --example leader                                  # local: backend
//! cargo run --example leader --features lock-examples/etcd -- etcd:http://127.0.0.1:2379
//! ```

use std::time::Duration;

use lock::{Service, SessionConfig};
use lock_examples::candidate;

/// The election every candidate campaigns in.
const ELECTION: &str = "singleton-worker";

/// The leader's work: every write carries the term's fencing token.
async fn lead(address: &str, token: u64) {
    for round in 1..=3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        println!("{address}: work round {round} with token {token}");
    }
}

#[tokio::main]
async fn main() -> lock::Result<()> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "local:".to_owned());
    let service: Service = lock::new(&uri).await?;
    let config = SessionConfig::new(Duration::from_secs(5));

    // Anyone can follow who leads: the leader's address and term, every change in order.
    let watching = service.new_session(config).await?;
    let mut observer = watching.new_election(ELECTION)?.observe().await?;
    let follower = tokio::spawn(async move {
        let mut leaders = 0;
        while let Ok(change) = observer.next().await {
            match change {
                Some(leader) => {
                    leaders += 1;
                    let address = leader.value_str().unwrap_or("?");
                    println!(
                        "observer: {address} leads (term {})",
                        leader.fencing_token()
                    );
                }
                None => println!("observer: nobody leads"),
            }
        }
        leaders
    });

    // A leader whose session ends under it (on etcd: its lease expired) steps down at once.
    let doomed = service.new_session(config).await?;
    let mut election = doomed.new_election(ELECTION)?;
    let term = election.campaign("10.0.0.9:8080").await?;
    println!("doomed: leader (term {})", term.fencing_token());
    let lost = term.lost();
    let candidates: Vec<_> = (1..=3)
        .map(|n| {
            let service = service.clone();
            tokio::spawn(async move {
                let address = format!("10.0.0.{n}:8080");
                candidate(&service, ELECTION, &address, config, 2, |token| {
                    lead(&address, token)
                })
                .await
            })
        })
        .collect();
    doomed.close().await?; // its lease "expires"
    lost.await;
    println!("doomed: lost leadership; stepping down at once");
    assert!(term.is_lost());

    for task in candidates {
        task.await.expect("a candidate panicked")?;
    }
    watching.close().await?;
    let leaders = follower.await.expect("the observer panicked");
    println!("observer: saw {leaders} leaders");
    assert_eq!(leaders, 7, "the doomed leader, then 3 candidates × 2 terms");
    service.close().await
}
