//! Semaphores and elections: ids with up to `limit` holders at once (an election is one with a
//! limit of 1 whose holder, the leader, has a value, and whose changes are published).
//!
//! Each id is a [`Group`]: its holders, its FIFO queue, and (for an election) its observers,
//! under one mutex. Every change happens under it: a released permit's signal fires before the
//! permit is granted on, and a session's or service's close, which sets its flag before it
//! takes the mutex, evicts whatever an attempt that saw the flag clear had granted or queued.
//! Fencing tokens come from one counter of the service, so they are unique and increase per id
//! whatever happens to the groups.
//!
//! The mutex (`table`) stays the fast path for locks; this module sits beside it and uses only
//! what a locker needs of its session (`table::SessionCore`).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use hashbrown::HashMap;
use lock_core::backend::{self, Hold, OpFuture, Party, PendingOp, Publisher, Signal};
use lock_core::{Error, Leader, LossCause, Observer, Result};

use crate::table::SessionCore;

/// Which primitive a group is: their names are separate namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Semaphore,
    Election,
}

/// A group's name: its kind and id.
type GroupKey = (Kind, Box<str>);

/// The service's semaphores and elections.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    map: Mutex<HashMap<GroupKey, Weak<Group>>>,
    /// The last fencing token handed out.
    tokens: AtomicU64,
}

impl Groups {
    /// The group of `id`, made if nobody uses it.
    fn join(self: &Arc<Self>, kind: Kind, id: &str) -> Arc<Group> {
        let mut map = lock(&self.map);
        if let Some(group) = map.get(&(kind, id.into())).and_then(Weak::upgrade) {
            return group;
        }
        if map.len() == map.capacity() {
            map.retain(|_, group| group.strong_count() > 0);
        }
        let group = Arc::new(Group {
            kind,
            groups: self.clone(),
            state: Mutex::default(),
        });
        map.insert((kind, id.into()), Arc::downgrade(&group));
        group
    }

    /// A new party of `id`.
    pub(crate) fn party(
        self: &Arc<Self>,
        kind: Kind,
        id: &str,
        limit: u32,
        session: Arc<SessionCore>,
        party: Party,
    ) -> Arc<PermitLocker> {
        Arc::new_cyclic(|me| PermitLocker {
            me: me.clone(),
            id: id.into(),
            limit,
            group: self.join(kind, id),
            session,
            signal: Arc::new(Signal::new()),
            proposal: Mutex::default(),
            mine: Mutex::default(),
            party,
        })
    }

    /// Ends every hold, wait and observer: the service closed (its flag is set).
    pub(crate) fn close(&self) {
        let groups: Vec<_> = lock(&self.map).values().filter_map(Weak::upgrade).collect();
        for group in groups {
            group.end(
                &|_| true,
                LossCause::ServiceClosed,
                "the service was closed",
            );
        }
    }
}

/// One id's holders, waiters and observers.
#[derive(Debug)]
pub(crate) struct Group {
    kind: Kind,
    groups: Arc<Groups>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The limit of the parties that hold or wait (0 when none do).
    limit: u32,
    holders: Vec<Holder>,
    queue: VecDeque<Weak<PermitLocker>>,
    /// An election's observers, with the session each ends with.
    observers: Vec<(Publisher, Arc<SessionCore>)>,
}

#[derive(Debug)]
struct Holder {
    locker: Weak<PermitLocker>,
    /// The locker's address, to find it while it drops.
    addr: usize,
    token: u64,
    /// An election leader's value.
    value: Vec<u8>,
}

/// What a locker has in its group, changed under the group's mutex only.
#[derive(Debug, Default)]
struct Mine {
    /// The token and signal epoch of its hold.
    hold: Option<(u64, u64)>,
    wait: Wait,
}

#[derive(Debug, Default)]
enum Wait {
    #[default]
    Idle,
    Queued(Option<Waker>),
    /// Granted while queued; its `lock()` has not collected it yet.
    Granted(Hold),
    /// The wait ended without a grant.
    Canceled(&'static str),
}

impl Group {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn next_token(&self) -> u64 {
        self.groups.tokens.fetch_add(1, Relaxed) + 1
    }

