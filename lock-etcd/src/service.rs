//! The etcd service: one client, one keep-alive stream, one delete-watch (plus a watch per id
//! it has waiters for).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::config::EtcdConfig;
use crate::error::request;
use crate::exit::{Debts, Flush};
use crate::hub::Hub;
use crate::keeper::{self, EndReason, Keeper};
use crate::session::{EtcdSession, SessionCore};
use crate::shared::{OpenSession, ServiceCore, MAX_WRITES_IN_FLIGHT};
use lock_core::backend::{self, Deadline, OpFuture};
use lock_core::{Error, Result, SessionConfig};

/// The longest session TTL: etcd's largest lease TTL (its `MaxLeaseTTL`, 9,000,000,000 s).
pub const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// The `etcd:` service. Open it with `lock::new("etcd:http://…")` or [`EtcdService::connect`].
///
/// Sessions keep the service's connection alive; [`EtcdService::close`] ends every session and
/// revokes their leases.
#[derive(Clone)]
pub struct EtcdService {
    core: Arc<ServiceCore>,
}

impl EtcdService {
    /// Connects as `config` says, waits (up to `dial-timeout`) for the cluster to answer, and
    /// starts the keep-alive and watch tasks. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the cluster cannot be reached, refuses the credentials or
    /// certificates, or is too old (with `reject-old-cluster`);
    /// [`Error::InvalidConnectionString`] when a TLS file cannot be read.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        let (client, probes) = crate::connect::connect(&config).await?;
        let probes = Arc::new(probes);
        let hub = Arc::new(Hub::default());
        let keeper = Arc::new(Keeper::default());
        let limit = config.request_timeout;
        let mut tasks = vec![hub.start(&client, &config.prefix, limit).await?];
        let debts = Arc::new(Debts::default());
        let owed = keeper.clone();
        let flush = Flush {
            leases: Box::new(move || owed.owed_leases()),
            debts: debts.clone(),
            config: config.clone(),
            finished: false,
        };
        let keeping = keeper::run(keeper.clone(), client.clone(), probes.clone(), limit);
        tasks.push(tokio::spawn(async move {
            let mut flush = flush; // the whole guard lives in the task (dropped with it)
            keeping.await;
            flush.finished = true;
        }));
        tasks.push(tokio::spawn(crate::health::monitor(probes, client.clone())));
        let endpoints = Arc::new(Mutex::new(
            config.endpoints.iter().cloned().collect::<BTreeSet<_>>(),
        ));
        if let Some(interval) = config.auto_sync_interval {
            tasks.push(tokio::spawn(crate::connect::auto_sync(
                client.clone(),
                endpoints.clone(),
                interval,
                limit,
            )));
        }
        Ok(EtcdService {
            core: Arc::new(ServiceCore {
                client,
                owner: owner_description(),
                config,
                hub,
                keeper,
                debts,
                runtime: tokio::runtime::Handle::current(),
                endpoints,
                sessions: Mutex::new(Some(HashMap::new())),
                next_key: AtomicU64::new(1),
                tasks,
                writes: tokio::sync::Semaphore::new(MAX_WRITES_IN_FLIGHT),
            }),
        })
    }

    /// Opens a session as the application handle [`lock_core::Session`], as
    /// [`lock_core::Service::new_session`] does; [`open_session`](Self::open_session) gives the
    /// etcd session itself (its lease id).
    ///
    /// # Errors
    ///
    /// As [`open_session`](Self::open_session).
    pub async fn new_session(&self, config: SessionConfig) -> Result<lock_core::Session> {
        let session = self.open_session(config).await?;
        Ok(backend::session(Arc::new(session), config))
    }

    /// Closes the service, as [`lock_core::Service::close`] does.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyClosed`] on the second call.
    pub async fn close(&self) -> Result<()> {
        backend::Service::close(self).await
    }

    /// Opens a session (one lease) and returns the concrete type, which tells its lease id.
    ///
    /// # Errors
    ///
    /// As [`lock_core::Service::new_session`].
    pub async fn open_session(&self, config: SessionConfig) -> Result<EtcdSession> {
        Self::check_session_config(&config)?;
        if self.core.sessions().is_none() {
            return Err(Error::AlreadyClosed("the service was closed"));
        }
        let secs = config.ttl.as_secs();
        let ttl = Duration::from_secs(secs);
        let limit = self.core.config.request_timeout;
        let mut leases = self.core.client.lease_client();
        // When the request that succeeded was sent (after waiting for a write slot, which can
        // take a while when thousands of sessions open at once): the lease runs from no
        // earlier than that.
        let mut granted_at = Instant::now();
        let grant = self
            .core
            .write("granting the session's lease", || {
                granted_at = Instant::now();
                let mut leases = leases.clone();
                async move { leases.grant(secs as i64, None).await }
            })
            .await?;
        let lease = grant.id();
        if grant.ttl() != secs as i64 {
            let _ = tokio::time::timeout(limit, leases.revoke(lease)).await;
            return Err(Error::InvalidConfig(format!(
                "the etcd server changed the session ttl from {secs}s to {}s; its minimum lease TTL is {}s, use at least that",
                grant.ttl(),
                grant.ttl().max(secs as i64)
            )));
        }
        let deadline = Arc::new(Deadline::new(granted_at + ttl - keeper::margin(ttl)));
        let key = self.core.next_key();
        let session = Arc::new(SessionCore::new(
            key,
            self.core.clone(),
            lease,
            ttl,
            deadline.clone(),
        ));
        let registered = match self.core.sessions().as_mut() {
            Some(sessions) => {
                sessions.insert(key, Arc::downgrade(&session) as Weak<dyn OpenSession>);
                true
            }
            None => false,
        };
        if !registered {
            let _ = tokio::time::timeout(limit, leases.revoke(lease)).await;
            return Err(Error::AlreadyClosed("the service was closed"));
        }
        self.core
            .keeper
            .add(lease, ttl, granted_at, deadline, owner(&session));
        tracing::debug!(
            lease = format_args!("{lease:016x}"),
            ttl_secs = secs,
            "session started"
        );
        Ok(EtcdSession::new(session))
    }

    /// Checks, without contacting etcd, that sessions of `config` can be opened: a TTL of at
    /// least one second (etcd leases have whole-second TTLs) and at most [`MAX_TTL`].
    /// [`open_session`](Self::open_session) checks this first; a program can check its
    /// configuration before it connects.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use lock_core::SessionConfig;
    /// use lock_etcd::EtcdService;
    ///
    /// assert!(EtcdService::check_session_config(&SessionConfig::new(Duration::from_secs(10))).is_ok());
    /// let too_long = SessionConfig::new(Duration::from_secs(100_000_000 * 3600));
    /// let err = EtcdService::check_session_config(&too_long).unwrap_err();
    /// assert!(err.to_string().contains("9000000000"));
    /// ```
    pub fn check_session_config(config: &SessionConfig) -> Result<()> {
        config.validate()?;
        if config.ttl.as_secs() == 0 {
            return Err(Error::InvalidConfig(format!(
                "ttl {:?} is below one second; etcd leases have whole-second TTLs",
                config.ttl
            )));
        }
        if config.ttl.subsec_nanos() != 0 {
            let secs = config.ttl.as_secs();
            return Err(Error::InvalidConfig(format!(
                "ttl {:?} is not a whole number of seconds; etcd leases have whole-second TTLs: \
                 use {secs}s or {}s",
                config.ttl,
                secs + 1
            )));
        }
        if config.ttl > MAX_TTL {
            return Err(Error::InvalidConfig(format!(
                "ttl {} s is longer than etcd's largest lease TTL, {} s (about 285 years)",
                config.ttl.as_secs(),
                MAX_TTL.as_secs()
            )));
        }
        Ok(())
    }

    /// Who holds lock `id` and who waits for it, in queue order (the holder first), and the
    /// lock-delay of a hold that ended without a clean release, if one is pending: one read.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when etcd cannot be read; [`Error::InvalidId`].
    pub async fn status(&self, id: &str) -> Result<LockStatus> {
        backend::validate_id(id)?;
        let keys = crate::keys::IdKeys::new(&self.core.config.prefix, id);
        let kv = self.core.client.kv_client();
        let options = etcd_client::GetOptions::new()
            .with_range(keys.end.to_vec())
            .with_sort(
                etcd_client::SortTarget::Create,
                etcd_client::SortOrder::Ascend,
            );
        let resp = request(
            "reading the lock's keys",
            self.core.config.request_timeout,
            || {
                let (mut kv, from, options) = (kv.clone(), keys.records.to_vec(), options.clone());
                async move { kv.get(from, Some(options)).await }
            },
        )
        .await?;
        let read_at = std::time::SystemTime::now();
        let (mut queue, mut records) = (Vec::new(), Vec::new());
        for kv in resp.kvs() {
            match keys.classify(kv.key()) {
                Some((crate::keys::Kind::Queue, suffix)) => queue.push((
                    suffix,
                    KeyInfo {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        lease: kv.lease(),
                        token: kv.create_revision() as u64,
                        owner: String::from_utf8_lossy(kv.value()).into_owned(),
                    },
                )),
                Some((crate::keys::Kind::Record, suffix)) => {
                    records.push((suffix, kv.create_revision() as u64, kv.value()));
                }
                None => {}
            }
        }
        // A record whose key is gone, with no older key in the queue, may have been the
        // holder's: nobody is granted the lock before its delay has passed (from when a
        // service saw it go; at the latest from now).
        let first = queue.first().map(|(_, k)| k.token);
        let delay = records
            .into_iter()
            .filter(|(suffix, token, _)| {
                !queue.iter().any(|(s, _)| s == suffix) && first.is_none_or(|f| f > *token)
            })
            .map(|(_, token, value)| {
                let delay = crate::delay::parse_record(value);
                PendingDelay {
                    token,
                    delay,
                    until: read_at + delay,
                }
            })
            .max_by_key(|d| d.delay);
        Ok(LockStatus {
            keys: queue.into_iter().map(|(_, k)| k).collect(),
            delay,
        })
    }

    /// The configuration this service was opened with.
    pub fn config(&self) -> &EtcdConfig {
        &self.core.config
    }

    /// The endpoints the client currently uses (refreshed by `auto-sync-interval`).
    pub fn endpoints(&self) -> Vec<String> {
        self.core
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// How many keep-alive streams this service has opened: one for all of its sessions, plus
    /// one per reconnection after a connection loss.
    pub fn keep_alive_streams_opened(&self) -> u64 {
        self.stats().keep_alive_streams_opened
    }

    /// Counters of this service's work since it was opened, for monitoring and benchmarks.
    pub fn stats(&self) -> ServiceStats {
        let (keep_alive_streams_opened, keep_alives_sent, keep_alives_acknowledged) =
            self.core.keeper.counts();
        ServiceStats {
            keep_alive_streams_opened,
            keep_alives_sent,
            keep_alives_acknowledged,
            waiter_wakeups: self.core.hub.wakeups(),
            queue_reads: self.core.hub.loads(),
        }
    }

    /// The underlying etcd client, for inspection and tests.
    pub fn client(&self) -> &etcd_client::Client {
        &self.core.client
    }
}

