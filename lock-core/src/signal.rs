//! Building blocks backends use to tell holders that a lock or session is gone.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::loss::{Loss, LossCause};

/// A reusable, edge-triggered signal: each call to [`fire`](Signal::fire) ends the current
/// *epoch*. A holder remembers the epoch it was granted in; it has lost its lock as soon as the
/// signal's epoch moved on.
///
/// Backends keep one `Signal` per locker (and one per session) and reuse it across successive
/// holds, so granting a lock allocates nothing.
pub struct Signal {
    epoch: AtomicU64,
    listeners: AtomicUsize,
    notify: Notify,
    /// Why the latest epochs that ended with [`Signal::fire_because`] ended (at most
    /// [`LOSSES_KEPT`], oldest first): allocated only once a backend records a loss.
    losses: Mutex<Vec<(u64, Loss)>>,
}

/// How many loss records a signal keeps: enough for evidence that arrives a round trip after
/// the loss ([`Signal::explain`]) even when the locker was granted and lost again meanwhile.
const LOSSES_KEPT: usize = 16;

impl Signal {
    /// A new signal in epoch 0.
    pub const fn new() -> Self {
        Signal {
            epoch: AtomicU64::new(0),
            listeners: AtomicUsize::new(0),
            notify: Notify::const_new(),
            losses: Mutex::new(Vec::new()),
        }
    }

    fn losses(&self) -> MutexGuard<'_, Vec<(u64, Loss)>> {
        self.losses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the current epoch like [`fire`](Signal::fire), recording why (and that it
    /// happened now) for [`Held::loss`](crate::Held::loss). Returns the epoch that ended, for
    /// [`explain`](Signal::explain).
    ///
    /// Call it from one place at a time per signal (under the backend's own state lock), as
    /// the backend already does for `fire`.
    pub fn fire_because(&self, cause: LossCause, detail: impl Into<String>) -> u64 {
        let ended = self.epoch();
        let loss = Loss::new(cause, Some(Instant::now()), detail);
        {
            let mut losses = self.losses();
            if losses.len() == LOSSES_KEPT {
                losses.remove(0);
            }
            losses.push((ended, loss));
        }
        self.fire();
        ended
    }

    /// Adds to the recorded reason of `epoch` (as returned by
    /// [`fire_because`](Signal::fire_because)), while the signal still keeps it: evidence
    /// that arrives after the loss, such as the server's answer about a lease.
    pub fn explain(&self, epoch: u64, more: &str) {
        if let Some((_, loss)) = self.losses().iter_mut().find(|(e, _)| *e == epoch) {
            loss.explain(more);
        }
    }

    /// The recorded reason `epoch` ended, if it ended with `fire_because` (and is still kept).
    pub(crate) fn loss_of(&self, epoch: u64) -> Option<Loss> {
        let losses = self.losses();
        let found = losses.iter().rev().find(|(e, _)| *e == epoch);
        found.map(|(_, loss)| loss.clone())
    }

    /// The current epoch.
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Ends the current epoch and wakes every task waiting on it.
    #[inline]
    pub fn fire(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.wake_listeners();
    }

    /// Ends epoch `epoch` like [`fire`](Signal::fire), if the signal is still in it; `false`
    /// (and nothing done) if it has moved on.
    ///
    /// For a backend whose holds share one signal (one per lock id, each hold an epoch): a
    /// holder that releases ends its own epoch only, never the next holder's, even if
    /// something else ended its hold and granted the id on meanwhile.
    ///
    /// # Examples
    ///
    /// ```
    /// use lock_core::backend::Signal;
    ///
    /// let signal = Signal::new();
    /// let mine = signal.epoch();
    /// signal.fire(); // something else ended it, and the next hold began
    /// assert!(!signal.fire_if(mine)); // a late release of the first leaves the next alone
    /// assert!(signal.fire_if(mine + 1));
    /// ```
    #[inline]
    pub fn fire_if(&self, epoch: u64) -> bool {
        let moved = self
            .epoch
            .compare_exchange(epoch, epoch + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if moved {
            self.wake_listeners();
        }
        moved
    }

    #[inline]
    fn wake_listeners(&self) {
        // Pairs with `wait`: a waiter registers in `listeners` before it reads `epoch`, so
        // either it sees the new epoch or we see it and wake it.
        if self.listeners.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Resolves once the epoch differs from `epoch`, or once `deadline` has passed.
    pub(crate) async fn wait(&self, epoch: u64, deadline: Option<&Deadline>) {
        self.listeners.fetch_add(1, Ordering::SeqCst);
        let _listening = Listening(&self.listeners);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.epoch() != epoch {
                return;
            }
            match deadline.and_then(Deadline::instant) {
                None => notified.await,
                Some(at) if at <= Instant::now() => return,
                Some(at) => {
                    // The deadline may move later while we sleep: loop and re-read it.
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
            }
            if deadline.is_some_and(Deadline::has_passed) {
                return;
            }
        }
    }
}

impl Default for Signal {
    fn default() -> Self {
        Signal::new()
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signal")
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

struct Listening<'a>(&'a AtomicUsize);

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A point on the monotonic clock after which something (a session's lease) must be assumed
/// gone, shared between the task that extends it and every [`Held`](crate::Held) that checks
/// it. Checking it is a clock read, so a process that resumes from a pause sees the loss before
/// any timer task has run.
pub struct Deadline {
    base: Instant,
    /// Nanoseconds after `base`; `u64::MAX` means "no deadline".
    nanos: AtomicU64,
}

impl Deadline {
    /// A deadline at `at`. It can only move later ([`extend_to`](Deadline::extend_to)) while it
    /// has not passed, or pass at once ([`expire`](Deadline::expire)).
    pub fn new(at: Instant) -> Self {
        let base = Instant::now();
        Deadline {
            base,
            nanos: AtomicU64::new(nanos_after(base, at)),
        }
    }

    /// Moves the deadline to `at` only if that is later than the current one and the current
    /// one has not passed.
    ///
    /// A deadline that has passed never moves again: whatever relied on it (a session, its
    /// locks) is gone for good, even if a late confirmation arrives afterwards. Returns whether
    /// the deadline is still ahead.
    pub fn extend_to(&self, at: Instant) -> bool {
        let nanos = nanos_after(self.base, at);
        let now = nanos_after(self.base, Instant::now());
        self.nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current| {
                (current != u64::MAX && current > now && nanos > current).then_some(nanos)
            })
            .is_ok()
            || !self.has_passed()
    }

    /// Makes the deadline pass now (if it has not passed already: then it keeps the moment
    /// it passed), for good.
    pub fn expire(&self) {
        let now = nanos_after(self.base, Instant::now());
        self.nanos.fetch_min(now, Ordering::SeqCst);
    }

    /// The deadline as an instant.
    pub fn instant(&self) -> Option<Instant> {
        match self.nanos.load(Ordering::SeqCst) {
            u64::MAX => None,
            n => Some(self.base + Duration::from_nanos(n)),
        }
    }

    /// Whether the deadline has passed.
    pub fn has_passed(&self) -> bool {
        self.instant().is_some_and(|at| at <= Instant::now())
    }
}

/// `at` as nanoseconds after `base` (0 if earlier), below the "no deadline" value.
fn nanos_after(base: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX - 1)
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let left = self
            .instant()
            .map(|at| at.saturating_duration_since(Instant::now()));
        f.debug_struct("Deadline")
            .field("remaining", &left)
            .finish()
    }
}

/// Something that owns a [`Signal`]: the signal itself, or a backend's locker or session state,
/// so that a [`Held`](crate::Held) can share the backend's existing `Arc` instead of needing a
/// separate allocation.
pub trait HasSignal: Send + Sync + 'static {
    /// The signal.
    fn signal(&self) -> &Signal;
}

impl HasSignal for Signal {
    fn signal(&self) -> &Signal {
        self
    }
}

/// A view of one epoch of a [`Signal`], optionally bounded by a [`Deadline`]: the thing a
/// [`Held`](crate::Held) and a [`Done`](crate::Done) are made of.
#[derive(Clone)]
pub(crate) struct Watch {
    source: Arc<dyn HasSignal>,
    epoch: u64,
    deadline: Option<Arc<Deadline>>,
}

impl Watch {
    #[inline]
    pub(crate) fn new(
        source: Arc<dyn HasSignal>,
        epoch: u64,
        deadline: Option<Arc<Deadline>>,
    ) -> Self {
        Watch {
            source,
            epoch,
            deadline,
        }
    }

