//! A real etcd cluster on loopback, started from the etcd binary the test tooling provides:
//! start, stop, kill, restart and pause members, find the leader, stop everything on drop, and
//! stop what a killed process left running ([`reap_orphans`], on every start).
//!
//! Synchronous (`std::process`), so it serves both tests and `cargo xtask`.
//!
//! Environment, as set by `cargo xtask test`:
//! - `LOCK_ETCD_BIN`: directory holding `etcd` and `etcdctl` (else they are looked up on `PATH`);
//! - `LOCK_ETCD_ENDPOINTS`: comma-separated client URLs of the shared cluster;
//! - `LOCK_REQUIRE_ETCD=1`: tests needing etcd fail instead of skipping when it is missing.
//! - `LOCK_ETCD_LOG_LEVEL`: the members' `--log-level` (default `error`);
//! - `LOCK_ETCD_KEEP_LOG=FILE`: copy the members' log to `FILE` when a cluster stops.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The env var naming the shared cluster's endpoints.
pub const ENDPOINTS_VAR: &str = "LOCK_ETCD_ENDPOINTS";
/// The env var naming the directory of the etcd binaries.
pub const BIN_VAR: &str = "LOCK_ETCD_BIN";
/// The env var that turns "no etcd" from a skip into a failure.
pub const REQUIRE_VAR: &str = "LOCK_REQUIRE_ETCD";
/// The env var setting the members' `--log-level` (default `error`).
pub const LOG_LEVEL_VAR: &str = "LOCK_ETCD_LOG_LEVEL";
/// The env var naming a file the members' log is copied to when a cluster stops.
pub const KEEP_LOG_VAR: &str = "LOCK_ETCD_KEEP_LOG";

/// The endpoints of the shared cluster, or `None` (after printing that the test is skipped)
/// when there is none and it is not required.
///
/// # Panics
///
/// When `LOCK_REQUIRE_ETCD=1` and no endpoints are set: under `cargo xtask test`, a missing
/// etcd is a failure, never a silent skip.
pub fn shared_endpoints(test: &str) -> Option<String> {
    match std::env::var(ENDPOINTS_VAR) {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            skip_or_fail(test, ENDPOINTS_VAR);
            None
        }
    }
}

/// The etcd binaries, or `None` (after printing that the test is skipped) when none are found
/// and they are not required.
///
/// # Panics
///
/// When `LOCK_REQUIRE_ETCD=1` and no etcd binary is found.
pub fn binaries(test: &str) -> Option<Binaries> {
    let found = match std::env::var_os(BIN_VAR) {
        Some(dir) => Some(Binaries::in_dir(Path::new(&dir))),
        None => which("etcd")
            .zip(which("etcdctl"))
            .map(|(etcd, etcdctl)| Binaries { etcd, etcdctl }),
    };
    match found {
        Some(b) if b.etcd.is_file() => Some(b),
        _ => {
            skip_or_fail(test, BIN_VAR);
            None
        }
    }
}

fn skip_or_fail(test: &str, var: &str) {
    if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{test}: etcd is required ({REQUIRE_VAR}=1) but {var} is not set; run `cargo xtask test`");
    }
    lock_testkit::skip(
        test,
        &format!("no etcd ({var} is not set); `cargo xtask test` provides one"),
    );
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Paths of `etcd` and `etcdctl`.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The server.
    pub etcd: PathBuf,
    /// The command-line client.
    pub etcdctl: PathBuf,
}

impl Binaries {
    /// `etcd` and `etcdctl` in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Binaries {
            etcd: dir.join("etcd"),
            etcdctl: dir.join("etcdctl"),
        }
    }
}

/// TLS material for a cluster: the server certificate and key, and the CA clients must trust.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM file of the server certificate (valid for 127.0.0.1).
    pub cert_file: PathBuf,
    /// PEM file of the server key.
    pub key_file: PathBuf,
    /// PEM file of the CA that signed client certificates; with it, clients must present one.
    pub client_ca_file: Option<PathBuf>,
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Number of members.
    pub nodes: usize,
    /// Serve clients over TLS.
    pub tls: Option<ServerTls>,
    /// Extra flags for every member.
    pub extra_args: Vec<String>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nodes: 3,
            tls: None,
            extra_args: Vec::new(),
        }
    }
}

/// One member of a [`Cluster`].
pub struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    args: Vec<String>,
    child: Option<Child>,
    paused: bool,
}

impl Member {
    /// The member's name (`n0`, `n1`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The member's client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("client_port", &self.client_port)
            .field("peer_port", &self.peer_port)
            .field("pid", &self.pid())
            .field("paused", &self.paused)
            .finish()
    }
}

