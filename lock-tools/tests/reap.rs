//! `reap_orphans`: the members of a cluster whose owner died are killed and its data removed;
//! a live owner's cluster is left alone. Stand-in members are `sh` processes carrying the
//! `--data-dir=` argument a member has, blocked reading a pipe this test holds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lock_tools::etcd::reap_orphans;

/// A process whose command line holds `--data-dir=<dir>/n0`, as a member's does.
fn stand_in_member(dir: &Path) -> Child {
    std::fs::create_dir_all(dir.join("n0")).unwrap();
    Command::new("sh")
        .args(["-c", "read line"])
        .arg(format!("--data-dir={}", dir.join("n0").display()))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The PID of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A child that has exited but is not waited for yet: a zombie, whose PID still shows in
/// `/proc`.
fn zombie() -> Child {
    let child = Command::new("true").spawn().unwrap();
    let stat = format!("/proc/{}/stat", child.id());
    let start = Instant::now();
    while !std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") Z")) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "`true` did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Whether `child` exits within `limit`.
fn exits_within(child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn scratch() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let root = std::env::temp_dir().join(format!(
        "lock-testkit-reap-{}-{nanos:x}",
        std::process::id()
    ));
    std::fs::create_dir_all(&root).unwrap();
    root
}

// Reaping reads `/proc`.
#[cfg(target_os = "linux")]
#[test]
fn orphaned_members_are_killed_and_live_clusters_left_alone() {
    let root = scratch();
    let orphan_dir = root.join(format!("lock-etcd-{}-0rphan", dead_pid()));
    // The owner was killed but nobody has reaped it yet: it is gone all the same.
    let mut owner = zombie();
    let zombies_dir = root.join(format!("lock-etcd-{}-z0mb1e", owner.id()));
    let live_dir = root.join(format!("lock-etcd-{}-a11ve", std::process::id()));
    let mut orphan = stand_in_member(&orphan_dir);
    let mut zombies = stand_in_member(&zombies_dir);
    let mut live = stand_in_member(&live_dir);
    // Not a cluster directory at all: left alone whatever its name's number.
    let other = root.join(format!("lock-cli-{}-x", dead_pid()));
    std::fs::create_dir_all(&other).unwrap();

    reap_orphans(&root);

    assert!(
        exits_within(&mut orphan, Duration::from_secs(10)),
        "the orphaned member still runs"
    );
    assert!(!orphan_dir.exists(), "the orphan's data is still there");
    assert!(
        exits_within(&mut zombies, Duration::from_secs(10)),
        "the member of an owner that is a zombie still runs"
    );
    assert!(!zombies_dir.exists());
    owner.wait().unwrap();
    assert!(
        !exits_within(&mut live, Duration::from_millis(300)),
        "a live owner's member was killed"
    );
    assert!(live_dir.exists() && other.exists());

    live.kill().unwrap();
    live.wait().unwrap();
    std::fs::remove_dir_all(&root).unwrap();
}
