//! Who leads an election ([`Leader`]), and its history as it happens ([`Observer`], fed by a
//! backend's [`Publisher`]). Below the contract, which names them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::hold::Done;

/// Who leads an election: the value the leader campaigned with or last proclaimed (e.g. its
/// address), and its term's fencing token.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Leader {
    value: Vec<u8>,
    token: u64,
}

impl Leader {
    /// A leader with `value`, in the term with fencing token `token`.
    pub fn new(value: impl Into<Vec<u8>>, token: u64) -> Self {
        Leader {
            value: value.into(),
            token,
        }
    }

    /// The leader's value.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The leader's value as text, if it is UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// The fencing token of the term: the leader's hold's. Every term has its own, greater than
    /// every earlier term's.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }
}

impl fmt::Debug for Leader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Leader");
        match self.value_str() {
            Some(value) => d.field("value", &value),
            None => d.field("value", &self.value),
        };
        d.field("fencing_token", &self.token).finish()
    }
}

/// The history of an election as it happens: [`next`](Observer::next) gives the leader when
/// observing began (or `None`: nobody leads), then every change of leader or value, in the
/// order they happened, none skipped. Made by [`Election::observe`](crate::Election::observe). It keeps its session open,
/// and ends with it.
///
/// Changes queue up in the observer until they are read (one small entry each).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(session: lock_core::Session) -> lock_core::Result<()> {
/// let election = session.new_election("reports/leader")?;
/// let mut observer = election.observe().await?;
/// loop {
///     match observer.next().await? {
///         Some(leader) => println!("{:?} leads (term {})", leader.value_str(), leader.fencing_token()),
///         None => println!("nobody leads"),
///     }
/// }
/// # }
/// ```
pub struct Observer {
    rx: mpsc::UnboundedReceiver<Result<Option<Leader>>>,
    ended: bool,
    /// What the backend keeps alive while the observer lives (see [`Observer::keeping`]).
    _keep: Option<Box<dyn Send + Sync>>,
    /// For a session the handles end: its `done()`, which ends the observer.
    pub(crate) session_done: Option<Done>,
}

/// A backend's end of an [`Observer`]: it publishes each change, in order.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Result<Option<Leader>>>,
}

impl Observer {
    /// A new observer and the [`Publisher`] that feeds it (for backends).
    pub fn channel() -> (Publisher, Observer) {
        let (tx, rx) = mpsc::unbounded_channel();
        let observer = Observer {
            rx,
            ended: false,
            _keep: None,
            session_done: None,
        };
        (Publisher { tx }, observer)
    }

    /// This observer, keeping `keep` alive while it lives (for backends): e.g. the election
    /// party it observes through, which keeps its session open so that the session's end
    /// ends the observer.
    #[must_use]
    pub fn keeping(mut self, keep: impl Send + Sync + 'static) -> Self {
        self._keep = Some(Box::new(keep));
        self
    }

    /// The next state of the election: the leader (with its value), or `None` when nobody
    /// leads. The first call gives the state when observing began.
    ///
    /// Cancel-safe: a dropped call loses nothing.
    ///
    /// # Errors
    ///
    /// Once the observer ended: [`Error::Canceled`] when its session ended, what the backend
    /// could not do (its error, once; it ends the observer), then [`Error::AlreadyClosed`].
    pub async fn next(&mut self) -> Result<Option<Leader>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`next`](Observer::next) as a poll function, for a `Stream` adapter.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Leader>>> {
        if self.ended {
            return Poll::Ready(Err(Error::AlreadyClosed("the observer had ended")));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                self.ended = item.is_err();
                Poll::Ready(item)
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Err(Error::Canceled(
                    "the observed election's session ended".into(),
                )))
            }
            Poll::Pending => {
                let ended = match self.session_done.as_mut() {
                    Some(done) => Pin::new(done).poll(cx).is_ready(),
                    None => false,
                };
                if !ended {
                    return Poll::Pending;
                }
                self.ended = true;
                Poll::Ready(Err(Error::Canceled("the observer's session ended".into())))
            }
        }
    }
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("queued", &self.rx.len())
            .field("ended", &self.ended)
            .finish()
    }
}

impl Publisher {
    /// Publishes the election's new state; `false` once the observer is gone (stop then).
    pub fn publish(&self, leader: Option<Leader>) -> bool {
        self.tx.send(Ok(leader)).is_ok()
    }

    /// Ends the observer with `error` (it reads the changes published before it first).
    pub fn fail(&self, error: Error) {
        let _ = self.tx.send(Err(error));
    }

    /// Whether the observer is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the observer is gone.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("closed", &self.is_closed())
            .finish()
    }
}