/// A running etcd cluster on 127.0.0.1 with temporary data directories. Dropping it kills
/// every member it started (by PID) and removes the data.
pub struct Cluster {
    bins: Binaries,
    dir: PathBuf,
    scheme: &'static str,
    members: Vec<Member>,
    log: PathBuf,
}

impl Cluster {
    /// Starts a cluster and waits until every member is healthy.
    ///
    /// # Errors
    ///
    /// A message saying which member did not come up, with the tail of its log.
    pub fn start(bins: &Binaries, spec: &ClusterSpec) -> Result<Cluster, String> {
        reap_orphans(&std::env::temp_dir());
        let mut last = String::new();
        for _ in 0..3 {
            match Cluster::try_start(bins, spec) {
                Ok(c) => return Ok(c),
                Err(e) => last = e, // most likely a port taken between probe and bind
            }
        }
        Err(last)
    }

    fn try_start(bins: &Binaries, spec: &ClusterSpec) -> Result<Cluster, String> {
        let token = crate::random_hex();
        let dir = std::env::temp_dir().join(format!(
            "{CLUSTER_DIR_PREFIX}{}-{token}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let ports = free_ports(spec.nodes * 2)?;
        let scheme = if spec.tls.is_some() { "https" } else { "http" };
        let initial: Vec<String> = (0..spec.nodes)
            .map(|i| format!("n{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let log = dir.join("etcd.log");
        let mut members = Vec::new();
        for i in 0..spec.nodes {
            let (client_port, peer_port) = (ports[2 * i], ports[2 * i + 1]);
            let client_url = format!("{scheme}://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let mut args = vec![
                format!("--name=n{i}"),
                format!("--data-dir={}", dir.join(format!("n{i}")).display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".to_owned(),
                format!("--initial-cluster-token=lock-{token}"),
                format!(
                    "--log-level={}",
                    std::env::var(LOG_LEVEL_VAR).unwrap_or_else(|_| "error".to_owned())
                ),
            ];
            if let Some(tls) = &spec.tls {
                args.push(format!("--cert-file={}", tls.cert_file.display()));
                args.push(format!("--key-file={}", tls.key_file.display()));
                if let Some(ca) = &tls.client_ca_file {
                    args.push(format!("--trusted-ca-file={}", ca.display()));
                    args.push("--client-cert-auth".to_owned());
                }
            }
            args.extend(spec.extra_args.iter().cloned());
            members.push(Member {
                name: format!("n{i}"),
                client_port,
                peer_port,
                args,
                child: None,
                paused: false,
            });
        }
        let mut cluster = Cluster {
            bins: bins.clone(),
            dir,
            scheme,
            members,
            log,
        };
        for i in 0..spec.nodes {
            cluster.spawn(i)?;
        }
        for i in 0..spec.nodes {
            cluster.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("opening {}: {e}", self.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let m = &mut self.members[i];
        let child = Command::new(&self.bins.etcd)
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bins.etcd.display()))?;
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// The client URLs of every member, comma-separated (a connection string's body).
    pub fn endpoints(&self) -> String {
        self.urls().join(",")
    }

    /// The client URL of each member.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| self.url(m)).collect()
    }

    fn url(&self, m: &Member) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, m.client_port)
    }

    /// The members.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The directory holding the data dirs and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills member `i` with SIGKILL, as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            if self.members[i].paused {
                signal(child.id(), "CONT");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops member `i` gracefully (SIGTERM), waiting up to 10 s before killing it.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            if self.members[i].paused {
                signal(child.id(), "CONT");
            }
            signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again (same name, ports and data) and waits until it is healthy.
    ///
    /// # Errors
    ///
    /// When it does not become healthy within 30 s.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.stop(i);
        self.start_member(i)?;
        self.wait_healthy(i, Duration::from_secs(30))
    }

    /// Starts every stopped member again, then waits until all are healthy (a member alone
    /// cannot be healthy without a quorum).
    ///
    /// # Errors
    ///
    /// When the cluster does not become healthy within 30 s.
    pub fn restart_all(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                self.start_member(i)?;
            }
        }
        (0..self.members.len()).try_for_each(|i| self.wait_healthy(i, Duration::from_secs(30)))
    }

    /// Starts a stopped member with its existing data, without waiting.
    fn start_member(&mut self, i: usize) -> Result<(), String> {
        let pos = self.members[i]
            .args
            .iter()
            .position(|a| a.starts_with("--initial-cluster-state="));
        if let Some(pos) = pos {
            self.members[i].args[pos] = "--initial-cluster-state=existing".to_owned();
        }
        self.spawn(i)
    }

