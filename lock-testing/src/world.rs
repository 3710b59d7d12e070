//! A test world: one lock table shared by every `test:NAME` service of the process, the faults
//! its controller injects, and the history of what happened.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use lock_core::{Error, LossCause, Result};
use lock_local::{LocalService, LocalSession};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::history::{Event, History, What};

/// Something that holds and can be made to lose its hold (a locker of the world).
pub(crate) trait Revoke: Send + Sync {
    /// Ends its hold as the backend would have lost it.
    fn revoke(&self, cause: LossCause, detail: &str) -> bool;
}

/// What the next `lock()` of an id does instead of its usual work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Fails at once with a transient backend error (`Error::is_transient`), as an etcd request
    /// that could not reach the cluster does.
    Transient,
    /// Fails at once with a backend error that retrying does not fix (permission denied, say).
    Permanent,
    /// Waits until the session's timeout passes (`Error::Timeout`), as a `lock()` stuck on an
    /// unreachable cluster does.
    Hang,
}

impl Injected {
    /// What the attempt it hits does: fails with its error, or (`Hang`) waits until the
    /// handles drop it at the session's timeout.
    pub(crate) async fn strike(self) -> Error {
        match self {
            Injected::Transient => Error::backend_transient(
                crate::SERVICE_TEST,
                "the cluster could not be reached (injected by the test controller)",
            ),
            Injected::Permanent => Error::backend(
                crate::SERVICE_TEST,
                "permission denied (injected by the test controller)",
            ),
            Injected::Hang => std::future::pending().await,
        }
    }
}

/// A hold the world knows is live.
struct LiveHold {
    id: String,
    token: u64,
    session: usize,
    party: Weak<dyn Revoke>,
}

/// A session the world can end.
pub(crate) struct SessionEntry {
    pub(crate) number: usize,
    pub(crate) local: Weak<LocalSession>,
    pub(crate) ttl: Duration,
}

#[derive(Default)]
struct State {
    /// While the service is unavailable: the outage's number.
    outage: Option<u64>,
    outages: u64,
    grant_delay: Duration,
    next: HashMap<String, VecDeque<Injected>>,
    holds: Vec<LiveHold>,
    sessions: Vec<SessionEntry>,
    sessions_opened: usize,
    events: Vec<Event>,
    /// Per resource, the newest token that wrote to it.
    resources: HashMap<String, u64>,
}

/// One test world: what `test:NAME` services share.
pub(crate) struct World {
    pub(crate) local: LocalService,
    start: Instant,
    state: Mutex<State>,
    /// Notified when the service becomes available again.
    back: Notify,
}

/// The worlds by name: weakly (a world lives while its controller or a service uses it).
fn worlds() -> MutexGuard<'static, HashMap<String, Weak<World>>> {
    static WORLDS: OnceLock<Mutex<HashMap<String, Weak<World>>>> = OnceLock::new();
    let worlds = WORLDS.get_or_init(Mutex::default);
    worlds.lock().unwrap_or_else(|e| e.into_inner())
}

impl World {
    fn new() -> Arc<World> {
        Arc::new(World {
            local: LocalService::new(),
            start: Instant::now(),
            state: Mutex::default(),
            back: Notify::new(),
        })
    }

    /// The world named `name`, made if nobody uses one.
    pub(crate) fn named(name: &str) -> Arc<World> {
        let mut worlds = worlds();
        if let Some(world) = worlds.get(name).and_then(Weak::upgrade) {
            return world;
        }
        worlds.retain(|_, w| w.strong_count() > 0);
        let world = World::new();
        worlds.insert(name.to_owned(), Arc::downgrade(&world));
        world
    }

    /// A fresh world named `name`, replacing any earlier one (services already open on the
    /// earlier world stay on it).
    pub(crate) fn fresh(name: &str) -> Arc<World> {
        let world = World::new();
        worlds().insert(name.to_owned(), Arc::downgrade(&world));
        world
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, state: &mut State, what: What) {
        let at = Instant::now().saturating_duration_since(self.start);
        state.events.push(Event { at, what });
    }

    pub(crate) fn history(&self) -> History {
        History(self.state().events.clone())
    }

    /// `Err` (a transient backend error) while the service is unavailable.
    pub(crate) fn check_available(&self) -> Result<()> {
        match self.state().outage {
            None => Ok(()),
            Some(_) => Err(Error::backend_transient(
                crate::SERVICE_TEST,
                "the service is unavailable (made so by the test controller)",
            )),
        }
    }

    /// Waits until the service is available.
    pub(crate) async fn until_available(&self) {
        loop {
            let back = self.back.notified();
            tokio::pin!(back);
            back.as_mut().enable();
            if self.state().outage.is_none() {
                return;
            }
            back.await;
        }
    }