    /// Grants `locker` a permit; returns its hold.
    fn grant(&self, state: &mut State, locker: &PermitLocker, mine: &mut Mine) -> Hold {
        let token = self.next_token();
        let epoch = locker.signal.epoch();
        mine.hold = Some((token, epoch));
        state.holders.push(Holder {
            locker: locker.me.clone(),
            addr: locker.addr(),
            token,
            value: lock(&locker.proposal).clone(),
        });
        Hold::new(locker.signal.clone(), epoch, None, token)
    }

    /// Grants queued lockers the free permits, in order; returns whom to wake.
    fn promote(&self, state: &mut State, wakers: &mut Vec<Waker>) {
        while state.holders.len() < state.limit as usize {
            let Some(next) = state.queue.pop_front() else {
                break;
            };
            // A queued locker is borrowed by its pending `lock()`, so this is never the last
            // handle (whose drop would take the group's mutex again).
            let Some(next) = next.upgrade() else {
                continue;
            };
            let mut mine = next.mine();
            let hold = self.grant(state, &next, &mut mine);
            if let Wait::Queued(waker) = std::mem::replace(&mut mine.wait, Wait::Granted(hold)) {
                wakers.extend(waker);
            }
            drop(mine);
            debug_assert!(Arc::strong_count(&next) > 1);
        }
        if state.holders.is_empty() && state.queue.is_empty() {
            state.limit = 0;
        }
    }

    /// Ends the hold of the locker at `addr`, if it is `token` (any, if `None`): its signal
    /// fires (with `cause`, for an eviction) before the permit can be granted on.
    fn end_hold(
        &self,
        state: &mut State,
        locker: &PermitLocker,
        mine: &mut Mine,
        token: Option<u64>,
        cause: Option<(LossCause, &str)>,
    ) -> bool {
        let Some((held, epoch)) = mine.hold else {
            return false;
        };
        if token.is_some_and(|t| t != held) {
            return false;
        }
        mine.hold = None;
        state.holders.retain(|h| h.addr != locker.addr());
        match cause {
            Some((cause, detail)) => {
                if locker.signal.epoch() == epoch {
                    locker.signal.fire_because(cause, detail);
                }
            }
            None => {
                locker.signal.fire_if(epoch);
            }
        }
        true
    }

    /// Publishes the election's state to its observers (dropping those gone or whose session
    /// ended).
    fn publish(&self, state: &mut State) {
        if self.kind != Kind::Election {
            return;
        }
        let leader = state.leader();
        state
            .observers
            .retain(|(p, session)| session.check_open().is_ok() && p.publish(leader.clone()));
    }

    /// Ends the holds and waits of the lockers `ends` selects, and the observers of the
    /// sessions it selects (their session or service closed).
    fn end(&self, ends: &dyn Fn(&SessionCore) -> bool, cause: LossCause, why: &'static str) {
        let mut wakers = Vec::new();
        let mut state = self.state();
        let before = state.leader();
        let holders: Vec<_> = state
            .holders
            .iter()
            .filter_map(|h| h.locker.upgrade())
            .collect();
        for locker in holders.iter().filter(|l| ends(&l.session)) {
            let mut mine = locker.mine();
            self.end_hold(&mut state, locker, &mut mine, None, Some((cause, why)));
        }
        let queued: Vec<_> = state.queue.iter().filter_map(Weak::upgrade).collect();
        for locker in queued.iter().filter(|l| ends(&l.session)) {
            let mut mine = locker.mine();
            self.cancel_wait(&mut state, locker, &mut mine, why, &mut wakers);
        }
        self.promote(&mut state, &mut wakers);
        state.observers.retain(|(p, session)| {
            let ended = ends(session);
            if ended {
                p.fail(Error::Canceled(format!(
                    "observing the election ended: {why}"
                )));
            }
            !ended
        });
        if state.leader() != before {
            self.publish(&mut state);
        }
        drop(state);
        drop((holders, queued));
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Ends `locker`'s wait: out of the queue, a grant it had not collected released.
    fn cancel_wait(
        &self,
        state: &mut State,
        locker: &PermitLocker,
        mine: &mut Mine,
        why: &'static str,
        wakers: &mut Vec<Waker>,
    ) {
        match std::mem::replace(&mut mine.wait, Wait::Canceled(why)) {
            Wait::Queued(waker) => {
                state
                    .queue
                    .retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), locker));
                wakers.extend(waker);
            }
            Wait::Granted(_) => {
                self.end_hold(
                    state,
                    locker,
                    mine,
                    None,
                    Some((LossCause::SessionEnded, why)),
                );
            }
            other => mine.wait = other,
        }
    }
}

