//! `lock`'s etcd mutex and etcd's own (`etcdctl lock`, Go's `concurrency.Mutex`, the server's
//! Lock RPC) exclude each other: id `ID` under prefix `P` is etcd's lock name `P` + `ID` (ids
//! percent-encoded, see the key layout in `lock-etcd/src/keys.rs`), and both queue by create
//! revision under `P` + `ID` + `/`. Run with the `etcdctl` the test tooling provisions.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use lock_core::SessionConfig;
use lock_etcd as _;

/// The shared cluster's endpoints and `etcdctl`, or `None` (skipped) without them.
fn setup(test: &str) -> Option<(String, PathBuf)> {
    let endpoints = common::shared(test)?;
    let bins = lock_tools::etcd::binaries(test)?;
    Some((endpoints, bins.etcdctl))
}

/// `etcdctl lock <name> -- sh -c <script>`, and the lines it prints, as they come.
fn etcdctl_lock(
    etcdctl: &PathBuf,
    endpoints: &str,
    name: &str,
    script: &str,
) -> (Child, Receiver<String>) {
    etcdctl_run(
        etcdctl,
        endpoints,
        &["lock", name, "--", "sh", "-c", script],
    )
}

/// `etcdctl <args>` on `endpoints`, and the lines it prints, as they come.
fn etcdctl_run(etcdctl: &PathBuf, endpoints: &str, args: &[&str]) -> (Child, Receiver<String>) {
    let mut child = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting etcdctl");
    let stdout = child.stdout.take().expect("etcdctl's stdout");
    let (lines, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Waits for `child` to exit, at most `limit`; whether it exited successfully.
fn exited_ok(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("waiting for etcdctl") {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_ours_exclude_each_other_both_ways() {
    let Some((endpoints, etcdctl)) = setup("etcdctl_lock_and_ours_exclude_each_other_both_ways")
    else {
        return;
    };
    let prefix = common::unique_prefix("interop");
    let id = "nightly job"; // a space: ids are taken as they are where no encoding is needed
    let name = format!("{prefix}{id}");
    let service = lock_core::new(&format!("etcd:{endpoints}?prefix={prefix}"))
        .await
        .unwrap();
    let config = SessionConfig::new(Duration::from_secs(10));
    let session = service.new_session(config).await.unwrap();
    let mut locker = session.new_locker(id);

    // We hold: `etcdctl lock` waits until we unlock.
    let held = locker.lock().await.unwrap();
    let (mut theirs, lines) = etcdctl_lock(&etcdctl, &endpoints, &name, "echo acquired");
    let early = tokio::task::block_in_place(|| lines.recv_timeout(Duration::from_millis(1500)));
    assert!(
        early.is_err(),
        "etcdctl took the lock while we held it: {early:?}"
    );
    held.unlock().await.unwrap();
    let after = tokio::task::block_in_place(|| lines.recv_timeout(Duration::from_secs(10)));
    assert_eq!(
        after.as_deref(),
        Ok("acquired"),
        "etcdctl never took it after our unlock"
    );
    assert!(tokio::task::block_in_place(|| exited_ok(
        &mut theirs,
        Duration::from_secs(10)
    )));

    // `etcdctl lock` holds: we wait until its command has ended and it released.
    let (mut theirs, lines) = etcdctl_lock(&etcdctl, &endpoints, &name, "echo acquired; sleep 2");
    let got = tokio::task::block_in_place(|| lines.recv_timeout(Duration::from_secs(10)));
    assert_eq!(
        got.as_deref(),
        Ok("acquired"),
        "etcdctl did not take the free lock"
    );
    let asked = Instant::now();
    let held = locker.lock().await.unwrap();
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "we were granted after {waited:?}; etcdctl's command sleeps 2 s holding the lock"
    );
    eprintln!("granted {waited:?} after etcdctl took the lock for a 2 s command");
    assert!(tokio::task::block_in_place(|| exited_ok(
        &mut theirs,
        Duration::from_secs(10)
    )));
    held.unlock().await.unwrap();
    service.close().await.unwrap();
}

/// `etcdctl elect [args]`, and the lines it prints, as they come.
fn etcdctl_elect(etcdctl: &PathBuf, endpoints: &str, args: &[&str]) -> (Child, Receiver<String>) {
    let args: Vec<&str> = std::iter::once("elect")
        .chain(args.iter().copied())
        .collect();
    etcdctl_run(etcdctl, endpoints, &args)
}

/// The next value `etcdctl elect` prints (it prints the leader's key, then its value), within
/// `limit`.
fn next_value(lines: &Receiver<String>, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let line = tokio::task::block_in_place(|| lines.recv_timeout(left)).ok()?;
        if !line.contains('/') {
            return Some(line);
        }
    }
}

/// Asks `child` to stop as a user would (SIGINT): `etcdctl elect` then resigns.
fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_ours_share_one_election_both_ways() {
    let Some((endpoints, etcdctl)) = setup("etcdctl_elect_and_ours_share_one_election_both_ways")
    else {
        return;
    };
    let prefix = common::unique_prefix("elect");
    let name = "reports leader";
    let theirs_name = format!("{prefix}{name}");
    let service = lock_core::new(&format!("etcd:{endpoints}?prefix={prefix}"))
        .await
        .unwrap();
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut election = session.new_election(name).unwrap();
    let mut observer = election.observe().await.unwrap();
    assert_eq!(observer.next().await.unwrap(), None);

    // We lead; `etcdctl elect -l` sees our value and its change.
    let term = election.campaign("ours-1").await.unwrap();
    let (mut listener, heard) = etcdctl_elect(&etcdctl, &endpoints, &["-l", &theirs_name]);
    let limit = Duration::from_secs(10);
    assert_eq!(next_value(&heard, limit).as_deref(), Some("ours-1"));
    election.proclaim(&term, "ours-2").await.unwrap();
    assert_eq!(next_value(&heard, limit).as_deref(), Some("ours-2"));

    // `etcdctl elect` campaigns: it waits while we lead, and leads once we resign.
    let (mut candidate, said) = etcdctl_elect(&etcdctl, &endpoints, &[&theirs_name, "theirs"]);
    assert_eq!(
        next_value(&said, Duration::from_millis(1500)),
        None,
        "etcdctl was elected while we led"
    );
    term.unlock().await.unwrap();
    assert_eq!(next_value(&said, limit).as_deref(), Some("theirs"));
    assert_eq!(next_value(&heard, limit).as_deref(), Some("theirs"));
    let leader = election.leader().await.unwrap().expect("a leader");
    assert_eq!(leader.value_str(), Some("theirs"));

    // It leads: our campaign waits until it resigns (SIGINT).
    let asked = Instant::now();
    let ours = tokio::spawn(async move {
        let term = election.campaign("ours-3").await;
        (term, election)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!ours.is_finished(), "we were elected while etcdctl led");
    interrupt(&candidate);
    let (term, _election) = ours.await.unwrap();
    let term = term.unwrap();
    eprintln!(
        "elected {:?} after etcdctl's campaign began waiting",
        asked.elapsed()
    );
    follows_each(term.fencing_token(), leader.fencing_token());
    assert_eq!(next_value(&heard, limit).as_deref(), Some("ours-3"));
    assert!(tokio::task::block_in_place(|| exited_ok(
        &mut candidate,
        limit
    )));

    // Our observer saw every change, theirs included, in order.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let next = tokio::time::timeout(limit, observer.next())
            .await
            .unwrap()
            .unwrap();
        seen.push(next.and_then(|l| l.value_str().map(str::to_owned)));
    }
    let want = ["ours-1", "ours-2", "theirs", "ours-3"].map(|v| Some(v.to_owned()));
    assert_eq!(seen, want);

    term.unlock().await.unwrap();
    interrupt(&listener);
    let _ = tokio::task::block_in_place(|| exited_ok(&mut listener, limit));
    service.close().await.unwrap();
}

fn follows_each(later: u64, earlier: u64) {
    assert!(
        later > earlier,
        "term token {later} does not follow {earlier}"
    );
}
