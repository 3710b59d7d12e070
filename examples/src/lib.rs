//! Application code the examples share, written to be tested: the `leader` example's candidate
//! loop ([`candidate`]) is tested through `lock::testing` in `tests/leader.rs` (and in the
//! guide's "Testing your application").

use std::future::Future;
use std::time::Duration;

use lock::{ErrorKind, Service, SessionConfig};

/// How long a candidate waits before trying again after a transient error.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Runs a candidate of election `election` until it has led `terms` terms: it campaigns with
/// `address`, and while it leads runs `lead(term's fencing token)`. It steps down the moment its
/// term is lost (the work is dropped), and campaigns again; if its session ended (on etcd: its
/// lease expired), it opens a new one; a transient error (the cluster unreachable) is retried
/// after [`RETRY_AFTER`]. A term whose work finished is resigned.
///
/// # Errors
///
/// An error that retrying does not cure (permission denied, an invalid name).
pub async fn candidate<F, Fut>(
    service: &Service,
    election: &str,
    address: &str,
    config: SessionConfig,
    terms: usize,
    mut lead: F,
) -> lock::Result<()>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut led = 0;
    while led < terms {
        let session = match service.new_session(config).await {
            Ok(session) => session,
            Err(e) if e.is_transient() => {
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut party = session.new_election(election)?;
        while led < terms {
            let term = match party.campaign(address).await {
                Ok(term) => term,
                Err(e) if e.is_transient() => {
                    println!("{address}: campaign failed ({e}); retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
                // The session ended (its lease expired): campaign again in a new one.
                Err(e) if matches!(e.kind(), ErrorKind::AlreadyClosed | ErrorKind::Canceled) => {
                    println!("{address}: session ended ({e}); opening a new one");
                    break;
                }
                Err(e) => return Err(e),
            };
            let token = term.fencing_token();
            println!("{address}: leader (term {token})");
            tokio::select! {
                () = term.lost() => {
                    println!("{address}: lost leadership ({:?}); stepping down at once", term.loss());
                    continue;
                }
                () = lead(token) => {}
            }
            led += 1;
            println!("{address}: stepping down");
            // Resign; a failed resignation still ends the term (at the latest with the TTL).
            let _ = term.unlock().await;
        }
    }
    Ok(())
}
