//! The suite's child process: a second OS process that opens the backend under test and takes
//! locks on the suite's command, so that the suite can check exclusion, fencing tokens and
//! a killed holder across processes.
//!
//! [`conformance_tests!`](crate::conformance_tests) defines a test named `lock_testkit_child`
//! next to the suite's tests. Run normally it does nothing; the suite runs the test binary again
//! with only that test selected and [`CHILD_VAR`] set, and the test then serves commands, one per
//! line on stdin, answering one line each on stdout:
//!
//! | command        | answer                                   |
//! |----------------|------------------------------------------|
//! | (start)        | `ready` once its service and session are open |
//! | `lock ID`      | `held TOKEN` or `error MESSAGE`          |
//! | `try ID`       | `held TOKEN`, `busy` or `error MESSAGE`  |
//! | `unlock ID`    | `unlocked` or `error MESSAGE`            |
//!
//! End of input closes the service and exits. Answers carry a prefix, so that the test
//! harness's own output is ignored.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

use crate::{Failure, Harness};

/// The environment variable that turns the `lock_testkit_child` test into the child process.
pub const CHILD_VAR: &str = "LOCK_TESTKIT_CHILD";

const PREFIX: &str = "lock-testkit-child: ";

/// How long the child may take to start and open the backend.
const START: Duration = Duration::from_secs(20);

/// The parent's handle on a running child. Dropping it kills the child.
pub(crate) struct Child {
    process: tokio::process::Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Child {
    /// Starts the child and waits until it has opened a session, or `None` (after reporting
    /// that `check` is skipped) when the harness has no child test.
    pub(crate) async fn start(h: &Harness, check: &str) -> Result<Option<Child>, Failure> {
        let Some(test) = h.child_test() else {
            h.skip(
                check,
                "no child entry point: run the suite with `conformance_tests!`",
            );
            return Ok(None);
        };
        let exe = std::env::current_exe()
            .map_err(|e| Failure::new(format!("finding the test binary for the child: {e}")))?;
        let mut process = tokio::process::Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(CHILD_VAR, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure::new(format!("starting the child process: {e}")))?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(Failure::new("the child process has no stdin/stdout"));
        };
        let mut child = Child {
            process,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        let ready = child.answer(START, "the child process starting").await?;
        if ready != "ready" {
            return Err(Failure::new(format!(
                "the child process could not start: {ready}"
            )));
        }
        Ok(Some(child))
    }

    /// Sends one command without waiting for its answer.
    /// Starts the child for `check` if the harness declares that processes share locks;
    /// otherwise reports the skip and gives `None`.
    pub(crate) async fn if_shared(h: &Harness, check: &str) -> Result<Option<Child>, Failure> {
        if h.sharing() != crate::Sharing::Processes {
            h.skip(
                check,
                "the harness declares that processes do not share locks",
            );
            return Ok(None);
        }
        Child::start(h, check).await
    }

    /// Sends `command` (a `lock`), and reads (within `limit`) the token of the hold the child
    /// answers with.
    pub(crate) async fn holds(
        &mut self,
        command: &str,
        limit: Duration,
        what: &str,
        check: &str,
    ) -> Result<u64, Failure> {
        self.send(command).await?;
        let answer = self.answer(limit, what).await?;
        Child::token(&answer, check)?.ok_or_else(|| Failure::new(format!("{what} answered busy")))
    }

    pub(crate) async fn send(&mut self, command: &str) -> Result<(), Failure> {
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| Failure::new(format!("writing to the child process: {e}")))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| Failure::new(format!("writing to the child process: {e}")))
    }

    /// The next answer, within `limit`.
    pub(crate) async fn answer(&mut self, limit: Duration, what: &str) -> Result<String, Failure> {
        let read = async {
            loop {
                match self.lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(answer) = line.strip_prefix(PREFIX) {
                            return Ok(answer.to_owned());
                        }
                    }
                    Ok(None) => return Err(Failure::new(format!("{what}: the child exited"))),
                    Err(e) => return Err(Failure::new(format!("{what}: reading the child: {e}"))),
                }
            }
        };
        tokio::time::timeout(limit, read)
            .await
            .map_err(|_| Failure::new(format!("{what}: no answer within {limit:?}")))?
    }

    /// Parses a `held TOKEN` / `busy` answer.
    pub(crate) fn token(answer: &str, what: &str) -> Result<Option<u64>, Failure> {
        if answer == "busy" {
            return Ok(None);
        }
        answer
            .strip_prefix("held ")
            .and_then(|t| t.parse().ok())
            .map(Some)
            .ok_or_else(|| Failure::new(format!("{what}: the child answered `{answer}`")))
    }

    /// Kills the child (SIGKILL: no clean-up runs) and waits for it to exit.
    pub(crate) async fn kill(mut self) -> Result<(), Failure> {
        self.process
            .kill()
            .await
            .map_err(|e| Failure::new(format!("killing the child process: {e}")))
    }

    /// Closes its input, so it closes its service, and waits for it to exit.
    pub(crate) async fn finish(self) -> Result<(), Failure> {
        let Child {
            mut process, stdin, ..
        } = self;
        drop(stdin);
        match tokio::time::timeout(START, process.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Failure::new(format!("waiting for the child process: {e}"))),
            Err(_) => {
                let _ = process.kill().await;
                Err(Failure::new("the child process did not exit when told to"))
            }
        }
    }
}

