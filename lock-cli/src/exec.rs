//! `lock exec ID -- COMMAND` (also with `--limit N`), and `lock elect NAME VALUE -- COMMAND`.

use std::io::IsTerminal;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use lock::{Election, Error, Held, Locker, Session, SessionConfig};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::signal::unix::{signal, SignalKind};

use crate::args::{Command, Hold};
use crate::open::{open, unavailable, Opened};
use crate::{exit, Failure};

fn lock_error(id: &str, e: Error) -> Failure {
    match e {
        e @ (Error::LimitMismatch { .. } | Error::Unsupported(_)) => {
            Failure::new(exit::USAGE, e.to_string())
        }
        Error::Timeout(after) => Failure::new(
            exit::TIMEOUT,
            format!(
                "gave up waiting for lock {id} after {}",
                humantime::format_duration(after)
            ),
        ),
        other => unavailable(other),
    }
}

/// The exit status of `lock` for a finished command: its code, or 128 + the signal.
fn status_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        _ => 1,
    }
}

/// Shows "waiting for lock X, N ahead…" on a terminal while `lock()` waits; never returns.
async fn progress(opened: &Opened, id: &str, lease: Option<i64>) {
    let tty = std::io::stderr().is_terminal();
    tracing::info!(id, "waiting for the lock");
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !tty {
            continue;
        }
        let ahead = match (&opened.etcd, lease) {
            (Some(etcd), Some(lease)) => match etcd.status(id).await {
                Ok(status) => status
                    .keys
                    .iter()
                    .position(|k| k.lease == lease)
                    .map(|n| format!(", {n} ahead")),
                Err(_) => None,
            },
            _ => None,
        };
        eprint!("\rwaiting for lock {id}{}…   ", ahead.unwrap_or_default());
    }
}

/// SIGTERM to the command's process group (the command and everything it started that did
/// not leave the group), then SIGKILL to the group after `grace` if the command still runs —
/// and SIGKILL to whatever is left of the group once it has exited, so nothing it started goes
/// on without the lock.
async fn terminate(child: &mut Child, grace: Duration) {
    let group = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(?grace, "the command ignored SIGTERM; killing it");
        if let Some(group) = group {
            let _ = killpg(group, Signal::SIGKILL);
        }
        let _ = child.kill().await;
    }
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// How long `lock` spends giving back its lock and session on its way out, whatever the exit.
const CLEANUP_LIMIT: Duration = Duration::from_secs(1);

async fn release(held: Held) {
    match tokio::time::timeout(CLEANUP_LIMIT, held.unlock()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("unlock: {} (closing the session releases it)", e.report()),
        Err(_) => tracing::warn!("unlock took longer than {CLEANUP_LIMIT:?}"),
    }
}

/// Closes the session (revoking its lease, which takes its keys with it) within
/// [`CLEANUP_LIMIT`]: on every exit, so a failed `lock` leaves nothing queued behind.
async fn close(session: &Session) {
    match tokio::time::timeout(CLEANUP_LIMIT, session.close()).await {
        Ok(Ok(()) | Err(Error::AlreadyClosed(_))) => {}
        Ok(Err(e)) => {
            tracing::warn!(
                "closing the session: {} (it expires with its TTL)",
                e.report()
            )
        }
        Err(_) => tracing::warn!(
            "closing the session took longer than {CLEANUP_LIMIT:?} (it expires with its TTL)"
        ),
    }
}

enum Outcome {
    Exited(std::io::Result<ExitStatus>),
    Lost,
    Signaled(u8),
}

pub(crate) async fn run(command: Command) -> Result<u8, Failure> {
    let Command::Exec {
        common,
        id,
        hold,
        timeout,
        try_only,
        kill_after,
        command,
    } = command
    else {
        unreachable!("exec::run runs exec");
    };
    let opened = open(&common).await?;
    let mut config = SessionConfig::new(common.ttl);
    if let Some(limit) = timeout {
        config = config.with_timeout(limit);
    }
    let (session, lease): (Session, Option<i64>) = match &opened.etcd {
        Some(etcd) => {
            let session = etcd.open_session(config).await.map_err(unavailable)?;
            let lease = session.lease_id();
            (
                lock::backend::session(Arc::new(session), config),
                Some(lease),
            )
        }
        None => (
            opened
                .service
                .new_session(config)
                .await
                .map_err(unavailable)?,
            None,
        ),
    };
    let party = match hold {
        Hold::Lock => Ok(Party::Locker(session.new_locker(&id))),
        Hold::Permit(limit) => session.new_semaphore(&id, limit).map(Party::Locker),
        Hold::Leader(value) => session
            .new_election(&id)
            .map(|election| Party::Candidate(election, value)),
    };
    let result = match party {
        Ok(mut party) => {
            let result = hold_and_run(
                &opened, &mut party, &id, lease, try_only, kill_after, &command,
            )
            .await;
            drop(party);
            result
        }
        Err(e) => Err(lock_error(&id, e)),
    };
    close(&session).await;
    result
}

