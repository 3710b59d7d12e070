//! Keeps the client's requests off members that do not answer.
//!
//! etcd-client balances requests over one connection per endpoint and uses a connection as soon
//! as TCP connects. A member that is stopped (SIGSTOP, a hung disk, a frozen VM) still has its
//! connections accepted by the kernel and then answers nothing, so about a third of the
//! requests of a fresh client would hang on it until their timeout. (etcd's Go client waits for
//! the server's HTTP/2 preface before it uses a connection, so it does not suffer this.)
//!
//! So every endpoint is probed on a client of its own — a serializable count of the lock prefix,
//! which the member answers from its own copy: it tells whether the member's process answers,
//! also while the cluster elects a leader (requests that need a leader are retried while etcd
//! says there is none) — and:
//!
//! - at connect, the service's client gets only the endpoints that answered (the first answer
//!   within `dial-timeout`, the others within a short grace after it);
//! - afterwards a task probes every endpoint each [`PROBE_EVERY`]: an endpoint that fails
//!   [`FAILURES_TO_REMOVE`] probes in a row leaves the client's balancer (unless no other
//!   endpoint answered its latest probe: the last one stays), and it comes back once it
//!   answers again.
//!
//! A removed endpoint takes no new requests; streams already on it (keep-alives, watches) are
//! moved by their owners, which notice the stall themselves. The keeper opens its keep-alive
//! stream on the probing client of the endpoint that answered most recently
//! ([`Probes::pick`]), never on the one it just saw stall.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use lock_core::Error;
use tokio::task::JoinSet;

use crate::error::{etcd_error, timeout_error};

/// How often the monitor probes each endpoint.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a probe may take before it counts as failed.
pub(crate) const PROBE_LIMIT: Duration = Duration::from_millis(500);
/// Failed probes in a row after which an endpoint stops taking requests.
pub(crate) const FAILURES_TO_REMOVE: u32 = 2;

/// One client per endpoint, for probing (and for streams that must avoid a silent member),
/// and what the probes found.
pub(crate) struct Probes {
    prefix: String,
    clients: Vec<(String, Client)>,
    found: Mutex<Vec<Found>>,
}

/// What the probes found about one endpoint.
#[derive(Clone, Copy, Default)]
struct Found {
    /// Whether the service's balanced client sends requests to it.
    in_use: bool,
    /// Failed probes in a row.
    failures: u32,
    /// When it last answered a probe.
    answered: Option<Instant>,
}