    /// Freezes member `i` with SIGSTOP.
    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            signal(pid, "STOP");
            self.members[i].paused = true;
        }
    }

    /// Thaws member `i` with SIGCONT.
    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            signal(pid, "CONT");
            self.members[i].paused = false;
        }
    }

    /// Whether member `i` is running (not killed or stopped).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// The index of the current leader, asked of the running members (waits up to 10 s for
    /// an election to finish).
    pub fn leader(&self) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.leader_now() {
                return Some(i);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn leader_now(&self) -> Option<usize> {
        let running: Vec<String> = (0..self.members.len())
            .filter(|&i| self.is_running(i) && !self.members[i].paused)
            .map(|i| self.url(&self.members[i]))
            .collect();
        let endpoints = format!("--endpoints={}", running.join(","));
        let out = self
            .etcdctl(&[&endpoints, "endpoint", "status", "-w", "fields"])
            .ok()?;
        // `fields` output: one block of `"Key" : value` lines per endpoint, `Endpoint` last.
        let (mut member, mut leader) = (None, None);
        for line in out.lines() {
            let Some((key, value)) = line.split_once(" : ") else {
                continue;
            };
            match key.trim_matches('"') {
                "MemberID" => member = Some(value.to_owned()),
                "Leader" => leader = Some(value.to_owned()),
                "Endpoint" => {
                    if member.is_some() && member == leader && leader.as_deref() != Some("0") {
                        let url = value.trim_matches('"');
                        return self.members.iter().position(|m| self.url(m) == url);
                    }
                    (member, leader) = (None, None);
                }
                _ => {}
            }
        }
        None
    }

    /// Runs `etcdctl` with the given arguments (add `--endpoints` yourself, or it uses all
    /// members), returning its standard output.
    ///
    /// # Errors
    ///
    /// Its standard error when it fails.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.bins.etcdctl);
        if !args.iter().any(|a| a.starts_with("--endpoints")) {
            cmd.arg(format!("--endpoints={}", self.endpoints()));
        }
        let out = cmd
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .map_err(|e| format!("running etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Waits until member `i` answers its health check.
    ///
    /// # Errors
    ///
    /// When `limit` passes first; the message holds the end of the cluster log.
    pub fn wait_healthy(&self, i: usize, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let m = &self.members[i];
        while Instant::now() < deadline {
            let ok = if self.scheme == "http" {
                http_health(m.client_port)
            } else {
                TcpStream::connect(("127.0.0.1", m.client_port)).is_ok()
            };
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        Err(format!(
            "etcd member {} did not become healthy within {limit:?}; log tail:\n{}",
            m.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        match std::env::var_os(KEEP_LOG_VAR) {
            Some(to) => {
                // Kept for a post-mortem: the members' log (the data dirs go).
                let _ = std::fs::copy(&self.log, &to);
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            None => drop(std::fs::remove_dir_all(&self.dir)),
        }
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoints", &self.endpoints())
            .field("members", &self.members)
            .finish()
    }
}

fn http_health(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// A cluster's directory is `<temp>/lock-etcd-<pid of the process that started it>-<token>`.
const CLUSTER_DIR_PREFIX: &str = "lock-etcd-";

/// Stops the members of clusters left behind by a process that died without dropping its
/// [`Cluster`] (killed by a signal, or `SIGTERM` to `cargo xtask` alone) and removes their data.
///
/// A directory is an orphan when the process named in it no longer runs; its members are the
/// processes whose command line holds `--data-dir=<that directory>/`. Nothing else is touched: a
/// live owner's cluster is left alone, and only processes started on that directory are killed.
/// Linux only (it reads `/proc`); elsewhere it does nothing.
///
/// # Examples
///
/// ```no_run
/// // What `Cluster::start` does first.
/// lock_tools::etcd::reap_orphans(&std::env::temp_dir());
/// ```
pub fn reap_orphans(temp: &Path) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.strip_prefix(CLUSTER_DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _token)| pid.parse::<u32>().ok());
        let Some(owner) = owner else { continue };
        if !Path::new("/proc").exists() || runs(owner) {
            continue;
        }
        let dir = entry.path();
        for pid in processes_on(&dir) {
            signal(pid, "KILL");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Whether process `pid` exists and has not exited (a zombie waiting to be reaped has).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
    })
}

/// The processes whose command line holds `--data-dir=<dir>/`.
fn processes_on(dir: &Path) -> Vec<u32> {
    let needle = format!("--data-dir={}/", dir.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|&b| b == 0)
                    .any(|arg| arg.starts_with(needle.as_bytes()))
            })
        })
        .collect()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Ports that were free a moment ago (bound to 127.0.0.1:0 and released).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("finding free ports: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}