impl State {
    fn leader(&self) -> Option<Leader> {
        let first = self.holders.first()?;
        Some(Leader::new(first.value.clone(), first.token))
    }
}

/// A party of a semaphore or an election of the `local:` backend.
pub struct PermitLocker {
    /// Itself, for the group's lists.
    me: Weak<PermitLocker>,
    id: Box<str>,
    limit: u32,
    group: Arc<Group>,
    session: Arc<SessionCore>,
    /// Fired when a hold of this locker ends; each hold is one epoch.
    signal: Arc<Signal>,
    /// The value its next campaign proposes.
    proposal: Mutex<Vec<u8>>,
    mine: Mutex<Mine>,
    party: Party,
}

impl PermitLocker {
    fn addr(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    fn mine(&self) -> MutexGuard<'_, Mine> {
        lock(&self.mine)
    }

    /// Ends the holds, waits and observers of this locker's session in its group: the session
    /// closed (its flag is set), for `cause`.
    pub(crate) fn evict(&self, cause: LossCause, why: &'static str) {
        let group = &self.group;
        let me = self.addr();
        group.end(&|session| std::ptr::eq(session, &*self.session), cause, why);
        debug_assert!(group.state().holders.iter().all(|h| h.addr != me));
    }

    /// Ends this party's hold (a permit, a term) as a backend that lost it would — its lost
    /// signal fires with `cause` and `detail`, and the permit goes to the next waiter — for
    /// backends built on this one (a test backend that takes a hold away). `false` if it held
    /// nothing.
    pub fn revoke(&self, cause: LossCause, detail: &str) -> bool {
        let mut wakers = Vec::new();
        let group = &self.group;
        let mut state = group.state();
        let mut mine = self.mine();
        if !group.end_hold(&mut state, self, &mut mine, None, Some((cause, detail))) {
            return false;
        }
        drop(mine);
        group.promote(&mut state, &mut wakers);
        group.publish(&mut state);
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
        true
    }

    /// Starts an attempt: granted at once, queued, or (`wait` false) refused.
    fn attempt(&self, wait: bool) -> Result<Option<Hold>> {
        let group = &self.group;
        let mut state = group.state();
        let mut mine = self.mine();
        self.session.check_open()?;
        if mine.hold.is_some() || !matches!(mine.wait, Wait::Idle) {
            return Err(Error::AlreadyLocked);
        }
        if state.limit != 0 && state.limit != self.limit {
            return Err(Error::LimitMismatch {
                id: self.id.to_string(),
                ours: self.limit,
                theirs: state.limit,
            });
        }
        state.limit = self.limit;
        if state.holders.len() < self.limit as usize && state.queue.is_empty() {
            let hold = group.grant(&mut state, self, &mut mine);
            group.publish(&mut state);
            return Ok(Some(hold));
        }
        if wait {
            state.queue.push_back(self.me.clone());
            mine.wait = Wait::Queued(None);
        } else if state.holders.is_empty() && state.queue.is_empty() {
            state.limit = 0;
        }
        Ok(None)
    }

    fn release_hold(&self, token: u64) -> Result<()> {
        let mut wakers = Vec::new();
        let group = &self.group;
        let mut state = group.state();
        let mut mine = self.mine();
        if !group.end_hold(&mut state, self, &mut mine, Some(token), None) {
            return Err(Error::NotHeld);
        }
        drop(mine);
        group.promote(&mut state, &mut wakers);
        group.publish(&mut state);
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
        Ok(())
    }
}