/// Resolves at the end of input; the protocol has one command at a time, so lines that arrive
/// while one runs are dropped.
async fn end_of_input(commands: &mut tokio::sync::mpsc::UnboundedReceiver<String>) {
    while commands.recv().await.is_some() {}
}

/// The locker a command names: `sem:N:ID` is a permit of semaphore `ID` with limit `N`,
/// `elect:ID` a candidate of election `ID` (whose `lock` campaigns with the value `child`),
/// anything else a lock id.
fn open_locker(session: &lock_core::Session, spec: &str) -> lock_core::Result<Candidate> {
    if let Some(rest) = spec.strip_prefix("sem:") {
        let (limit, id) = rest.split_once(':').unwrap_or(("", rest));
        let limit = limit
            .parse()
            .map_err(|_| lock_core::Error::InvalidConfig(format!("bad limit in {spec}")))?;
        return Ok(Candidate::Locker(session.new_semaphore(id, limit)?));
    }
    if let Some(name) = spec.strip_prefix("elect:") {
        return Ok(Candidate::Election(session.new_election(name)?));
    }
    Ok(Candidate::Locker(session.new_locker(spec)))
}

/// What a child command acts on.
enum Candidate {
    Locker(lock_core::Locker),
    Election(lock_core::Election),
}

impl Candidate {
    async fn lock(&mut self) -> lock_core::Result<lock_core::Held> {
        match self {
            Candidate::Locker(locker) => locker.lock().await,
            Candidate::Election(election) => election.campaign("child").await,
        }
    }

    async fn try_lock(&mut self) -> lock_core::Result<Option<lock_core::Held>> {
        match self {
            Candidate::Locker(locker) => locker.try_lock().await,
            Candidate::Election(_) => Err(lock_core::Error::Unsupported(
                "the child campaigns only with `lock`".into(),
            )),
        }
    }

    /// Releases what it holds: a lock or permit, or (resigning) the election's term in
    /// `holds`.
    async fn unlock(&mut self, holds: &mut Vec<lock_core::Held>) -> lock_core::Result<()> {
        match self {
            Candidate::Locker(locker) => locker.unlock().await,
            Candidate::Election(election) => {
                let term = holds.iter().position(|h| h.id() == election.name());
                match term {
                    Some(at) => holds.swap_remove(at).unlock().await,
                    None => Err(lock_core::Error::NotHeld),
                }
            }
        }
    }
}

/// The child's side: serves commands on stdin until it ends. Called by the `lock_testkit_child`
/// test when [`CHILD_VAR`] is set.
pub(crate) fn serve(harness: Option<Harness>) {
    let say = |answer: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{PREFIX}{answer}");
        let _ = out.flush();
    };
    let Some(h) = harness else {
        say("error the harness is not available in the child (skipped)");
        return;
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return say(&format!("error building a runtime: {e}")),
    };
    runtime.block_on(async {
        let service = match h.service().await {
            Ok(s) => s,
            Err(e) => return say(&format!("error {e}")),
        };
        let session = match service.new_session(h.config()).await {
            Ok(s) => s,
            Err(e) => return say(&format!("error opening a session: {}", e.report())),
        };
        say("ready");
        // Commands arrive from a reading thread, so that the end of input (the parent is done,
        // or died) is seen even while a lock() waits: the child then cleans up and exits.
        let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lockers = HashMap::new();
        let mut holds = Vec::new();
        while let Some(line) = commands.recv().await {
            let Some((command, id)) = line.trim_end().split_once(' ') else {
                say("error unknown command");
                continue;
            };
            if !lockers.contains_key(id) {
                match open_locker(&session, id) {
                    Ok(locker) => lockers.insert(id.to_owned(), locker),
                    Err(e) => {
                        say(&format!("error {e}"));
                        continue;
                    }
                };
            }
            let Some(locker) = lockers.get_mut(id) else {
                continue;
            };
            let run = async {
                match command {
                    "lock" => match locker.lock().await {
                        Ok(held) => {
                            let answer = format!("held {}", held.fencing_token());
                            holds.push(held);
                            answer
                        }
                        Err(e) => format!("error {e}"),
                    },
                    "try" => match locker.try_lock().await {
                        Ok(Some(held)) => {
                            let answer = format!("held {}", held.fencing_token());
                            holds.push(held);
                            answer
                        }
                        Ok(None) => "busy".to_owned(),
                        Err(e) => format!("error {e}"),
                    },
                    "unlock" => match locker.unlock(&mut holds).await {
                        Ok(()) => "unlocked".to_owned(),
                        Err(e) => format!("error {e}"),
                    },
                    _ => "error unknown command".to_owned(),
                }
            };
            tokio::select! {
                answer = run => say(&answer),
                () = end_of_input(&mut commands) => break,
            }
        }
        drop(lockers);
        let _ = session.close().await;
        let _ = service.close().await;
    });
}