/// What a command runs under: a lock or a semaphore's permit, or an election's leadership.
enum Party {
    Locker(Locker),
    Candidate(Election, String),
}

impl Party {
    async fn acquire(&mut self) -> lock::Result<Held> {
        match self {
            Party::Locker(locker) => locker.lock().await,
            Party::Candidate(election, value) => election.campaign(value.as_str()).await,
        }
    }

    async fn try_acquire(&mut self) -> lock::Result<Option<Held>> {
        match self {
            Party::Locker(locker) => locker.try_lock().await,
            Party::Candidate(..) => Err(Error::Unsupported("--try with an election".into())),
        }
    }
}

/// Takes the lock, runs the command while holding it, and releases it (the session is the
/// caller's to close).
async fn hold_and_run(
    opened: &Opened,
    party: &mut Party,
    id: &str,
    lease: Option<i64>,
    try_only: bool,
    kill_after: Duration,
    command: &[std::ffi::OsString],
) -> Result<u8, Failure> {
    let held = if try_only {
        match party.try_acquire().await.map_err(|e| lock_error(id, e))? {
            Some(held) => held,
            None => {
                return Err(Failure::new(
                    exit::HELD,
                    format!("lock {id} is held by someone else"),
                ))
            }
        }
    } else {
        let held = tokio::select! {
            held = party.acquire() => held.map_err(|e| lock_error(id, e))?,
            () = progress(opened, id, lease) => unreachable!("progress never ends"),
        };
        if std::io::stderr().is_terminal() {
            eprint!("\r\x1b[K");
        }
        held
    };
    let token = held.fencing_token();
    tracing::info!(id, token, "lock acquired; running the command");
    // Its own process group: a loss or a signal reaches everything it started.
    let spawned = tokio::process::Command::new(&command[0])
        .process_group(0)
        .args(&command[1..])
        .env("LOCK_FENCING_TOKEN", token.to_string())
        .env("LOCK_ID", id)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            release(held).await;
            let status = match e.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            };
            return Err(Failure::new(
                status,
                format!("cannot run `{}`: {e}", command[0].to_string_lossy()),
            ));
        }
    };
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    let outcome = tokio::select! {
        status = child.wait() => Outcome::Exited(status),
        () = held.lost() => Outcome::Lost,
        _ = sigterm.recv() => Outcome::Signaled(15),
        _ = sigint.recv() => Outcome::Signaled(2),
    };
    match outcome {
        Outcome::Exited(status) => {
            release(held).await;
            let status = status.map_err(|e| {
                Failure::new(exit::UNAVAILABLE, format!("waiting for the command: {e}"))
            })?;
            Ok(status_code(status))
        }
        Outcome::Lost => {
            tracing::warn!(id, token, "lock lost while the command ran; terminating it");
            terminate(&mut child, kill_after).await;
            Err(Failure::new(
                exit::LOST,
                format!("lost lock {id} (fencing token {token}) while the command ran; the command was terminated"),
            ))
        }
        Outcome::Signaled(sig) => {
            terminate(&mut child, kill_after).await;
            release(held).await;
            Ok(128 + sig)
        }
    }
}

/// `lock observe NAME`: prints the leader now, then every change, until a signal.
pub(crate) async fn observe(command: Command) -> Result<u8, Failure> {
    let Command::Observe { common, name } = command else {
        unreachable!("exec::observe runs observe");
    };
    let opened = open(&common).await?;
    let session = opened
        .service
        .new_session(SessionConfig::new(common.ttl))
        .await
        .map_err(unavailable)?;
    let result = print_changes(&session, &name).await;
    close(&session).await;
    result
}

async fn print_changes(session: &Session, name: &str) -> Result<u8, Failure> {
    use std::io::Write;
    let election = session
        .new_election(name)
        .map_err(|e| lock_error(name, e))?;
    let mut observer = election.observe().await.map_err(unavailable)?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    loop {
        let next = tokio::select! {
            next = observer.next() => next.map_err(unavailable)?,
            _ = sigterm.recv() => return Ok(128 + 15),
            _ = sigint.recv() => return Ok(128 + 2),
        };
        let line = match next {
            Some(leader) => format!(
                "{}\t{}",
                leader.fencing_token(),
                String::from_utf8_lossy(leader.value())
            ),
            None => "-".to_owned(),
        };
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(0); // stdout closed (`| head`): nothing more to say
        }
    }
}