impl backend::Locker for PermitLocker {
    fn lock(&self) -> OpFuture<'_, Result<Hold>> {
        match self.attempt(true) {
            Ok(Some(hold)) => OpFuture::ready(Ok(hold)),
            Ok(None) => OpFuture::pending(self),
            Err(e) => OpFuture::ready(Err(e)),
        }
    }

    fn try_lock(&self) -> OpFuture<'_, Result<Option<Hold>>> {
        OpFuture::ready(self.attempt(false))
    }

    fn unlock(&self, token: u64) -> OpFuture<'_, Result<()>> {
        OpFuture::ready(self.release_hold(token))
    }

    fn unlock_now(&self, token: u64) -> Option<Result<()>> {
        Some(self.release_hold(token))
    }

    fn release(&self, token: u64) {
        let _ = self.release_hold(token);
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn party(&self) -> &Party {
        &self.party
    }
}

impl PendingOp<Result<Hold>> for PermitLocker {
    fn poll_op(&self, cx: &mut Context<'_>) -> Poll<Result<Hold>> {
        let _state = self.group.state();
        let mut mine = self.mine();
        match std::mem::take(&mut mine.wait) {
            Wait::Granted(hold) => Poll::Ready(Ok(hold)),
            Wait::Canceled(why) => Poll::Ready(Err(Error::Canceled(why.into()))),
            Wait::Queued(_) => {
                mine.wait = Wait::Queued(Some(cx.waker().clone()));
                Poll::Pending
            }
            Wait::Idle => Poll::Ready(Err(Error::Canceled("the wait had ended".into()))),
        }
    }

    fn cancel_op(&self) {
        let mut wakers = Vec::new();
        let group = &self.group;
        let mut state = group.state();
        let mut mine = self.mine();
        let before = state.leader();
        group.cancel_wait(
            &mut state,
            self,
            &mut mine,
            "the attempt was dropped",
            &mut wakers,
        );
        mine.wait = Wait::Idle;
        drop(mine);
        group.promote(&mut state, &mut wakers);
        if state.leader() != before {
            group.publish(&mut state);
        }
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl backend::Election for PermitLocker {
    fn propose(&self, value: Vec<u8>) {
        *lock(&self.proposal) = value;
    }

    fn proclaim(&self, token: u64, value: Vec<u8>) -> OpFuture<'_, Result<()>> {
        let group = &self.group;
        let mut state = group.state();
        let mine = self.mine();
        if mine.hold.is_none_or(|(held, _)| held != token) {
            return OpFuture::ready(Err(Error::NotHeld));
        }
        drop(mine);
        let me = self.addr();
        if let Some(holder) = state.holders.iter_mut().find(|h| h.addr == me) {
            holder.value = value;
        }
        group.publish(&mut state);
        OpFuture::ready(Ok(()))
    }

    fn leader(&self) -> OpFuture<'_, Result<Option<Leader>>> {
        OpFuture::ready(Ok(self.group.state().leader()))
    }

    fn observe(&self) -> OpFuture<'_, Result<Observer>> {
        let mut state = self.group.state();
        if let Err(e) = self.session.check_open() {
            return OpFuture::ready(Err(e));
        }
        let (publisher, observer) = Observer::channel();
        publisher.publish(state.leader());
        state.observers.push((publisher, self.session.clone()));
        // The party keeps the session open (and in the session's list, whose close ends the
        // observer) while the observer lives.
        OpFuture::ready(Ok(observer.keeping(self.me.upgrade())))
    }

    fn into_locker(self: Arc<Self>) -> Arc<dyn backend::Locker> {
        self
    }
}

impl Drop for PermitLocker {
    fn drop(&mut self) {
        let mut wakers = Vec::new();
        let group = self.group.clone();
        let mut state = group.state();
        let me = self.addr();
        let before = state.leader();
        let mine = self.mine.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some((_, epoch)) = mine.hold.take() {
            state.holders.retain(|h| h.addr != me);
            self.signal.fire_if(epoch);
        }
        state.queue.retain(|w| w.strong_count() > 0);
        group.promote(&mut state, &mut wakers);
        if state.leader() != before {
            group.publish(&mut state);
        }
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl fmt::Debug for PermitLocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermitLocker")
            .field("id", &self.id)
            .field("kind", &self.group.kind)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is complete at each unlock point (nothing panics mid-update).
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
