//! Turning etcd client errors into [`lock_core::Error`]s that say what to do.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use lock_core::Error;

/// An etcd failure with what we were doing when it happened, and what to check; its source is
/// the `etcd_client::Error`, if the client reported one (for `downcast_ref`).
#[derive(Debug)]
pub(crate) struct EtcdError {
    context: &'static str,
    /// What to check, or what happened when the client reported nothing.
    note: Option<String>,
    source: Option<etcd_client::Error>,
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.note {
            Some(note) => write!(f, "{} ({note})", self.context),
            None => f.write_str(self.context),
        }
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

pub(crate) fn etcd_error(context: &'static str, e: etcd_client::Error) -> Error {
    let lower = e.to_string().to_ascii_lowercase();
    let hint = if lower.contains("authentication failed") || lower.contains("invalid auth token") {
        Some("check the username and password")
    } else if lower.contains("permission denied") {
        Some("the etcd user's role must allow read and write on the lock prefix")
    } else if lower.contains("user name is empty") || lower.contains("user name not found") {
        Some("the cluster has authentication enabled: pass username and password")
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        Some("check ca-file, cert-file and key-file against the cluster's certificates")
    } else {
        None
    };
    let transient = is_unavailable(&e);
    let error = EtcdError {
        context,
        note: hint.map(str::to_owned),
        source: Some(e),
    };
    match transient {
        true => Error::backend_transient(crate::SERVICE_ETCD, error),
        false => Error::backend(crate::SERVICE_ETCD, error),
    }
}

/// Whether etcd refused a request because a lease it named does not exist (revoked, or
/// expired on the server).
pub(crate) fn is_lease_not_found(e: &Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.to_string().contains("requested lease not found") {
            return true;
        }
        source = s.source();
    }
    false
}

pub(crate) fn timeout_error(context: &'static str, after: Duration) -> Error {
    Error::backend_transient(
        crate::SERVICE_ETCD,
        EtcdError {
            context,
            note: Some(format!(
                "no answer from etcd within {after:?}; is the cluster reachable?"
            )),
            source: None,
        },
    )
}

/// Runs a single-shot future (a stream message) with a time limit.
pub(crate) async fn once<T>(
    context: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(etcd_error(context, e)),
        Err(_) => Err(timeout_error(context, limit)),
    }
}

/// Whether `e` means the request did not reach a working member (connection refused or
/// reset, no leader during an election) or the cluster asked us to slow down (`too many
/// requests`, its apply backlog is full), so that sending it again later may succeed.
pub(crate) fn is_unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            // etcd says "too many requests" with ResourceExhausted.
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted
            )
            // Made on our side from a local cause (the connection broke: reset, broken pipe,
            // closed under a pending request, which tonic reports as Unknown or Cancelled):
            // the request may not have arrived. A status etcd sent carries no source.
            || std::error::Error::source(status).is_some()
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Runs one etcd request, sending it again while the cluster is unavailable (a dead member,
/// an election) and when one try goes unanswered for half of `limit` (at least 500 ms: a
/// member that stopped answering; the next try usually goes to another), for at most `limit`
/// in all.
///
/// Every request this crate sends is safe to repeat, and safe to land late (a request we gave
/// up on may still be applied after newer ones): putting our key again keeps its create
/// revision (and the acquire reads it back from `prev_kv`), a delete of our key is guarded by
/// the create revision of the incarnation it means (so a late one deletes nothing newer), and
/// the rest only read — except a lease grant, whose late or repeated copy leaves a lease nobody
/// keeps alive, which etcd expires after its TTL, and a put of our key that lands after its
/// session moved the key to a fresh lease, which binds it to the old lease again (the key then
/// goes when that lease is revoked; the holder sees its key deleted). (An unlock whose first
/// delete arrived but whose answer was lost reports `NotHeld`: the key is gone either way.)
pub(crate) async fn request<T, F, Fut>(
    context: &'static str,
    limit: Duration,
    call: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let per_try = (limit / 2).max(Duration::from_millis(500));
    request_in_tries(context, limit, per_try, call).await
}

/// [`request`] with tries of at most `per_try` each.
pub(crate) async fn request_in_tries<T, F, Fut>(
    context: &'static str,
    limit: Duration,
    per_try: Duration,
    mut call: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + limit;
    let mut backoff = Duration::from_millis(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(per_try), call()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if is_unavailable(&e) && Instant::now() + backoff < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            Ok(Err(e)) => return Err(etcd_error(context, e)),
            Err(_) if Instant::now() < deadline => {
                tracing::debug!(context, after = ?per_try, "no answer: sending the request again");
            }
            Err(_) => return Err(timeout_error(context, limit)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_unavailable;

    fn status(status: tonic::Status) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(status)
    }

    #[test]
    fn a_broken_connection_is_retried_and_a_server_error_is_not() {
        let reset = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        assert!(is_unavailable(&status(tonic::Status::from_error(
            Box::new(reset)
        ))));
        let closed = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "closed");
        let mut canceled = tonic::Status::cancelled("operation was canceled");
        canceled.set_source(std::sync::Arc::new(closed));
        assert!(is_unavailable(&status(canceled)));
        assert!(!is_unavailable(&status(tonic::Status::cancelled(
            "by the server"
        ))));
        assert!(is_unavailable(&status(tonic::Status::unavailable(
            "no leader"
        ))));
        assert!(is_unavailable(&status(tonic::Status::resource_exhausted(
            "too many requests"
        ))));
        assert!(
            super::etcd_error("x", status(tonic::Status::unavailable("no leader"))).is_transient()
        );
        assert!(super::timeout_error("x", std::time::Duration::from_secs(1)).is_transient());
        let denied = status(tonic::Status::permission_denied("permission denied"));
        assert!(!super::etcd_error("x", denied).is_transient());
        // The same code, sent by etcd: no local cause, not retried.
        assert!(!is_unavailable(&status(tonic::Status::unknown(
            "some server error"
        ))));
        assert!(!is_unavailable(&status(tonic::Status::permission_denied(
            "denied"
        ))));
        assert!(!is_unavailable(&status(tonic::Status::invalid_argument(
            "bad request"
        ))));
    }
}