    /// The fault injected for the next `lock()` of `id`, if any (taken).
    pub(crate) fn next_fault(&self, id: &str) -> Option<Injected> {
        self.state().next.get_mut(id).and_then(VecDeque::pop_front)
    }

    pub(crate) fn grant_delay(&self) -> Duration {
        self.state().grant_delay
    }

    /// Registers a session; returns its number.
    pub(crate) fn opened(&self, local: &Arc<LocalSession>, ttl: Duration) -> usize {
        let mut state = self.state();
        state.sessions_opened += 1;
        let number = state.sessions_opened;
        state.sessions.retain(|s| s.local.strong_count() > 0);
        state.sessions.push(SessionEntry {
            number,
            local: Arc::downgrade(local),
            ttl,
        });
        number
    }

    pub(crate) fn granted(
        &self,
        id: &str,
        token: u64,
        session: usize,
        limit: u32,
        party: Weak<dyn Revoke>,
    ) {
        let mut state = self.state();
        state.holds.push(LiveHold {
            id: id.to_owned(),
            token,
            session,
            party,
        });
        self.push(
            &mut state,
            What::Granted {
                id: id.to_owned(),
                token,
                session,
                limit,
            },
        );
    }

    /// Records the end of the hold with `token`, if the world still knows it as live: released
    /// (`cause` `Unlocked`) or lost.
    pub(crate) fn ended(&self, token: u64, cause: LossCause) {
        let mut state = self.state();
        self.end_in(&mut state, token, cause);
    }

    fn end_in(&self, state: &mut State, token: u64, cause: LossCause) {
        let Some(at) = state.holds.iter().position(|h| h.token == token) else {
            return;
        };
        let hold = state.holds.swap_remove(at);
        let what = match cause {
            LossCause::Unlocked => What::Released { id: hold.id, token },
            cause => What::Lost {
                id: hold.id,
                token,
                cause,
            },
        };
        self.push(state, what);
    }

    /// Records the end of every live hold of `party`, which is being dropped (its local party
    /// releases them).
    pub(crate) fn party_dropped(&self, party: &Weak<dyn Revoke>) {
        let mut state = self.state();
        let tokens: Vec<u64> = state
            .holds
            .iter()
            .filter(|h| Weak::ptr_eq(&h.party, party))
            .map(|h| h.token)
            .collect();
        for token in tokens {
            self.end_in(&mut state, token, LossCause::Unlocked);
        }
    }

    /// Records the end of every live hold of session `session` (it is ending, for `cause`).
    pub(crate) fn session_ending(&self, session: usize, cause: LossCause) {
        let mut state = self.state();
        let tokens: Vec<u64> = state
            .holds
            .iter()
            .filter(|h| h.session == session)
            .map(|h| h.token)
            .collect();
        for token in tokens {
            self.end_in(&mut state, token, cause);
        }
    }

    fn fault(&self, what: String) {
        let mut state = self.state();
        self.push(&mut state, What::Fault(what));
    }

    /// Takes every hold of `id` away, as if its key were deleted by someone else.
    pub(crate) fn take_away(&self, id: &str) -> usize {
        self.fault(format!("take away every hold of {id}"));
        self.take_away_where(&|h| h.id == id)
    }

    /// Takes the hold with fencing token `token` away (one permit of a semaphore, say).
    pub(crate) fn take_away_hold(&self, token: u64) -> bool {
        self.fault(format!("take away the hold with token {token}"));
        self.take_away_where(&|h| h.token == token) == 1
    }

    fn take_away_where(&self, which: &dyn Fn(&LiveHold) -> bool) -> usize {
        let mut state = self.state();
        let taken: Vec<(u64, Weak<dyn Revoke>)> = state
            .holds
            .iter()
            .filter(|h| which(h))
            .map(|h| (h.token, h.party.clone()))
            .collect();
        // Recorded before the holds end: the next holder is granted after.
        for (token, _) in &taken {
            self.end_in(&mut state, *token, LossCause::Removed);
        }
        drop(state);
        let detail = "the hold was taken away by the test controller (as if its key were deleted \
                      by someone else)";
        taken
            .iter()
            .filter_map(|(_, party)| party.upgrade())
            .filter(|party| party.revoke(LossCause::Removed, detail))
            .count()
    }