impl backend::Service for EtcdService {
    fn new_session(
        &self,
        config: SessionConfig,
    ) -> OpFuture<'_, Result<Arc<dyn backend::Session>>> {
        OpFuture::boxed(async move {
            let session = self.open_session(config).await?;
            Ok(Arc::new(session) as Arc<dyn backend::Session>)
        })
    }

    fn close(&self) -> OpFuture<'_, Result<()>> {
        OpFuture::boxed(async move {
            let Some(sessions) = self.core.sessions().take() else {
                return Err(Error::AlreadyClosed("the service was already closed"));
            };
            let mut first_error = None;
            for session in sessions.into_values().filter_map(|s| s.upgrade()) {
                match session.close_for(EndReason::ServiceClosed).await {
                    Ok(()) | Err(Error::AlreadyClosed(_)) => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            self.core.keeper.stop();
            first_error.map_or(Ok(()), Err)
        })
    }
}

impl fmt::Debug for EtcdService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdService")
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

/// Counters of an [`EtcdService`]'s work; see [`EtcdService::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceStats {
    /// Keep-alive streams opened: one for all sessions, plus one per reconnection.
    pub keep_alive_streams_opened: u64,
    /// Keep-alives sent, for all sessions together.
    pub keep_alives_sent: u64,
    /// Keep-alives the cluster answered.
    pub keep_alives_acknowledged: u64,
    /// Waiters woken because their key became the first of its id: one per lock handed to a
    /// waiter of this service, never one per release per waiter.
    pub waiter_wakeups: u64,
    /// Reads of an id's queue: one when the id's first local waiter starts waiting (while
    /// waiters remain, the watch keeps the copy current), and again after a watch breaks
    /// and is re-created.
    pub queue_reads: u64,
}

