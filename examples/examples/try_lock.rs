//! Try-lock with a deadline: a job that runs only if it can get its lock within 200 ms, and
//! otherwise reports that another instance has it — the shape of a cron job that must not run
//! twice. `try_lock()` never waits; `lock_timeout(d)` waits at most `d`.
//!
//! ```sh
//! cargo run --example try_lock
//! ```

use std::time::Duration;

use lock::{ErrorKind, Locker, SessionConfig};

/// Runs the nightly report if this instance gets the lock within `deadline`.
async fn nightly_report(locker: &mut Locker, deadline: Duration) -> lock::Result<bool> {
    let held = match locker.lock_timeout(deadline).await {
        Ok(held) => held,
        Err(e) if e.kind() == ErrorKind::Timeout => return Ok(false),
        Err(e) => return Err(e),
    };
    println!(
        "report: running with fencing token {}",
        held.fencing_token()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    held.unlock().await?;
    Ok(true)
}

#[tokio::main]
async fn main() -> lock::Result<()> {
    let service = lock::new("local:").await?;
    let config = SessionConfig::new(Duration::from_secs(10));
    let (mine, theirs) = (
        service.new_session(config).await?,
        service.new_session(config).await?,
    );
    let mut locker = mine.new_locker("jobs/nightly-report");

    // Free: the report runs.
    assert!(locker.try_lock().await?.is_some_and(|held| !held.is_lost()));
    assert!(nightly_report(&mut locker, Duration::from_millis(200)).await?);

    // Another instance holds it: try_lock says so at once, and the deadline passes.
    let other = theirs.new_locker("jobs/nightly-report").lock().await?;
    assert!(locker.try_lock().await?.is_none());
    let ran = nightly_report(&mut locker, Duration::from_millis(200)).await?;
    println!("report while another instance holds the lock: ran = {ran}");
    assert!(!ran);

    // It finishes within the deadline: this instance runs next.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        other.unlock().await
    });
    assert!(nightly_report(&mut locker, Duration::from_millis(200)).await?);
    release.await.expect("the release panicked")?;
    service.close().await
}
