//! Leader election: the [`Election`] handle. Who leads ([`Leader`]) and the history of an
//! election ([`Observer`]) are `crate::observe`'s, below the contract.

use std::fmt;
use std::sync::Arc;

use crate::contract;
use crate::error::{Error, Result};
use crate::locker::{Held, Lock, Locker};
use crate::loss::LossCause;
use crate::observe::{Leader, Observer};

/// One party's handle on one election, made by
/// [`Session::new_election`](crate::Session::new_election): campaign for leadership with a
/// value, learn who leads, observe every change.
///
/// Leadership is a hold: [`campaign`](Election::campaign) waits (in FIFO order with the other
/// candidates, up to the session's timeout) and returns a [`Held`] whose
/// [`lost`](Held::lost) fires the moment this party no longer leads — before anybody else can
/// be elected — and whose fencing token is the term's. Resign with [`Held::unlock`] (or by
/// dropping the guard). Like a [`Locker`], one party campaigns at a time; give each task its
/// own.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(session: lock_core::Session) -> lock_core::Result<()> {
/// let mut election = session.new_election("reports/leader")?;
/// let term = election.campaign("10.0.0.7:8080").await?;
/// tokio::select! {
///     () = term.lost() => eprintln!("no longer the leader; stop leading"),
///     () = lead(term.fencing_token()) => {}
/// }
/// term.unlock().await?; // resign
/// # Ok(()) }
/// # async fn lead(_token: u64) {}
/// ```
pub struct Election {
    locker: Locker,
    backend: Arc<dyn contract::Election>,
}

impl Election {
    pub(crate) fn new(locker: Locker, backend: Arc<dyn contract::Election>) -> Self {
        Election { locker, backend }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        self.locker.id()
    }

    /// Campaigns with `value`: waits until this party leads, in FIFO order with the other
    /// candidates and up to the session's timeout, and returns the guard of its term. The
    /// leader's value is `value` until it [`proclaim`](Election::proclaim)s another.
    ///
    /// Cancel-safe, as [`Locker::lock`].
    ///
    /// # Errors
    ///
    /// As [`Locker::lock`]: [`Error::AlreadyLocked`] while this party leads,
    /// [`Error::Timeout`], [`Error::Canceled`], [`Error::AlreadyClosed`].
    pub fn campaign(&mut self, value: impl Into<Vec<u8>>) -> Lock<'_> {
        self.backend.propose(value.into());
        self.locker.lock()
    }

    /// Replaces the leader's value with `value`, while `term` (this party's) lasts; observers
    /// see the change.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] if `term` is not a term of this party; [`Error::Lost`] if it had
    /// ended; what the backend could not do.
    pub async fn proclaim(&self, term: &Held, value: impl Into<Vec<u8>>) -> Result<()> {
        if !std::ptr::eq(
            term.locker().backend() as *const dyn contract::Locker as *const (),
            self.locker.backend() as *const dyn contract::Locker as *const (),
        ) {
            return Err(Error::NotHeld);
        }
        if term.is_lost() {
            return Err(term.lost_error(LossCause::Unknown, "the term had ended"));
        }
        match self
            .backend
            .proclaim(term.fencing_token(), value.into())
            .await
        {
            Err(Error::NotHeld) => Err(term.lost_error(LossCause::Unknown, "the term had ended")),
            outcome => outcome,
        }
    }

    /// Who leads now, if anybody.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] after the session ended; what the backend could not do.
    pub async fn leader(&self) -> Result<Option<Leader>> {
        self.locker.backend().party().check_open()?;
        self.backend.leader().await
    }

    /// Starts observing the election (see [`Observer`]).
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] after the session ended; what the backend could not do.
    pub async fn observe(&self) -> Result<Observer> {
        let party = self.locker.backend().party();
        party.check_open()?;
        let mut observer = self.backend.observe().await?;
        // A session the handles end: they end its observers too.
        observer.session_done = party.session_done();
        Ok(observer)
    }
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name())
            .field("backend", &self.backend)
            .finish()
    }
}
