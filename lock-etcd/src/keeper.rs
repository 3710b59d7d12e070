//! Keeps every lease of a service alive over **one** current keep-alive stream, and decides
//! when a session must be given up.
//!
//! A lease is renewed on one stream only. Leases whose stream stalls stay on it and are renewed
//! nowhere else while their sessions move their keys to fresh leases (see [`run`] and
//! `SessionCore::move_to_fresh_lease`).
//!
//! Conservative loss: a keep-alive sent at `t` and acknowledged proves the server extended the
//! lease to at least `t + TTL` (it received the request after `t`). So the client believes the
//! lease alive until `t + TTL − margin` for the latest acknowledged send `t`: that is the
//! session's [`Deadline`]. Once it passes without a fresh acknowledgement, the session ends and
//! every hold fires `lost()` — before the server can expire the lease and hand the locks on.
//!
//! The server saying the lease is unknown (a keep-alive answered with TTL ≤ 0) ends the session
//! only once a `LeaseTimeToLive` query (answered by the leader) confirms it: etcd before 3.5.3
//! can give that answer for a lease granted moments ago. Until then the deadline still runs.
//! `Held::is_lost()` (through its `Hold`) reads the deadline directly, so even a process that wakes from a pause
//! sees the loss before this task has run.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_core::Stream as _;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use lock_core::backend::Deadline;
use lock_core::LossCause;
use tokio::sync::Notify;

use crate::health::Probes;

/// How much earlier than the server the client gives a lease up.
pub(crate) fn margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(100))
}

/// How often a lease is refreshed: six times per TTL. A lease stays believed alive as long as
/// `interval + round trip < TTL − margin`, so this tolerates a round trip of up to ~0.73 TTL
/// (a one-way latency of a third of the TTL) without a false loss; etcd's own clients send
/// three per TTL and would give up at a round trip of ~0.57 TTL.
fn interval(ttl: Duration) -> Duration {
    ttl / 6
}

/// Which keep-alive stream a keep-alive went out on.
type StreamId = u64;

#[derive(Default)]
pub(crate) struct Keeper {
    state: Mutex<State>,
    wake: Notify,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    Closed,
    Dropped,
    /// No keep-alive was acknowledged in time: the client gave the lease up.
    Expired,
    /// The server said the lease does not exist (revoked or expired).
    LeaseGone,
    ServiceClosed,
    /// The session's keep-alives stalled and its keys could not all be moved to a fresh lease
    /// (an error that trying again does not cure).
    NotMoved,
}

impl EndReason {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            EndReason::Closed => "the session was closed",
            EndReason::Dropped => "the session was dropped",
            EndReason::Expired => "the session's lease could not be kept alive within its TTL",
            EndReason::LeaseGone => "the session's lease was revoked or expired on the etcd server",
            EndReason::ServiceClosed => "the service was closed",
            EndReason::NotMoved => {
                "the session's keep-alives stalled and its keys could not be moved to a fresh lease"
            }
        }
    }

    /// What a hold of the session lost this way reports.
    pub(crate) fn cause(self) -> LossCause {
        match self {
            EndReason::Closed | EndReason::Dropped => LossCause::SessionEnded,
            EndReason::Expired | EndReason::NotMoved => LossCause::DeadlinePassed,
            EndReason::LeaseGone => LossCause::SessionGone,
            EndReason::ServiceClosed => LossCause::ServiceClosed,
        }
    }
}

/// What the keeper needs of a lease's owner (a session): to end it, and to move its keys to a
/// fresh lease when the keep-alives stall. The lease layer knows sessions by this alone.
pub(crate) trait LeaseOwner: Send + Sync {
    /// Ends the owner for `reason`; false if it had ended already.
    fn end_for(&self, reason: EndReason) -> bool;

