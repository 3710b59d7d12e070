//! A contending client for fault and torture tests: sessions, lock, one fenced write, a short
//! hold, unlock — recording everything in a [`History`].

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{OpFuture, Service, SessionConfig};

use crate::history::{History, Kind};

/// A protected resource that takes a write only with a token at least as new as any it took.
pub trait Fenced: Send + Sync {
    /// Writes for `id` with `token`: `Some((accepted, revision))`, or `None` if the resource
    /// could not be reached (the write may or may not have happened).
    fn write<'a>(&'a self, id: &'a str, token: u64) -> OpFuture<'a, Option<(bool, i64)>>;
}

/// One contending client.
#[derive(Clone)]
pub struct Contender {
    /// Its number in the history.
    pub client: usize,
    /// Its own service (its own connection).
    pub service: Arc<dyn Service>,
    /// The lock id it takes.
    pub id: String,
    /// Its sessions' TTL.
    pub ttl: Duration,
    /// Where it writes while holding the lock.
    pub resource: Arc<dyn Fenced>,
    /// Where it records what happened.
    pub history: Arc<History>,
    /// Set to stop it.
    pub stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Contender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contender")
            .field("client", &self.client)
            .field("id", &self.id)
            .finish()
    }
}

impl Contender {
    /// Runs until `stop` is set: new sessions as old ones end, lock (bounded waits), one
    /// fenced write per hold, a hold of 5–25 ms ended early by `lost()`, unlock.
    pub async fn run(self) {
        let (n, id, history) = (self.client, self.id.as_str(), &self.history);
        while !self.stop.load(SeqCst) {
            let Ok(session) = self
                .service
                .new_session(&SessionConfig::new(self.ttl))
                .await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let locker = session.new_locker(id);
            while !self.stop.load(SeqCst) && !session.done().is_done() {
                let held = match tokio::time::timeout(Duration::from_secs(5), locker.lock()).await {
                    Ok(Ok(held)) => held,
                    _ => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let token = held.fencing_token();
                history.record(n, id, Kind::Acquired(token));
                if held.is_lost() {
                    history.record(n, id, Kind::Lost);
                    continue;
                }
                if let Some((accepted, revision)) = self.resource.write(id, token).await {
                    history.record(
                        n,
                        id,
                        Kind::Write {
                            token,
                            accepted,
                            revision,
                        },
                    );
                }
                let hold = Duration::from_millis(5 + (n as u64 * 7) % 20);
                tokio::select! {
                    () = held.lost() => {
                        history.record(n, id, Kind::Lost);
                        continue;
                    }
                    () = tokio::time::sleep(hold) => {}
                }
                if held.is_lost() {
                    history.record(n, id, Kind::Lost);
                    continue;
                }
                history.record(n, id, Kind::Unlocked);
                let _ = locker.unlock().await;
            }
        }
        let _ = self.service.close().await;
    }
}
