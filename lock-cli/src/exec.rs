//! `lock exec ID -- COMMAND`.

use std::io::IsTerminal;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use lock::{Error, Locker, Session, SessionConfig};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::signal::unix::{signal, SignalKind};

use crate::args::Command;
use crate::open::{open, unavailable, Opened};
use crate::{exit, Failure};

fn lock_error(id: &str, e: Error) -> Failure {
    match e {
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

async fn release(locker: &mut Locker) {
    match tokio::time::timeout(CLEANUP_LIMIT, locker.unlock()).await {
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
    let mut locker = session.new_locker(&id);
    let result = hold_and_run(
        &opened,
        &mut locker,
        &id,
        lease,
        try_only,
        kill_after,
        &command,
    )
    .await;
    drop(locker);
    close(&session).await;
    result
}

/// Takes the lock, runs the command while holding it, and releases it (the session is the
/// caller's to close).
async fn hold_and_run(
    opened: &Opened,
    locker: &mut Locker,
    id: &str,
    lease: Option<i64>,
    try_only: bool,
    kill_after: Duration,
    command: &[std::ffi::OsString],
) -> Result<u8, Failure> {
    let held = if try_only {
        match locker.try_lock().await.map_err(|e| lock_error(id, e))? {
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
            held = locker.lock() => held.map_err(|e| lock_error(id, e))?,
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
            release(locker).await;
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
            release(locker).await;
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
            release(locker).await;
            Ok(128 + sig)
        }
    }
}