    /// Ends the sessions `which` selects as if their leases had expired, or (with `cause`
    /// `DeadlinePassed`) as if their keep-alives had gone unanswered for the TTL.
    fn end_sessions(&self, which: &dyn Fn(&SessionEntry) -> bool, cause: LossCause) -> usize {
        let state = self.state();
        let ending: Vec<(usize, Arc<LocalSession>)> = state
            .sessions
            .iter()
            .filter(|s| which(s))
            .filter_map(|s| Some((s.number, s.local.upgrade()?)))
            .collect();
        drop(state);
        let mut ended = 0;
        for (number, local) in ending {
            let ok = match cause {
                LossCause::DeadlinePassed => {
                    self.session_ending(number, cause);
                    let detail = "the session's deadline passed: the service was unavailable for \
                                  its TTL (made so by the test controller)";
                    local.end_because(cause, detail).is_ok()
                }
                _ => {
                    // As etcd shows a lease that ended on the server: its keys are deleted
                    // (the holds are lost as `Removed`, which etcd's watch reports first), then
                    // the session learns that its lease is gone.
                    let holds = self.session_holds(number);
                    self.session_ending(number, LossCause::Removed);
                    let detail = "the key was deleted: the session's lease expired (ended by the \
                                  test controller)";
                    for party in holds.iter().filter_map(Weak::upgrade) {
                        party.revoke(LossCause::Removed, detail);
                    }
                    let why = "the session's lease expired (ended by the test controller)";
                    local.end_because(LossCause::SessionGone, why).is_ok()
                }
            };
            ended += usize::from(ok);
        }
        ended
    }

    /// The parties of session `session`'s live holds.
    fn session_holds(&self, session: usize) -> Vec<Weak<dyn Revoke>> {
        let state = self.state();
        state
            .holds
            .iter()
            .filter(|h| h.session == session)
            .map(|h| h.party.clone())
            .collect()
    }

    /// The numbers of the sessions that hold `id`.
    fn holders_sessions(&self, id: &str) -> Vec<usize> {
        let state = self.state();
        state
            .holds
            .iter()
            .filter(|h| h.id == id)
            .map(|h| h.session)
            .collect()
    }

    pub(crate) fn expire_session_of(&self, id: &str) -> usize {
        self.fault(format!("expire the session holding {id}"));
        let sessions = self.holders_sessions(id);
        self.end_sessions(&|s| sessions.contains(&s.number), LossCause::SessionGone)
    }

    pub(crate) fn expire_all_sessions(&self) -> usize {
        self.fault("expire every session".to_owned());
        self.end_sessions(&|_| true, LossCause::SessionGone)
    }

    pub(crate) fn inject(&self, id: &str, fault: Injected) {
        self.fault(format!("the next lock() of {id}: {fault:?}"));
        let mut state = self.state();
        state
            .next
            .entry(id.to_owned())
            .or_default()
            .push_back(fault);
    }

    pub(crate) fn delay_grants(&self, by: Duration) {
        self.fault(format!("delay grants by {by:?}"));
        self.state().grant_delay = by;
    }

    /// Makes the service unavailable, or available again. While unavailable, sessions cannot
    /// be opened and requests fail with a transient error or wait; a session whose TTL passes
    /// in the outage ends with its deadline (its holds lost with `DeadlinePassed`).
    pub(crate) fn set_available(self: &Arc<Self>, available: bool) {
        self.fault(match available {
            true => "the service is available again".to_owned(),
            false => "the service is unavailable".to_owned(),
        });
        let mut state = self.state();
        if available {
            state.outage = None;
            drop(state);
            self.back.notify_waiters();
            return;
        }
        if state.outage.is_some() {
            return;
        }
        state.outages += 1;
        let outage = state.outages;
        state.outage = Some(outage);
        let ttls: Vec<(usize, Duration)> = state
            .sessions
            .iter()
            .filter(|s| s.local.strong_count() > 0)
            .map(|s| (s.number, s.ttl))
            .collect();
        drop(state);
        // Each session's keep-alives stop being answered now: it ends at its deadline, one TTL
        // from now, if the outage lasts that long.
        for (number, ttl) in ttls {
            let world = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(ttl).await;
                if let Some(world) = world.upgrade() {
                    if world.state().outage == Some(outage) {
                        world.end_sessions(&|s| s.number == number, LossCause::DeadlinePassed);
                    }
                }
            });
        }
    }

    /// A write to `resource` with `token`: accepted unless a newer token wrote before.
    pub(crate) fn write(&self, resource: &str, token: u64) -> bool {
        let mut state = self.state();
        let newest = state.resources.entry(resource.to_owned()).or_default();
        let accepted = token >= *newest;
        if accepted {
            *newest = token;
        }
        self.push(
            &mut state,
            What::Write {
                resource: resource.to_owned(),
                token,
                accepted,
            },
        );
        accepted
    }

    /// The tokens of the live holds of `id`.
    pub(crate) fn holders(&self, id: &str) -> Vec<u64> {
        let state = self.state();
        state
            .holds
            .iter()
            .filter(|h| h.id == id)
            .map(|h| h.token)
            .collect()
    }
}