    /// Moves the owner's keys from lease `from` to a fresh lease (run as a task of its own).
    fn move_keys(
        self: Arc<Self>,
        from: i64,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

#[derive(Default)]
struct State {
    leases: HashMap<i64, Lease>,
    revoke: Vec<i64>,
    /// Leases whose revoke is under way (see [`Keeper::owed_leases`]).
    revoking: HashSet<i64>,
    stopped: bool,
    stream_opens: u64,
    sent: u64,
    acked: u64,
    /// Smoothed round trip of the keep-alives (`None` before the first answer).
    rtt: Option<Duration>,
}

struct Lease {
    /// A keep-alive answer said the lease is unknown and a query is confirming it.
    confirming: bool,
    ttl: Duration,
    deadline: Arc<Deadline>,
    session: Weak<dyn LeaseOwner>,
    /// Unacknowledged keep-alives: the stream each went out on and when, oldest first. A
    /// stream's answers come in the order of its requests, so an answer on stream `s` is for
    /// the oldest entry of `s` (never another stream's: that one may have been sent later).
    sent: VecDeque<(StreamId, Instant)>,
    next_send: Instant,
    /// The stream this lease's keep-alives go out on (`None`: the current one, from its next
    /// keep-alive). A lease is renewed on one stream only; it moves to the current stream
    /// when its own closes, unless it is `moving`.
    home: Option<StreamId>,
    /// Its keep-alives stalled: its session is moving its keys to a fresh lease, and this
    /// lease is renewed nowhere but on the stream where it stalled (see
    /// `SessionCore::move_to_fresh_lease`).
    moving: bool,
}

impl Keeper {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts keeping `lease` alive; it was granted by a request sent at `granted_at`.
    pub(crate) fn add(
        &self,
        lease: i64,
        ttl: Duration,
        granted_at: Instant,
        deadline: Arc<Deadline>,
        session: Weak<dyn LeaseOwner>,
    ) {
        let mut st = self.state();
        let was_idle = st.leases.is_empty();
        st.leases.insert(
            lease,
            Lease {
                confirming: false,
                ttl,
                deadline,
                session,
                sent: VecDeque::new(),
                next_send: granted_at + interval(ttl),
                home: None,
                moving: false,
            },
        );
        drop(st);
        // With leases to keep, the task looks at all of them every `TICK`, well before a new
        // lease's first keep-alive is due (a sixth of its TTL): only an idle task needs waking.
        // Waking it on every add made it scan every lease once per session opened, quadratic
        // in a burst of thousands of new sessions.
        if was_idle {
            self.wake.notify_one();
        }
    }

    /// From now on `lease` keeps `deadline` (its session's) alive, instead of the one it was
    /// added with (a session adopting the fresh lease it moved its keys to).
    pub(crate) fn adopt(&self, lease: i64, deadline: Arc<Deadline>) {
        if let Some(entry) = self.state().leases.get_mut(&lease) {
            entry.deadline = deadline;
        }
    }

    /// The smoothed round trip of the keep-alives (zero before the first answer).
    pub(crate) fn rtt(&self) -> Duration {
        self.state().rtt.unwrap_or_default()
    }

    /// Stops keeping `lease` alive.
    pub(crate) fn remove(&self, lease: i64) {
        self.state().leases.remove(&lease);
    }

    /// The cluster said `lease` does not exist (asked after a key of it was deleted, or after a
    /// request naming it was refused): ends its session, as a keep-alive answer would.
    pub(crate) fn lease_gone(&self, lease: i64) {
        if let Some(session) = self.forget(lease) {
            session.end_for(EndReason::LeaseGone);
        }
    }

    /// Stops keeping `lease` alive, returning its session if it still exists.
    fn forget(&self, lease: i64) -> Option<Arc<dyn LeaseOwner>> {
        self.state().leases.remove(&lease)?.session.upgrade()
    }

    /// Stops keeping `lease` alive and revokes it in the background.
    pub(crate) fn revoke_later(&self, lease: i64) {
        let mut st = self.state();
        st.leases.remove(&lease);
        st.revoke.push(lease);
        drop(st);
        self.wake.notify_one();
    }

    /// Every lease the service still owes etcd a revoke or a keep-alive for: kept, queued for
    /// revoking, or being revoked. What the exit flush revokes when the runtime stops first.
    pub(crate) fn owed_leases(&self) -> Vec<i64> {
        let st = self.state();
        let kept = st.leases.keys().chain(&st.revoke).chain(&st.revoking);
        let mut owed: Vec<i64> = kept.copied().collect();
        owed.sort_unstable();
        owed.dedup();
        owed
    }

    /// Ends the task (after revoking what is queued).
    pub(crate) fn stop(&self) {
        self.state().stopped = true;
        self.wake.notify_one();
    }

    /// Keep-alive streams opened, keep-alives sent and keep-alives acknowledged so far.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        let st = self.state();
        (st.stream_opens, st.sent, st.acked)
    }

    /// An answer to a keep-alive of `lease`. Returns `true` if it said the lease is unknown
    /// (TTL ≤ 0) and nobody is confirming that yet: the caller asks the cluster again
    /// ([`lease_alive`]) before it ends the session. etcd before 3.5.3 can answer the first
    /// keep-alive of a lease granted moments ago with TTL 0 (etcd issue 13675), so one such
    /// answer is no evidence; meanwhile the deadline still runs.
    fn ack(&self, stream: StreamId, lease: i64, ttl: i64) -> bool {
        let mut st = self.state();
        st.acked += 1;
        let Some(entry) = st.leases.get_mut(&lease) else {
            return false;
        };
        let Some(at) = entry.sent.iter().position(|(s, _)| *s == stream) else {
            return false;
        };
        let Some((_, sent_at)) = entry.sent.remove(at) else {
            return false;
        };
        let rtt = sent_at.elapsed();
        crate::metrics::keepalive_rtt(rtt);
        st.rtt = Some(st.rtt.map_or(rtt, |smooth| (smooth * 7 + rtt) / 8));
        let Some(entry) = st.leases.get_mut(&lease) else {
            return false;
        };
        if ttl <= 0 {
            return !std::mem::replace(&mut entry.confirming, true);
        }
        let granted = Duration::from_secs(ttl.unsigned_abs()).min(entry.ttl);
        entry
            .deadline
            .extend_to(sent_at + granted - margin(entry.ttl));
        false
    }

    /// The cluster was asked whether `lease` exists: ends its session if it does not. With no
    /// answer (`None`) the deadline decides.
    fn confirmed(&self, lease: i64, alive: Option<bool>) {
        if let Some(entry) = self.state().leases.get_mut(&lease) {
            entry.confirming = false;
        }
        if alive == Some(true) {
            tracing::debug!(
                lease = format_args!("{lease:016x}"),
                "a keep-alive answer said the lease was unknown, but the cluster has it: ignored"
            );
        } else if alive == Some(false) {
            if let Some(session) = self.forget(lease) {
                session.end_for(EndReason::LeaseGone);
            }
        }
    }

    /// The work due before `horizon`: expired sessions, leases to refresh (each on its home
    /// stream if that is one of `open`, else on `current` if one is open), leases to revoke.
    fn due(&self, horizon: Instant, current: Option<StreamId>, open: &[StreamId]) -> Due {
        let mut st = self.state();
        let mut due = Due {
            expired: Vec::new(),
            send: Vec::new(),
            revoke: std::mem::take(&mut st.revoke),
            stopped: st.stopped,
            any: !st.leases.is_empty(),
        };
        let mut sent = 0;
        st.leases.retain(|id, lease| {
            if lease.deadline.has_passed() {
                due.expired.extend(lease.session.upgrade());
                return false;
            }
            let stream = match lease.home {
                Some(home) if open.contains(&home) => Some(home),
                // A moving lease is not renewed anywhere else: see `moving`.
                Some(_) if lease.moving => None,
                _ => current,
            };
            if let Some(stream) = stream.filter(|_| lease.next_send <= horizon) {
                let now = Instant::now();
                due.send.push((stream, *id));
                sent += 1;
                lease.home = Some(stream);
                lease.sent.push_back((stream, now));
                lease.next_send = now + interval(lease.ttl);
            }
            true
        });
        st.sent += sent;
        due
    }

    /// Whether keep-alives on `stream` stalled: one has gone unanswered for a sixth of its
    /// lease's TTL, and for three smoothed round trips (a link that is merely slow keeps its
    /// stream; the deadline decides there, as it always did).
    fn stalled(&self, stream: StreamId, now: Instant) -> bool {
        let st = self.state();
        let slow = st.rtt.unwrap_or_default() * 3;
        st.leases.values().any(|l| {
            l.sent
                .iter()
                .find(|(s, _)| *s == stream)
                .is_some_and(|(_, sent)| {
                    now.saturating_duration_since(*sent) > slow.max(interval(l.ttl))
                })
        })
    }

    /// `stream` stalled: every lease renewed on it is `moving` from now on. Returns the
    /// sessions that must move their keys to a fresh lease (each once).
    fn stall(&self, stream: StreamId) -> Vec<(Arc<dyn LeaseOwner>, i64)> {
        let mut st = self.state();
        let mut moves = Vec::new();
        for (id, lease) in st.leases.iter_mut() {
            if lease.home == Some(stream) && !std::mem::replace(&mut lease.moving, true) {
                moves.extend(lease.session.upgrade().map(|s| (s, *id)));
            }
        }
        moves
    }

    /// Whether any lease is still renewed on `stream`.
    fn renews_on(&self, stream: StreamId) -> bool {
        self.state().leases.values().any(|l| l.home == Some(stream))
    }

    /// The shortest TTL of the leases kept.
    fn shortest_ttl(&self) -> Option<Duration> {
        self.state().leases.values().map(|l| l.ttl).min()
    }

    /// A lease to open a new current stream with: one that may be renewed on it.
    fn lease_for_new_stream(&self, open: &[StreamId]) -> Option<i64> {
        let st = self.state();
        let mut leases = st.leases.iter();
        leases
            .find(|(_, l)| !l.moving && l.home.is_none_or(|h| !open.contains(&h)))
            .map(|(id, _)| *id)
    }

    /// `stream` is closed: its unanswered keep-alives will not be answered, and its leases
    /// move to the current stream (except moving ones).
    fn stream_lost(&self, stream: StreamId) {
        for lease in self.state().leases.values_mut() {
            lease.sent.retain(|(s, _)| *s != stream);
            if lease.home == Some(stream) && !lease.moving {
                lease.home = None;
            }
        }
    }

    /// A new current stream opened: every lease without a stream is refreshed on it at once.
    fn refresh_homeless_now(&self, now: Instant, open: &[StreamId]) {
        for lease in self.state().leases.values_mut() {
            if !lease.moving && lease.home.is_none_or(|h| !open.contains(&h)) {
                lease.next_send = now;
            }
        }
    }

    fn sent_for_open(&self, stream: StreamId, lease: i64, at: Instant) {
        let mut st = self.state();
        st.stream_opens += 1;
        st.sent += 1;
        if let Some(l) = st.leases.get_mut(&lease) {
            l.home = Some(stream);
            l.sent.push_back((stream, at));
            l.next_send = at + interval(l.ttl);
        }
    }
}

struct Due {
    expired: Vec<Arc<dyn LeaseOwner>>,
    /// Leases to refresh, with the stream each goes out on.
    send: Vec<(StreamId, i64)>,
    revoke: Vec<i64>,
    stopped: bool,
    /// Whether any lease is kept.
    any: bool,
}

/// How often the keeper looks at its leases: sends due within the next tick go out now (a
/// little early is harmless), so the work per tick is one pass over the leases, whatever their
/// number.
const TICK: Duration = Duration::from_millis(50);

/// A keep-alive stream, and the stream id its keep-alives are recorded under.
struct Stream {
    id: StreamId,
    sender: LeaseKeeper,
    answers: LeaseKeepAliveStream,
    /// The endpoint it is on.
    on: usize,
}

/// The ids of the open streams: the current one and the stalled ones.
fn open_ids(current: &Option<Stream>, stalled: &[Stream]) -> Vec<StreamId> {
    current.iter().chain(stalled).map(|s| s.id).collect()
}

/// A stream being opened (with a first keep-alive of `lease`), on endpoint `endpoint`.
struct Opening {
    id: StreamId,
    endpoint: usize,
    lease: i64,
    /// How long the try may take.
    limit: Duration,
    open: Pin<Box<dyn std::future::Future<Output = OpenResult> + Send>>,
}

type OpenResult = Result<(LeaseKeeper, LeaseKeepAliveStream), OpenError>;

/// The keeper task.
///
/// Leases are renewed on the *current* stream. One whose keep-alives stall there (see
/// [`Keeper::stalled`]) makes that stream a *stalled* one: its leases stay on it (if it
/// recovers, they are renewed as before) and are renewed nowhere else, while their sessions
/// move their keys to fresh leases; a new current stream opens on another endpoint for
/// everything else. A stalled stream closes once no lease is renewed on it.
pub(crate) async fn run(
    keeper: Arc<Keeper>,
    client: etcd_client::Client,
    probes: Arc<Probes>,
    limit: Duration,
) {
    let mut current: Option<Stream> = None;
    let mut stalled: Vec<Stream> = Vec::new();
    let mut next_id: StreamId = 0;
    // The endpoint to avoid when reopening, and, when fleeing a stream that stalled, how long
    // the next try to open may take (short at first, then twice as long each try).
    let (mut avoid, mut fleeing): (Option<usize>, Option<Duration>) = (None, None);
    let mut retry_at = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut next_tick = Instant::now();
    // A stream being opened, beside the loop: the stalled streams' keep-alives and answers
    // must not wait for it.
    let mut opening: Option<Opening> = None;
    loop {
        let now = Instant::now();
        if now >= next_tick {
            let open = open_ids(&current, &stalled);
            let due = keeper.due(now + TICK, current.as_ref().map(|s| s.id), &open);
            for session in due.expired {
                session.end_for(EndReason::Expired);
            }
            for lease in due.revoke {
                keeper.state().revoking.insert(lease);
                let keeper = keeper.clone();
                let leases = client.lease_client();
                tokio::spawn(async move {
                    revoke(leases, lease, limit).await;
                    keeper.state().revoking.remove(&lease);
                });
            }
            if due.stopped {
                return;
            }
            next_tick = if due.any {
                now + TICK
            } else {
                now + Duration::from_secs(3600)
            };
            let ttl = keeper.shortest_ttl();
            if let Some(old) = current.take_if(|s| keeper.stalled(s.id, now)) {
                let moves = keeper.stall(old.id);
                tracing::warn!(
                    sessions = moves.len(),
                    "keep-alives stalled; moving those sessions' keys to fresh leases, and the \
                     other keep-alives to a stream elsewhere"
                );
                crate::metrics::keepalive_failure("stalled");
                for (session, lease) in moves {
                    tokio::spawn(session.move_keys(lease));
                }
                let first_try = ttl.map_or(limit, |ttl| ttl / 6).min(limit);
                (avoid, fleeing) = (Some(old.on), Some(first_try));
                retry_at = now;
                stalled.push(old);
            }
            stalled.retain(|s| keeper.renews_on(s.id));
            for (on, lease) in &due.send {
                let Some(stream) = current.iter().chain(&stalled).find(|s| s.id == *on) else {
                    continue;
                };
                let mut one = LeaseKeeper {
                    id: *lease,
                    sender: stream.sender.sender.clone(),
                };
                if one.keep_alive().await.is_err() {
                    crate::metrics::keepalive_failure("stream_lost");
                    keeper.stream_lost(*on);
                    if current.take_if(|s| s.id == *on).is_none() {
                        stalled.retain(|s| s.id != *on);
                    }
                }
            }
            let open = open_ids(&current, &stalled);
            let opener = keeper.lease_for_new_stream(&open);
            let may_open = current.is_none() && opening.is_none() && now >= retry_at;
            if let Some(lease) = opener.filter(|_| may_open) {
                // Fleeing a stalled stream, tries are short and the next follows at once: a
                // member elsewhere may have forwarded our keep-alive to the old, silent leader
                // and hold it there (etcd waits up to its own request timeout), while a fresh
                // one reaches the new leader as soon as there is one. Each is twice as long as
                // the one before, and three round trips at least, so that a link that is merely
                // slow gets its answer too.
                let open_limit = fleeing.map_or(limit, |f| f.max(keeper.rtt() * 3).min(limit));
                // On the endpoint that answered the health probes most recently.
                let (endpoint, via) = probes.pick(avoid);
                next_id += 1;
                let open = open_stream(via, next_id, lease, open_limit, keeper.clone());
                opening = Some(Opening {
                    id: next_id,
                    endpoint,
                    lease,
                    limit: open_limit,
                    open: Box::pin(open),
                });
            }
        }
        let message = std::future::poll_fn(|cx| {
            for stream in current.iter_mut().chain(&mut stalled) {
                if let Poll::Ready(message) = Pin::new(&mut stream.answers).poll_next(cx) {
                    return Poll::Ready((stream.id, message));
                }
            }
            Poll::Pending
        });
        let opened = async {
            match opening.as_mut() {
                Some(o) => o.open.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = opened => {
                let Some(o) = opening.take() else { continue };
                match result {
                    Ok((sender, answers)) => {
                        tracing::debug!("keep-alive stream open");
                        (avoid, fleeing) = (None, None);
                        current = Some(Stream {
                            id: o.id,
                            sender,
                            answers,
                            on: o.endpoint,
                        });
                        backoff = Duration::from_millis(50);
                        let open = open_ids(&current, &stalled);
                        keeper.refresh_homeless_now(Instant::now(), &open);
                        next_tick = Instant::now(); // send what is due on the new stream
                    }
                    Err(OpenError::Gone) => {
                        if let Some(session) = keeper.forget(o.lease) {
                            session.end_for(EndReason::LeaseGone);
                        }
                        next_tick = Instant::now();
                    }
                    Err(OpenError::Failed) if fleeing.is_some() => {
                        crate::metrics::keepalive_failure("open_failed");
                        avoid = Some(o.endpoint);
                        fleeing = Some((o.limit * 2).min(limit));
                        (retry_at, next_tick) = (Instant::now(), Instant::now());
                    }
                    Err(OpenError::Failed) => {
                        avoid = Some(o.endpoint);
                        tracing::warn!(retry_in = ?backoff, "cannot open the keep-alive stream");
                        crate::metrics::keepalive_failure("open_failed");
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
            (on, message) = message => match message {
                Some(Ok(resp)) => {
                    let lease = resp.id();
                    if keeper.ack(on, lease, resp.ttl()) {
                        let (keeper, client) = (keeper.clone(), client.clone());
                        tokio::spawn(async move {
                            keeper.confirmed(lease, lease_alive(&client, lease, limit).await);
                        });
                    }
                }
                _ => {
                    crate::metrics::keepalive_failure("stream_lost");
                    keeper.stream_lost(on);
                    if let Some(old) = current.take_if(|s| s.id == on) {
                        tracing::warn!("keep-alive stream lost; reopening");
                        avoid = Some(old.on);
                        retry_at = Instant::now() + backoff;
                    } else {
                        stalled.retain(|s| s.id != on);
                    }
                }
            },
            () = tokio::time::sleep_until(next_tick.into()) => {}
            () = keeper.wake.notified() => next_tick = Instant::now(),
        }
    }
}

/// How long an ended session's lease is revoked for before the task gives up.
const REVOKE_FOR: Duration = Duration::from_secs(60);

/// Revokes the lease of a session that ended on this side (dropped, or its deadline passed),
/// trying again while the cluster does not answer, until etcd confirms it (or says the lease is
/// gone) or [`REVOKE_FOR`] has passed. Until it is revoked the lease keeps its keys, and with
/// them the locks its session held or waited for: after an outage that is a full TTL past the
/// cluster's return (a new leader extends every lease), so the revoke must land as soon as a
/// member answers, not once.
async fn revoke(leases: etcd_client::LeaseClient, lease: i64, limit: Duration) {
    let give_up = Instant::now() + REVOKE_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        let revoked = crate::error::request("revoking an ended session's lease", limit, || {
            revoke_once(leases.clone(), lease)
        })
        .await;
        if revoked.is_ok() || Instant::now() + pause >= give_up {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// One revoke of `lease`; a lease already gone (expired, or an earlier try of this revoke
/// landed) counts as revoked.
pub(crate) async fn revoke_once(
    mut leases: etcd_client::LeaseClient,
    lease: i64,
) -> Result<(), etcd_client::Error> {
    match leases.revoke(lease).await {
        Err(etcd_client::Error::GRpcStatus(status)) if status.code() == tonic::Code::NotFound => {
            Ok(())
        }
        other => other.map(drop),
    }
}

enum OpenError {
    /// The lease used to open the stream is gone.
    Gone,
    /// The cluster did not answer; try again later.
    Failed,
}

/// Opens a keep-alive stream (id `id`) with a first keep-alive of `lease`, waiting at most
/// `limit` for its answer.
async fn open_stream(
    client: etcd_client::Client,
    id: StreamId,
    lease: i64,
    limit: Duration,
    keeper: Arc<Keeper>,
) -> Result<(LeaseKeeper, LeaseKeepAliveStream), OpenError> {
    let sent_at = Instant::now();
    let mut leases = client.lease_client();
    match tokio::time::timeout(limit, leases.keep_alive(lease)).await {
        Ok(Ok(pair)) => {
            // Opening sent one keep-alive and consumed its (positive) answer.
            keeper.sent_for_open(id, lease, sent_at);
            keeper.ack(id, lease, i64::MAX);
            Ok(pair)
        }
        // The client library's word for a first answer with TTL ≤ 0: confirm it first.
        Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => {
            match lease_alive(&client, lease, limit).await {
                Some(false) => Err(OpenError::Gone),
                Some(true) | None => Err(OpenError::Failed),
            }
        }
        _ => Err(OpenError::Failed),
    }
}

/// Asks the cluster (its leader answers) whether `lease` still exists: `Some(true)` alive,
/// `Some(false)` gone (etcd answers TTL -1 for a lease it does not know), `None` no answer.
pub(crate) async fn lease_alive(
    client: &etcd_client::Client,
    lease: i64,
    limit: Duration,
) -> Option<bool> {
    let mut leases = client.lease_client();
    match tokio::time::timeout(limit, leases.time_to_live(lease, None)).await {
        Ok(Ok(resp)) => Some(resp.ttl() > 0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    /// A lease owner that is gone already.
    struct Gone;

    impl LeaseOwner for Gone {
        fn end_for(&self, _: EndReason) -> bool {
            false
        }
        fn move_keys(
            self: Arc<Self>,
            _: i64,
        ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
            Box::pin(async {})
        }
    }

    fn keeper_with(leases: &[i64], now: Instant) -> Keeper {
        let keeper = Keeper::default();
        for &lease in leases {
            let deadline = Arc::new(Deadline::new(now + TTL));
            keeper.add(lease, TTL, now - TTL, deadline, Weak::<Gone>::new());
        }
        keeper
    }

    /// The (stream, lease) pairs due now.
    fn sends(
        keeper: &Keeper,
        now: Instant,
        current: Option<StreamId>,
        open: &[StreamId],
    ) -> Vec<(StreamId, i64)> {
        let mut send = keeper.due(now, current, open).send;
        send.sort_unstable();
        send
    }

    #[test]
    fn a_stalled_lease_is_renewed_only_where_it_stalled() {
        let now = Instant::now();
        let keeper = keeper_with(&[1, 2], now);
        // Both go out on the current stream 10 and are homed there.
        assert_eq!(sends(&keeper, now, Some(10), &[10]), [(10, 1), (10, 2)]);
        // Unanswered for a sixth of the TTL: stalled.
        let later = now + TTL / 6 + Duration::from_millis(1);
        assert!(!keeper.stalled(10, now + TTL / 12));
        assert!(keeper.stalled(10, later));
        // Both are moving (their sessions are gone here, so none is returned to move).
        assert!(keeper.stall(10).is_empty());
        assert!(keeper.renews_on(10));
        // While stream 10 stays open, they are renewed on it, not on the new current 11.
        let due = later + TTL / 6;
        assert_eq!(sends(&keeper, due, Some(11), &[10, 11]), [(10, 1), (10, 2)]);
        // Stream 10 closes: they are renewed nowhere, and nothing opens a stream for them.
        keeper.stream_lost(10);
        assert!(sends(&keeper, due + TTL / 6, Some(11), &[11]).is_empty());
        assert_eq!(keeper.lease_for_new_stream(&[11]), None);
        assert!(!keeper.renews_on(11));
    }

    #[test]
    fn a_lease_whose_stream_closed_moves_to_the_current_one() {
        let now = Instant::now();
        let keeper = keeper_with(&[1], now);
        assert_eq!(sends(&keeper, now, Some(10), &[10]), [(10, 1)]);
        keeper.stream_lost(10);
        assert_eq!(keeper.lease_for_new_stream(&[]), Some(1));
        keeper.refresh_homeless_now(now, &[11]);
        assert_eq!(sends(&keeper, now, Some(11), &[11]), [(11, 1)]);
        assert!(keeper.renews_on(11) && !keeper.renews_on(10));
    }

    #[test]
    fn a_slow_link_is_no_stall() {
        let now = Instant::now();
        let keeper = keeper_with(&[1], now);
        assert_eq!(sends(&keeper, now, Some(10), &[10]), [(10, 1)]);
        // Answers have taken 2 s round trips.
        keeper.state().rtt = Some(Duration::from_secs(2));
        assert!(!keeper.stalled(10, now + Duration::from_secs(3)));
        assert!(keeper.stalled(10, now + Duration::from_millis(6100)));
    }
}
