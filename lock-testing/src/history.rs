//! What happened in a test world, and the checks an application test wants of it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use lock_core::LossCause;

/// One thing that happened, at `at` (tokio's clock, from the controller's creation: under a
/// paused clock the same test gives the same times every run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When, from the controller's creation.
    pub at: Duration,
    /// What.
    pub what: What,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// Session `session` (numbered from 1 in the order they were opened) was granted `id` with
    /// fencing `token`; `limit` is the semaphore's, 1 for a lock or an election.
    Granted {
        /// The lock, semaphore or election id.
        id: String,
        /// The hold's fencing token.
        token: u64,
        /// The session's number.
        session: usize,
        /// How many may hold `id` at once.
        limit: u32,
    },
    /// The holder of `token` released it (`unlock()`, or its guard dropped).
    Released {
        /// The id.
        id: String,
        /// The hold's fencing token.
        token: u64,
    },
    /// The hold of `token` was lost, for `cause` (as `Held::loss` reports it).
    Lost {
        /// The id.
        id: String,
        /// The hold's fencing token.
        token: u64,
        /// Why.
        cause: LossCause,
    },
    /// The application wrote to `resource` with fencing `token`
    /// ([`Resource::write`](crate::Resource::write)); `accepted` if no newer token had written.
    Write {
        /// The resource's name.
        resource: String,
        /// The token sent with the write.
        token: u64,
        /// Whether a fencing resource took it.
        accepted: bool,
    },
    /// The controller injected a fault.
    Fault(String),
}

/// Everything that happened in a test world, in order ([`Controller::history`]), with the
/// checks an application test wants.
///
/// [`Controller::history`]: crate::Controller::history
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History(pub Vec<Event>);

/// A hold's span in the history: its grant, and its end (release or loss) if it ended.
struct Span<'a> {
    id: &'a str,
    token: u64,
    limit: u32,
    granted: usize,
    ended: Option<(usize, Duration)>,
    lost_at: Option<Duration>,
}

