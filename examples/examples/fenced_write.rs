//! Fencing: a resource that remembers the highest token it has seen and rejects writes carrying
//! a lower one. A holder that stalls (a GC pause, a partition) and wakes after its lock passed
//! to someone else cannot overwrite the newer holder's data, even though it still "believes" it
//! holds the lock.
//!
//! ```sh
//! cargo run --example fenced_write
//! ```

use std::sync::Mutex;
use std::time::Duration;

use lock::SessionConfig;

/// A stand-in for a database row or a file guarded by the lock.
#[derive(Default)]
struct Resource {
    highest_token: u64,
    value: String,
}

static STORE: Mutex<Resource> = Mutex::new(Resource {
    highest_token: 0,
    value: String::new(),
});

/// The resource's side of fencing: accept a write only with a token at least as high as any seen.
fn write(token: u64, value: &str) -> Result<(), String> {
    let mut store = STORE.lock().unwrap();
    if token < store.highest_token {
        return Err(format!(
            "rejected: token {token} is older than {}",
            store.highest_token
        ));
    }
    store.highest_token = token;
    store.value = value.to_owned();
    Ok(())
}

#[tokio::main]
async fn main() -> lock::Result<()> {
    let service = lock::new("local:").await?;
    let config = SessionConfig::new(Duration::from_secs(10));
    let (slow, fast) = (
        service.new_session(config).await?,
        service.new_session(config).await?,
    );

    // The slow holder takes the lock, then stalls before writing.
    let slow_locker = slow.new_locker("report");
    let stale = slow_locker.lock().await?;
    // Its session ends while it stalls (here: closed; in production: its lease expired).
    slow.close().await?;
    assert!(stale.is_lost());

    // The next holder writes with its newer token.
    let fast_locker = fast.new_locker("report");
    let fresh = fast_locker.lock().await?;
    write(fresh.fencing_token(), "written by the new holder").expect("newest token is accepted");

    // The stalled holder wakes up and tries to write: the resource refuses.
    match write(stale.fencing_token(), "stale write") {
        Ok(()) => panic!("a stale write was accepted"),
        Err(e) => println!("{e}"),
    }
    println!("value: {}", STORE.lock().unwrap().value);
    fast_locker.unlock().await?;
    Ok(())
}