    #[inline]
    pub(crate) fn is_fired(&self) -> bool {
        self.source.signal().epoch() != self.epoch
            || self.deadline.as_deref().is_some_and(Deadline::has_passed)
    }

    /// Why the epoch ended: the backend's record, or the deadline if that passed first.
    pub(crate) fn loss(&self) -> Option<Loss> {
        let signal = self.source.signal();
        let fired = signal.epoch() != self.epoch;
        let passed = self
            .deadline
            .as_deref()
            .filter(|d| d.has_passed())
            .and_then(Deadline::instant);
        if !fired && passed.is_none() {
            return None;
        }
        let recorded = if fired {
            signal.loss_of(self.epoch)
        } else {
            None
        };
        Some(match (recorded, passed) {
            (Some(recorded), Some(at)) if recorded.at().is_some_and(|r| at < r) => {
                let late = recorded.at().map_or(Duration::ZERO, |r| r - at);
                Loss::new(
                    LossCause::DeadlinePassed,
                    Some(at),
                    format!("the session's deadline passed {late:?} before the backend recorded: {recorded}"),
                )
            }
            (Some(recorded), _) => recorded,
            (None, Some(at)) if !fired => Loss::new(
                LossCause::DeadlinePassed,
                Some(at),
                "the session's deadline passed",
            ),
            // Fired without a record (kept): when, and whether before the deadline, is unknown.
            (None, _) => Loss::new(LossCause::Unknown, None, ""),
        })
    }

    pub(crate) async fn fired(self) {
        let deadline = self.deadline.as_deref();
        self.source.signal().wait(self.epoch, deadline).await;
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("fired", &self.is_fired())
            .finish()
    }
}