impl History {
    /// Every hold, from its grant to its end (event indices).
    fn spans(&self) -> Vec<Span<'_>> {
        let mut spans: Vec<Span<'_>> = Vec::new();
        let mut open: BTreeMap<u64, usize> = BTreeMap::new();
        for (i, event) in self.0.iter().enumerate() {
            match &event.what {
                What::Granted {
                    id, token, limit, ..
                } => {
                    open.insert(*token, spans.len());
                    spans.push(Span {
                        id,
                        token: *token,
                        limit: *limit,
                        granted: i,
                        ended: None,
                        lost_at: None,
                    });
                }
                What::Released { token, .. } => {
                    if let Some(s) = open.remove(token) {
                        spans[s].ended = Some((i, event.at));
                    }
                }
                What::Lost { token, .. } => {
                    if let Some(s) = open.remove(token) {
                        spans[s].ended = Some((i, event.at));
                        spans[s].lost_at = Some(event.at);
                    }
                }
                What::Write { .. } | What::Fault(_) => {}
            }
        }
        spans
    }

    /// No two holders of a lock or an election at once, and never more than a semaphore's
    /// limit: in the order events happened, no grant of an id while its holds (up to its limit)
    /// had not ended.
    ///
    /// # Errors
    ///
    /// The first grant that broke it, and the holds it overlapped.
    pub fn check_no_two_holders(&self) -> Result<(), String> {
        let spans = self.spans();
        for (n, span) in spans.iter().enumerate() {
            let overlapping: Vec<u64> = spans[..n]
                .iter()
                .filter(|s| s.id == span.id && s.ended.is_none_or(|(end, _)| end > span.granted))
                .map(|s| s.token)
                .collect();
            if overlapping.len() >= span.limit as usize {
                return Err(format!(
                    "`{}` was granted with token {} while token(s) {overlapping:?} still held it \
                     (at most {} at once)",
                    span.id, span.token, span.limit
                ));
            }
        }
        Ok(())
    }

    /// Every write was made under a hold that was granted and not yet released or lost: a
    /// holder that keeps writing after `lost()` (or a write with a made-up token) fails this.
    ///
    /// # Errors
    ///
    /// The first write that broke it.
    pub fn check_writes_under_live_holds(&self) -> Result<(), String> {
        let spans = self.spans();
        for (i, event) in self.0.iter().enumerate() {
            let What::Write {
                resource, token, ..
            } = &event.what
            else {
                continue;
            };
            let live = spans.iter().any(|s| {
                s.token == *token && s.granted < i && s.ended.is_none_or(|(end, _)| end > i)
            });
            if !live {
                return Err(format!(
                    "a write to `{resource}` at {:?} with token {token} was made under no live \
                     hold (never granted, or already released or lost)",
                    event.at
                ));
            }
        }
        Ok(())
    }

    /// After each loss, its holder stopped writing within `grace`: no write with a lost hold's
    /// token later than `grace` after the loss.
    ///
    /// # Errors
    ///
    /// The first write that came too late.
    pub fn check_stopped_within(&self, grace: Duration) -> Result<(), String> {
        let spans = self.spans();
        for event in &self.0 {
            let What::Write {
                resource, token, ..
            } = &event.what
            else {
                continue;
            };
            let late = spans.iter().find(|s| {
                s.token == *token && s.lost_at.is_some_and(|lost| event.at > lost + grace)
            });
            if let Some(span) = late {
                let lost = span.lost_at.unwrap_or_default();
                return Err(format!(
                    "the holder of token {token} wrote to `{resource}` at {:?}, {:?} after it \
                     lost `{}` at {lost:?} (allowed: {grace:?})",
                    event.at,
                    event.at - lost,
                    span.id
                ));
            }
        }
        Ok(())
    }

    /// The grants, in order: `(id, token, session)`.
    pub fn grants(&self) -> Vec<(&str, u64, usize)> {
        self.0
            .iter()
            .filter_map(|e| match &e.what {
                What::Granted {
                    id, token, session, ..
                } => Some((id.as_str(), *token, *session)),
                _ => None,
            })
            .collect()
    }

    /// The losses, in order: `(id, token, cause)`.
    pub fn losses(&self) -> Vec<(&str, u64, LossCause)> {
        self.0
            .iter()
            .filter_map(|e| match &e.what {
                What::Lost { id, token, cause } => Some((id.as_str(), *token, *cause)),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for event in &self.0 {
            let at = event.at.as_secs_f64();
            match &event.what {
                What::Granted {
                    id,
                    token,
                    session,
                    limit,
                } => writeln!(
                    f,
                    "{at:>10.3}s  granted  {id} token {token} to session {session} (limit {limit})"
                )?,
                What::Released { id, token } => {
                    writeln!(f, "{at:>10.3}s  released {id} token {token}")?
                }
                What::Lost { id, token, cause } => {
                    writeln!(f, "{at:>10.3}s  lost     {id} token {token}: {cause}")?
                }
                What::Write {
                    resource,
                    token,
                    accepted,
                } => writeln!(
                    f,
                    "{at:>10.3}s  write    {resource} token {token}{}",
                    if *accepted {
                        ""
                    } else {
                        " (refused: stale token)"
                    }
                )?,
                What::Fault(what) => writeln!(f, "{at:>10.3}s  fault    {what}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, what: What) -> Event {
        Event {
            at: Duration::from_millis(ms),
            what,
        }
    }

    fn granted(id: &str, token: u64, limit: u32) -> What {
        What::Granted {
            id: id.into(),
            token,
            session: 1,
            limit,
        }
    }

    fn write(token: u64) -> What {
        What::Write {
            resource: "db".into(),
            token,
            accepted: true,
        }
    }

    #[test]
    fn the_checks_catch_what_they_name() {
        let lost = What::Lost {
            id: "x".into(),
            token: 1,
            cause: LossCause::Removed,
        };
        let good = History(vec![
            at(0, granted("x", 1, 1)),
            at(1, write(1)),
            at(2, lost.clone()),
            at(3, granted("x", 2, 1)),
            at(4, write(2)),
        ]);
        assert!(good.check_no_two_holders().is_ok());
        assert!(good.check_writes_under_live_holds().is_ok());
        assert!(good.check_stopped_within(Duration::ZERO).is_ok());

        let two = History(vec![at(0, granted("x", 1, 1)), at(1, granted("x", 2, 1))]);
        assert!(two.check_no_two_holders().is_err());
        let permits = History(vec![at(0, granted("s", 1, 2)), at(1, granted("s", 2, 2))]);
        assert!(permits.check_no_two_holders().is_ok());

        let late = History(vec![
            at(0, granted("x", 1, 1)),
            at(2, lost),
            at(50, write(1)),
        ]);
        assert!(late.check_writes_under_live_holds().is_err());
        assert!(late
            .check_stopped_within(Duration::from_millis(10))
            .is_err());
        assert!(late
            .check_stopped_within(Duration::from_millis(100))
            .is_ok());
    }
}
