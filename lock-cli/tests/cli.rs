//! `lock exec` and `lock status` end to end, against the etcd cluster `cargo xtask test` starts.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const LOCK: &str = env!("CARGO_BIN_EXE_lock");

fn service(test: &str) -> Option<String> {
    let endpoints = lock_tools::etcd::shared_endpoints(test)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some(format!("etcd:{endpoints}?prefix=cli-{test}-{nanos:x}/"))
}

fn lock(service: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(LOCK);
    cmd.env("LOCK_SERVICE", service)
        .env_remove("RUST_LOG")
        .args(args);
    cmd
}

fn run(service: &str, args: &[&str]) -> Output {
    lock(service, args).output().unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lock-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Revokes the lease of the (first) key under `service`'s prefix from outside, as an operator
/// or an expiry would.
async fn revoke_from_outside(service: &str) {
    let endpoints = lock_tools::etcd::shared_endpoints("revoke").unwrap();
    let mut raw = etcd_client::Client::connect(endpoints.split(',').collect::<Vec<_>>(), None)
        .await
        .unwrap();
    let prefix = service.split("prefix=").nth(1).unwrap();
    let keys = raw
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    // The lock key, bound to the session's lease (its lock-delay record beside it is not).
    let lease = keys.kvs().iter().map(|kv| kv.lease()).find(|&l| l != 0);
    raw.lease_revoke(lease.unwrap()).await.unwrap();
}

/// `lock exec --ttl TTL --kill-after 1s ID -- sh -c SCRIPT`.
fn exec_script(service: &str, ttl: &str, id: &str, script: &str) -> Command {
    lock(
        service,
        &[
            "exec",
            "--ttl",
            ttl,
            "--kill-after",
            "1s",
            id,
            "--",
            "sh",
            "-c",
            script,
        ],
    )
}

/// Waits (up to 20 s) until the command wrote its pid to `pidfile`, and returns it.
async fn pid_from(pidfile: &std::path::Path) -> String {
    let start = Instant::now();
    while std::fs::read_to_string(pidfile).map_or(true, |p| p.trim().is_empty()) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the command never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::read_to_string(pidfile).unwrap().trim().to_owned()
}

/// Starts `lock exec --ttl TTL --kill-after 1s ID -- <a command that writes its pid, then sleeps>`
/// and waits until the command runs; returns the `lock` process and the command's pid.
async fn hold(
    service: &str,
    dir: &std::path::Path,
    ttl: &str,
    id: &str,
) -> (std::process::Child, String) {
    let pidfile = dir.join("pid");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let child = exec_script(service, ttl, id, &script)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = pid_from(&pidfile).await;
    (child, pid)
}

#[test]
fn racing_execs_run_their_commands_one_after_the_other() {
    let Some(service) = service("racing") else {
        return;
    };
    let dir = temp("racing");
    let log = dir.join("log");
    let script = format!(
        "echo start $LOCK_FENCING_TOKEN >> {0}; sleep 1; echo end $LOCK_FENCING_TOKEN >> {0}",
        log.display()
    );
    let children: Vec<_> = (0..3)
        .map(|_| {
            lock(&service, &["exec", "race", "--", "sh", "-c", &script])
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(&str, u64)> = text
        .lines()
        .map(|l| {
            let (what, token) = l.split_once(' ').unwrap();
            (what, token.parse().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), 6, "{text}");
    for pair in lines.chunks(2) {
        assert_eq!(
            (pair[0].0, pair[1].0),
            ("start", "end"),
            "commands overlapped:\n{text}"
        );
        assert_eq!(
            pair[0].1, pair[1].1,
            "one holder per start/end pair:\n{text}"
        );
    }
    let tokens: Vec<u64> = lines.iter().step_by(2).map(|l| l.1).collect();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must increase: {tokens:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lock_terminates_the_command() {
    let Some(service) = service("lost") else {
        return;
    };
    let dir = temp("lost");
    let (child, pid) = hold(&service, &dir, "3s", "victim").await;
    assert!(PathBuf::from(format!("/proc/{pid}")).exists());

    revoke_from_outside(&service).await;

    let revoked = Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        revoked.elapsed() < Duration::from_secs(10),
        "took {:?}",
        revoked.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lost lock victim"), "{stderr}");
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "the command still runs"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn exit_statuses_are_as_documented() {
    let Some(service) = service("statuses") else {
        return;
    };
    let code = |out: Output| out.status.code();
    assert_eq!(
        code(run(&service, &["exec", "s", "--", "sh", "-c", "exit 3"])),
        Some(3)
    );
    // Each of these exits on an error while holding the lock; the next one waits at most
    // 1 s for it (`--timeout 1s`, else it exits 124): a failed client frees its lock at once.
    let within_1s = |command: &[&str]| {
        let args = [&["exec", "--timeout", "1s", "s", "--"], command].concat();
        code(run(&service, &args))
    };
    assert_eq!(within_1s(&["sh", "-c", "kill -TERM $$"]), Some(128 + 15));
    assert_eq!(within_1s(&["no-such-command-xyz"]), Some(127));
    assert_eq!(within_1s(&["/"]), Some(126));
    assert_eq!(within_1s(&["true"]), Some(0));

    let holder = lock(&service, &["exec", "s", "--", "sleep", "3"])
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let status = String::from_utf8(run(&service, &["status", "s"]).stdout).unwrap();
        if status.contains("held by lease") {
            assert!(
                status.contains("fencing token") && status.contains("pid="),
                "{status}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never held: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = run(&service, &["exec", "--try", "s", "--", "true"]);
    assert_eq!(held.status.code(), Some(75), "{held:?}");
    let timed_out = run(&service, &["exec", "--timeout", "300ms", "s", "--", "true"]);
    assert_eq!(timed_out.status.code(), Some(124), "{timed_out:?}");
    let mut holder = holder;
    assert!(holder.wait().unwrap().success());
    let free = String::from_utf8(run(&service, &["status", "s"]).stdout).unwrap();
    assert!(free.contains("free"), "{free}");

    let usage = Command::new(LOCK)
        .env_remove("LOCK_SERVICE")
        .args(["exec", "s", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("no lock service"));
    assert_eq!(
        code(run(&service, &["exec", "--bogus", "s", "--", "true"])),
        Some(64)
    );
    let unreachable = run(
        "etcd:http://127.0.0.1:1?dial-timeout=300ms",
        &["exec", "s", "--", "true"],
    );
    assert_eq!(unreachable.status.code(), Some(69));
    let help = run(&service, &["--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("EXIT STATUS"));
}

#[test]
fn passwords_come_from_a_file_and_are_never_printed() {
    let Some(service) = service("password") else {
        return;
    };
    let dir = temp("password");
    let file = dir.join("pw");
    std::fs::write(&file, "s3cret-Pw-91\n").unwrap();
    // The shared cluster has no authentication: a username with a password is refused by etcd,
    // and the refusal must not echo the password.
    let exec = |service: &str| {
        let args = [
            "exec",
            "--password-file",
            file.to_str().unwrap(),
            "pw",
            "--",
            "true",
        ];
        lock(service, &args).output().unwrap()
    };
    let out = exec(&format!("{service}&username=nobody"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("s3cret-Pw-91"), "{text}");
    let out = exec(&service);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a password without a username is a usage error"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_notices_the_loss_the_moment_it_resumes() {
    use lock::etcd::{EtcdConfig, EtcdService};
    use lock::SessionConfig;
    let Some(service) = service("paused") else {
        return;
    };
    let dir = temp("paused");
    let (holder, command_pid) = hold(&service, &dir, "2s", "p").await;
    let holder_pid = holder.id().to_string();
    let signal = |sig: &str, pid: &str| {
        assert!(Command::new("kill")
            .args([sig, pid])
            .status()
            .unwrap()
            .success())
    };

    // Freeze the holder (not its command) for longer than its TTL: the lease expires.
    signal("-STOP", &holder_pid);
    let other = lock::backend::service(
        EtcdService::connect(EtcdConfig::from_uri(&service).unwrap())
            .await
            .unwrap(),
    );
    let session = other
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut next = session.new_locker("p");
    let granted = tokio::time::timeout(Duration::from_secs(15), next.lock())
        .await
        .expect("granted after the TTL");
    let held = granted.unwrap();
    let token = held.fencing_token();

    // Thaw it: it must see the loss at once and terminate its command.
    signal("-CONT", &holder_pid);
    let resumed = Instant::now();
    let out = tokio::task::spawn_blocking(move || holder.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        resumed.elapsed() < Duration::from_secs(3),
        "noticed {:?} after resuming",
        resumed.elapsed()
    );
    assert!(
        !PathBuf::from(format!("/proc/{command_pid}")).exists(),
        "the stale command still runs"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stale: u64 = stderr
        .split("fencing token ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        stale < token,
        "the stale holder's token {stale} must be older than the new holder's {token}"
    );
    held.unlock().await.unwrap();
    other.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_with_sigkill_frees_the_lock_within_its_ttl_and_lock_delay() {
    use lock::etcd::{EtcdConfig, EtcdService};
    use lock::SessionConfig;
    let Some(service) = service("killed") else {
        return;
    };
    let dir = temp("killed");
    let (mut holder, command_pid) = hold(&service, &dir, "2s", "k").await;
    let other = lock::backend::service(
        EtcdService::connect(EtcdConfig::from_uri(&service).unwrap())
            .await
            .unwrap(),
    );
    let session = other
        .new_session(SessionConfig::new(Duration::from_secs(10)))
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        let mut next = session.new_locker("k");
        let held = next.lock().await.unwrap();
        (Instant::now(), held)
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // queued
    holder.kill().unwrap(); // SIGKILL: no unlock, no revoke
    let killed = Instant::now();
    let _ = holder.wait();
    // Once etcd has expired the lease, `lock status` shows the pending lock-delay.
    let status_service = service.clone();
    let pending = tokio::task::spawn_blocking(move || loop {
        let status = String::from_utf8(run(&status_service, &["status", "k"]).stdout).unwrap();
        if status.contains("free after a lock-delay") || killed.elapsed() > Duration::from_secs(6) {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    })
    .await
    .unwrap();
    eprintln!("{pending}");
    assert!(
        pending.contains("free after a lock-delay")
            && pending.contains("at the latest")
            && pending.contains("lock-delay 2s")
            && pending.contains("1 waiting"),
        "{pending}"
    );
    let (granted, held) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("granted")
        .unwrap();
    let took = granted - killed;
    eprintln!("the lock of a holder killed with SIGKILL was granted {took:?} later");
    // etcd expires the lease within the TTL (2 s) of its last keep-alive; then the holder's
    // lock-delay (its TTL, 2 s); then a second for the watch and the grant.
    assert!(
        took < Duration::from_secs(5),
        "the lock of a killed holder came free after {took:?}"
    );
    // A SIGKILLed `lock` cannot stop its command: only the fencing token protects from it.
    let _ = Command::new("kill").arg(&command_pid).status();
    held.unlock().await.unwrap();
    other.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Whether process `pid` runs (a zombie waiting to be reaped does not).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// Starts `lock exec ID -- sh -c '<a grandchild that ignores SIGTERM, in the background>; wait'`
/// and returns the `lock` process and the grandchild's pid once it runs.
async fn hold_with_grandchild(
    service: &str,
    dir: &std::path::Path,
    id: &str,
) -> (std::process::Child, String) {
    let pidfile = dir.join(format!("grandchild-{id}"));
    let script = format!(
        "trap '' TERM; sleep 313 & echo $! > {}; wait",
        pidfile.display()
    );
    let child = exec_script(service, "3s", id, &script)
        .stdout(Stdio::null())
        .stderr(Stdio::null()) // a surviving grandchild would keep a pipe open
        .spawn()
        .unwrap();
    let pid = pid_from(&pidfile).await;
    assert!(alive(&pid));
    (child, pid)
}

/// `lock`'s exit code, waiting at most 10 s.
async fn exit_code(mut child: std::process::Child) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "lock did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_the_command_started_survives_a_loss_or_ctrl_c() {
    let Some(service) = service("grandchild") else {
        return;
    };
    let dir = temp("grandchild");

    // A loss: the session's lease revoked from outside.
    let (child, grandchild) = hold_with_grandchild(&service, &dir, "lost").await;
    revoke_from_outside(&service).await;
    assert_eq!(exit_code(child).await, Some(125));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !alive(&grandchild),
        "a process the command started survived the loss"
    );

    // Ctrl-C: SIGINT to `lock`.
    let (child, grandchild) = hold_with_grandchild(&service, &dir, "interrupted").await;
    let lock_pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(lock_pid, nix::sys::signal::Signal::SIGINT).unwrap();
    assert_eq!(exit_code(child).await, Some(130));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !alive(&grandchild),
        "a process the command started survived Ctrl-C"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `lock` run with raw (possibly non-UTF-8) arguments and environment, no service needed.
fn raw(args: &[&[u8]], env: &[(&str, &[u8])]) -> Output {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let mut cmd = Command::new(LOCK);
    cmd.env_remove("LOCK_SERVICE")
        .env_remove("LOCK_PASSWORD")
        .env_remove("RUST_LOG");
    for (name, value) in env {
        cmd.env(name, OsStr::from_bytes(value));
    }
    cmd.args(args.iter().map(|a| OsStr::from_bytes(a)));
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Arguments, environment, and what stderr must say.
type Case = (&'static [&'static [u8]], &'static [Env], &'static str);
type Env = (&'static str, &'static [u8]);

/// Input the CLI cannot use is a usage error (64) with a message — never a panic (101).
#[test]
fn bad_input_is_a_usage_error_not_a_panic() {
    let cases: [Case; 8] = [
        (
            &[b"exec", b"bad\xff", b"--", b"true"],
            &[("LOCK_SERVICE", b"local:")],
            "not valid UTF-8",
        ),
        (
            &[b"exec", b"x", b"--", b"true"],
            &[("LOCK_SERVICE", b"foo:bar")],
            "unsupported service",
        ),
        (
            &[b"exec", b"x", b"--", b"true"],
            &[("LOCK_SERVICE", b"etcd:\xff")],
            "LOCK_SERVICE",
        ),
        (
            &[b"exec", b"--service", b"local:\xff", b"x", b"--", b"true"],
            &[],
            "--service",
        ),
        (
            &[b"exec", b"x", b"--", b"true"],
            &[
                ("LOCK_SERVICE", b"etcd:http://127.0.0.1:1?username=u"),
                ("LOCK_PASSWORD", b"pw\xff"),
            ],
            "LOCK_PASSWORD",
        ),
        (&[b"exec", b"x", b"--", b"true"], &[], "no lock service"),
        (&[b"exce", b"x", b"--", b"true"], &[], "exec"),
        (
            &[b"exec", b"--ttl", b"soon", b"x", b"--", b"true"],
            &[],
            "not a duration",
        ),
    ];
    for (args, env, says) in cases {
        let out = raw(args, env);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// `lock help exec`, completions, and the ids and arguments the old parser could not take.
#[test]
fn help_completions_odd_ids_and_non_utf8_arguments() {
    let help = raw(&[b"help", b"exec"], &[]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("LOCK_FENCING_TOKEN") && text.contains("EXIT STATUS"),
        "{text}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = raw(&[b"completions", shell.as_bytes()], &[]);
        assert_eq!(script.status.code(), Some(0), "{shell}");
        assert!(
            String::from_utf8_lossy(&script.stdout).contains("exec"),
            "{shell}"
        );
    }
    // `local:` needs no server: it shows the id and the command's raw bytes getting through.
    let out = raw(
        &[
            b"exec",
            b"--id=-odd",
            b"--",
            b"sh",
            b"-c",
            b"printf %s \"$LOCK_ID\"; printf %s \"$0\"",
            b"\xff",
        ],
        &[("LOCK_SERVICE", b"local:")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, b"-odd\xff");
}

/// etcd before 3.5.3 could answer the first keep-alive of a lease granted moments ago with TTL
/// 0 while the lease was alive (etcd issue 13675): about 1 in 300 `lock exec` runs on a healthy
/// cluster exited 69 ("the session's lease was revoked or expired") and left its key behind, so
/// the next `lock exec` of the id waited the whole TTL. A fault proxy gives that answer to the
/// first keep-alive of every lease, deterministically: the answer is checked with the cluster,
/// the command runs, and the next client gets the lock at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_keep_alive_answered_with_ttl_0_is_no_loss_and_leaves_nothing_behind() {
    let Some(direct) = service("ttl_zero") else {
        return;
    };
    let endpoints = lock_tools::etcd::shared_endpoints("ttl_zero").unwrap();
    let proxy = lock_testkit::proxy::FaultProxy::in_front_of_first(&endpoints)
        .await
        .unwrap();
    proxy.set_rewriter(lock_tools::h2::first_keep_alive_ttl_zero());
    proxy.set(lock_testkit::proxy::Fault::Rewrite);
    let prefix = direct.split("prefix=").nth(1).unwrap();
    let through_proxy = format!("etcd:{}?prefix={prefix}", proxy.url());
    let mut failures = Vec::new();
    for n in 0..3 {
        // The keeper opens its keep-alive stream right after the grant: its first answer is
        // TTL 0. The command outlives a few keep-alives (TTL 3 s: one every 0.5 s).
        let out = tokio::task::spawn_blocking({
            let service = through_proxy.clone();
            move || run(&service, &["exec", "--ttl", "3s", "z", "--", "sleep", "1"])
        })
        .await
        .unwrap();
        if out.status.code() != Some(0) {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            failures.push(format!("run {n}: {:?}: {stderr}", out.status.code()));
        }
        // The next client, direct, waits at most 1 s.
        let started = Instant::now();
        let next = tokio::task::spawn_blocking({
            let service = direct.clone();
            move || run(&service, &["exec", "--timeout", "1s", "z", "--", "true"])
        })
        .await
        .unwrap();
        if next.status.code() != Some(0) {
            failures.push(format!(
                "run {n}: the next client did not get the lock within 1 s ({:?} after {:?})",
                next.status.code(),
                started.elapsed()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `lock exec --limit 2`: of five racing commands, at most two run at once and two do; a
/// party with another limit is told so (exit 64) while the others run.
#[test]
fn exec_with_a_limit_runs_at_most_that_many_commands_at_once() {
    let Some(service) = service("limit") else {
        return;
    };
    let dir = temp("limit");
    let log = dir.join("log");
    let script = format!("echo start >> {0}; sleep 1; echo end >> {0}", log.display());
    let children: Vec<_> = (0..5)
        .map(|_| {
            lock(
                &service,
                &["exec", "--limit", "2", "jobs", "--", "sh", "-c", &script],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let other = run(&service, &["exec", "--limit", "3", "jobs", "--", "true"]);
    assert_eq!(other.status.code(), Some(64), "{other:?}");
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("limit of 2"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let (mut running, mut most) = (0, 0);
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        running += if line == "start" { 1 } else { -1 };
        most = most.max(running);
    }
    assert_eq!(
        most, 2,
        "at most 2 commands at once, and 2 did run together"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `lock elect` runs its command while leading, `lock observe` prints each leader as it
/// changes, and a second candidate leads once the first's command exits.
#[test]
fn elect_runs_the_command_while_leading_and_observe_prints_each_leader() {
    use std::io::{BufRead, BufReader};
    let Some(service) = service("elect") else {
        return;
    };
    let mut observer = lock(&service, &["observe", "leader"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, rx) = std::sync::mpsc::channel();
    let stdout = observer.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(15)).unwrap();
    assert_eq!(next(), "-", "nobody leads at first");
    let first = lock(&service, &["elect", "leader", "one", "--", "sleep", "1"])
        .spawn()
        .unwrap();
    let line = next();
    assert!(line.ends_with("\tone"), "{line}");
    let second = lock(
        &service,
        &[
            "elect",
            "leader",
            "two",
            "--",
            "sh",
            "-c",
            "echo $LOCK_FENCING_TOKEN",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(second.status.success(), "{second:?}");
    let token = String::from_utf8(second.stdout).unwrap();
    let line = next();
    assert_eq!(
        line,
        format!("{}\ttwo", token.trim()),
        "the second leader, with its term"
    );
    assert_eq!(next(), "-", "nobody leads once the second resigned");
    let mut first = first;
    assert!(first.wait().unwrap().success());
    assert!(Command::new("kill")
        .args(["-INT", &observer.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(observer.wait().unwrap().code(), Some(130));
}