impl Probes {
    /// A probing client per endpoint, made concurrently within `limit` (with credentials,
    /// making one asks the member for a token). An endpoint whose client is not made in time
    /// is left out of probing; so is one that refuses it, unless every endpoint does (then the
    /// first refusal is the error).
    pub(crate) async fn new(
        endpoints: &[String],
        options: &ConnectOptions,
        prefix: &str,
        limit: Duration,
    ) -> Result<Self, Error> {
        let mut making = JoinSet::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            let (endpoint, options) = (endpoint.clone(), options.clone());
            making.spawn(async move {
                let made = Client::connect([endpoint.as_str()], Some(options)).await;
                (i, endpoint, made)
            });
        }
        let deadline = tokio::time::Instant::now() + limit;
        let mut made = Vec::new();
        let mut refused = None;
        while let Ok(Some(Ok((i, endpoint, result)))) =
            tokio::time::timeout_at(deadline, making.join_next()).await
        {
            match result {
                Ok(client) => made.push((i, endpoint, client)),
                Err(e) => {
                    refused.get_or_insert_with(|| etcd_error("connecting to etcd", e));
                }
            }
        }
        making.abort_all();
        if made.is_empty() {
            return Err(refused.unwrap_or_else(|| timeout_error("connecting to etcd", limit)));
        }
        made.sort_by_key(|(i, _, _)| *i);
        let clients: Vec<(String, Client)> = made.into_iter().map(|(_, e, c)| (e, c)).collect();
        let found = Mutex::new(vec![Found::default(); clients.len()]);
        Ok(Probes {
            prefix: prefix.to_owned(),
            clients,
            found,
        })
    }

    fn found(&self) -> MutexGuard<'_, Vec<Found>> {
        self.found.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client of the endpoint that answered a probe most recently, other than `avoid` (when
    /// another one answered at all): `(its index, the client)`.
    pub(crate) fn pick(&self, avoid: Option<usize>) -> (usize, Client) {
        let found = self.found();
        let best = (0..self.clients.len())
            .filter(|i| Some(*i) != avoid && found[*i].failures == 0)
            .max_by_key(|i| found[*i].answered)
            .or_else(|| (0..self.clients.len()).find(|i| Some(*i) != avoid))
            .unwrap_or(0);
        (best, self.clients[best].1.clone())
    }

    /// Starts one probe per endpoint, each within `limit`; each ends with its endpoint's index.
    fn probe_each(&self, limit: Duration) -> JoinSet<(usize, Result<Duration, Failure>)> {
        let mut probes = JoinSet::new();
        for (i, (_, client)) in self.clients.iter().enumerate() {
            let (client, prefix) = (client.clone(), self.prefix.clone());
            probes.spawn(async move { (i, probe(client, prefix, limit).await) });
        }
        probes
    }

    /// Probes every endpoint at once, each within `limit` (retrying while it says it is
    /// unavailable): whether each answered, in endpoint order.
    async fn probe_all(&self, limit: Duration) -> Vec<(String, bool)> {
        let mut probes = self.probe_each(limit);
        let mut answered = vec![false; self.clients.len()];
        while let Some(Ok((i, result))) = probes.join_next().await {
            answered[i] = result.is_ok();
        }
        self.clients
            .iter()
            .zip(answered)
            .map(|((endpoint, _), ok)| (endpoint.clone(), ok))
            .collect()
    }

    /// The endpoints that answer: waits up to `limit` for the first answer, then a grace of
    /// twice its time (at least 100 ms) for the others.
    ///
    /// # Errors
    ///
    /// When none answers: the first error that is not a timeout (wrong credentials, say),
    /// else a timeout that names `configured` (the `dial-timeout` the user set; `limit` is
    /// what is left of it).
    pub(crate) async fn answering(
        &self,
        limit: Duration,
        configured: Duration,
    ) -> Result<Vec<String>, Error> {
        let start = Instant::now();
        let mut probes = self.probe_each(limit);
        let mut answered = Vec::new();
        let mut said: Option<Error> = None;
        let mut until = start + limit;
        loop {
            let next = tokio::time::timeout_at(until.into(), probes.join_next()).await;
            let Ok(Some(Ok((i, result)))) = next else {
                break; // grace over, or every probe done
            };
            match result {
                Ok(took) => {
                    if answered.is_empty() {
                        until = Instant::now() + (2 * took).max(Duration::from_millis(100));
                    }
                    answered.push(i);
                }
                Err(Failure::Said(e)) => {
                    said.get_or_insert(e);
                }
                Err(Failure::Silent) => {}
            }
        }
        probes.abort_all();
        if answered.is_empty() {
            return Err(said.unwrap_or_else(|| timeout_error("reaching the cluster", configured)));
        }
        answered.sort_unstable();
        let now = Instant::now();
        let mut found = self.found();
        for &i in &answered {
            found[i] = Found {
                in_use: true,
                failures: 0,
                answered: Some(now),
            };
        }
        drop(found);
        Ok(answered
            .into_iter()
            .map(|i| self.clients[i].0.clone())
            .collect())
    }
}

/// Why a probe failed.
enum Failure {
    /// No answer within the limit.
    Silent,
    /// The member answered with an error (wrong credentials, no permission, …).
    Said(Error),
}

/// One probe: a serializable count of `prefix` (the member answers from its own copy), sent
/// again while the member says it is unavailable, all within `limit`. Returns how long it took.
async fn probe(client: Client, prefix: String, limit: Duration) -> Result<Duration, Failure> {
    let start = Instant::now();
    let kv = client.kv_client();
    let count = GetOptions::new()
        .with_prefix()
        .with_count_only()
        .with_serializable();
    // The inner limit is a little longer: running out of time is the outer timeout's to say.
    let answer = crate::error::request("reaching the cluster", limit * 2, || {
        let (mut kv, count, prefix) = (kv.clone(), count.clone(), prefix.clone());
        async move { kv.get(prefix, Some(count)).await }
    });
    match tokio::time::timeout(limit, answer).await {
        Ok(Ok(_)) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(Failure::Said(e)),
        Err(_) => Err(Failure::Silent),
    }
}

/// The monitor task: probes every endpoint each [`PROBE_EVERY`] (each probe within
/// [`PROBE_LIMIT`]) and moves `client`'s balancer off the endpoints that stopped answering and
/// back onto them once they answer again.
pub(crate) async fn monitor(probes: Arc<Probes>, client: Client) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let results = probes.probe_all(PROBE_LIMIT).await;
        let any_answered = results.iter().any(|(_, ok)| *ok);
        for (i, (endpoint, ok)) in results.into_iter().enumerate() {
            let now = probes.found()[i];
            let mut next = now;
            if ok {
                next.failures = 0;
                next.answered = Some(Instant::now());
                if !now.in_use && client.add_endpoint(&endpoint).await.is_ok() {
                    next.in_use = true;
                    tracing::info!(%endpoint, "etcd endpoint answers again: back in use");
                }
            } else {
                next.failures += 1;
                if now.in_use
                    && next.failures >= FAILURES_TO_REMOVE
                    && any_answered
                    && client.remove_endpoint(&endpoint).await.is_ok()
                {
                    next.in_use = false;
                    tracing::warn!(%endpoint, "etcd endpoint does not answer: no longer used");
                }
            }
            probes.found()[i] = next;
        }
    }
}
