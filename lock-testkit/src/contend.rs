//! A contending client for fault and torture tests: sessions, lock, one fenced write, a short
//! hold, unlock — recording everything in a [`History`].

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use lock_core::backend::OpFuture;
use lock_core::{Election, Held, Locker, Service, Session, SessionConfig};

use crate::history::{History, Kind};

/// A protected resource that takes a write only with a token at least as new as any it took.
pub trait Fenced: Send + Sync {
    /// Writes for `id` with `token`: `Some((accepted, revision))`, or `None` if the resource
    /// could not be reached (the write may or may not have happened).
    fn write<'a>(&'a self, id: &'a str, token: u64) -> OpFuture<'a, Option<(bool, i64)>>;
}

/// What a contender takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    /// The lock.
    Lock,
    /// One permit of a semaphore of this many (declare it to the history with
    /// [`History::set_limit`]).
    Semaphore(u32),
    /// Leadership of the election (campaigning with the value `client N`).
    Election,
}

/// A contender's party in its session.
enum Party {
    Locker(Locker),
    Candidate(Election, String),
}

impl Party {
    fn new(
        session: &Session,
        id: &str,
        primitive: Primitive,
        client: usize,
    ) -> lock_core::Result<Self> {
        Ok(match primitive {
            Primitive::Lock => Party::Locker(session.new_locker(id)),
            Primitive::Semaphore(limit) => Party::Locker(session.new_semaphore(id, limit)?),
            Primitive::Election => {
                Party::Candidate(session.new_election(id)?, format!("client {client}"))
            }
        })
    }

    async fn acquire(&mut self) -> lock_core::Result<Held> {
        match self {
            Party::Locker(locker) => locker.lock().await,
            Party::Candidate(election, value) => election.campaign(value.as_str()).await,
        }
    }
}

/// One contending client.
#[derive(Clone)]
pub struct Contender {
    /// Its number in the history.
    pub client: usize,
    /// Its own service (its own connection).
    pub service: Service,
    /// The id it takes.
    pub id: String,
    /// What it takes: a lock, a permit, leadership.
    pub primitive: Primitive,
    /// Its sessions' TTL.
    pub ttl: Duration,
    /// Where it writes while holding the lock.
    pub resource: Arc<dyn Fenced>,
    /// Where it records what happened.
    pub history: Arc<History>,
    /// Set to stop it.
    pub stop: Arc<AtomicBool>,
    /// Make every tenth hold last 4 s (longer than a short TTL), so that faults hit holders.
    pub long_holds: bool,
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
    /// fenced write per hold, a hold of 5–25 ms (with `long_holds`, every tenth 4 s) ended
    /// early by `lost()`,
    /// unlock. A watcher records each loss when `lost()` fires, dated by the hold's loss
    /// record (when `is_lost()` turned true) and carrying its cause.
    pub async fn run(self) {
        let (n, id, history) = (self.client, self.id.as_str(), &self.history);
        let mut rounds = 0u64;
        while !self.stop.load(SeqCst) {
            let Ok(session) = self.service.new_session(SessionConfig::new(self.ttl)).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut party = match Party::new(&session, id, self.primitive, n) {
                Ok(party) => party,
                // Not a skip: a torture run on nothing would report 0 violations.
                Err(e) => panic!("client {n} cannot take {:?} `{id}`: {e}", self.primitive),
            };
            while !self.stop.load(SeqCst) && !session.done().is_done() {
                let held = match tokio::time::timeout(Duration::from_secs(5), party.acquire()).await
                {
                    Ok(Ok(held)) => held,
                    _ => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let token = held.fencing_token();
                history.record(n, id, Kind::Acquired(token));
                // The loss is recorded when `lost()` fires, whatever this task is doing (a slow
                // write, say), and dated when the holder's view changed: the backend's record.
                let watcher = (held.lost(), history.clone(), id.to_owned());
                tokio::spawn(async move {
                    watcher.0.clone().await;
                    watcher.1.record_lost(n, &watcher.2, token, &watcher.0);
                });
                if held.is_lost() {
                    continue;
                }
                if let Some((accepted, revision)) = self.resource.write(id, token).await {
                    let write = Kind::Write {
                        token,
                        accepted,
                        revision,
                    };
                    history.record(n, id, write);
                }
                // Mostly short holds; every tenth a long one, so that faults hit holders.
                rounds += 1;
                let hold = if self.long_holds && rounds % 10 == 0 {
                    Duration::from_secs(4) // longer than the TTL of the fault tests
                } else {
                    Duration::from_millis(5 + (n as u64 * 7) % 20)
                };
                tokio::select! {
                    () = held.lost() => continue,
                    () = tokio::time::sleep(hold) => {}
                }
                if held.is_lost() {
                    continue;
                }
                history.record(n, id, Kind::Unlocked(token));
                let _ = held.unlock().await;
            }
        }
        let _ = self.service.close().await;
    }
}