/// What [`EtcdService::status`] read of one lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockStatus {
    /// The queue in order: the holder first (unless a lock-delay is pending: then every key
    /// waits), then the waiters.
    pub keys: Vec<KeyInfo>,
    /// A pending lock-delay: a hold that ended without a clean release, waited out before
    /// anyone is granted the lock.
    pub delay: Option<PendingDelay>,
}

impl LockStatus {
    /// The holder, unless the lock is free or a lock-delay is pending.
    pub fn holder(&self) -> Option<&KeyInfo> {
        match self.delay {
            Some(_) => None,
            None => self.keys.first(),
        }
    }
}

/// A lock-delay in progress (see [`crate::LockDelay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingDelay {
    /// The fencing token of the hold that ended without a clean release.
    pub token: u64,
    /// The delay that hold asked for.
    pub delay: Duration,
    /// The latest time the lock can be granted again (wall clock): the delay from this read.
    /// A service that saw the hold end earlier grants it sooner, and so does the holder's
    /// saying it knows.
    pub until: std::time::SystemTime,
}

/// One key of a lock: the holder (the first) or a waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The etcd key.
    pub key: String,
    /// The lease (session) the key belongs to.
    pub lease: i64,
    /// The key's create revision: the fencing token of its holder.
    pub token: u64,
    /// What the locker wrote: `host=… pid=… since=<unix ms>`.
    pub owner: String,
}

fn owner_description() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    format!("host={} pid={}", host.trim(), std::process::id())
}

/// The keeper's view of a session: its lease's owner.
fn owner(session: &Arc<SessionCore>) -> std::sync::Weak<dyn crate::keeper::LeaseOwner> {
    Arc::downgrade(session) as std::sync::Weak<dyn crate::keeper::LeaseOwner>
}
