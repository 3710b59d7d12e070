//! Runs the workspace's tests side by side: `cargo test` runs one test binary after another,
//! and most of ours spend their time waiting (for a TTL, a timeout, an etcd cluster of their
//! own), so the README's test command runs a few binaries at once instead, as cargo would run
//! each one (the same executable, from its package's directory).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many jobs run at once. Each test binary runs its own tests on as many threads as there
/// are cores, and most of them wait far more than they compute; but many also time what etcd
/// and the network do, with margins under a second, and on two cores three jobs at once made
/// some of them miss (a 1000-session check's keep-alives, a margin of 0.7 s).
pub(crate) const WIDTH: usize = 2;

/// One test binary cargo built.
pub(crate) struct TestBinary {
    /// `<package>: <target>`, as the log names it.
    pub(crate) name: String,
    /// The target's name (`faults` for `tests/faults.rs`, the crate's for unit tests).
    pub(crate) target: String,
    pub(crate) package: String,
    pub(crate) executable: PathBuf,
    /// The package's directory, where `cargo test` runs it.
    pub(crate) dir: PathBuf,
}

/// Builds every test target of `cargo` (a `cargo test … --no-run` command) and lists the
/// binaries from cargo's JSON messages.
pub(crate) fn build(mut cargo: Command) -> Result<Vec<TestBinary>, String> {
    let name = "cargo test (build)";
    eprintln!("xtask: {name}");
    let start = Instant::now();
    let output = cargo
        .args(["--message-format", "json-render-diagnostics"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{name}: could not run: {e}"))?;
    let ok = output.status.success();
    eprintln!(
        "xtask: {name}: {} in {:.0?}",
        if ok { "ok" } else { "FAILED" },
        start.elapsed()
    );
    if !ok {
        return Err(format!("{name} failed ({})", output.status));
    }
    let binaries: Vec<TestBinary> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(test_binary)
        .collect();
    if binaries.is_empty() {
        return Err(format!("{name}: cargo reported no test binary"));
    }
    Ok(binaries)
}

/// A test binary from one line of cargo's JSON output, if the line reports one.
fn test_binary(line: &str) -> Option<TestBinary> {
    if !line.contains(r#""reason":"compiler-artifact""#) || !line.contains(r#""test":true"#) {
        return None;
    }
    let executable = PathBuf::from(string_field(line, "executable")?);
    let manifest = PathBuf::from(string_field(line, "manifest_path")?);
    let dir = manifest.parent()?.to_path_buf();
    let package = dir.file_name()?.to_string_lossy().into_owned();
    let target_json = &line[line.find(r#""target":{"#)?..];
    let target = string_field(target_json, "name")?;
    let src = string_field(target_json, "src_path").unwrap_or_default();
    let shown = src
        .strip_prefix(&format!("{}/", dir.display()))
        .unwrap_or(&target)
        .to_owned();
    Some(TestBinary {
        name: format!("{package}: {shown}"),
        target,
        package,
        executable,
        dir,
    })
}

/// The string value of the first `"field":"…"` in `json` (cargo escapes only `"` and `\`
/// in the paths and names read here).
fn string_field(json: &str, field: &str) -> Option<String> {
    let start = json.find(&format!(r#""{field}":""#))? + field.len() + 4;
    let mut value = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
    None
}

/// A command to run with the others, and what the log calls it.
pub(crate) struct Job {
    pub(crate) name: String,
    pub(crate) command: Command,
    /// Loads the machine enough that two such jobs at once fail each other's timing (the
    /// conformance suite's 1000 sessions, a test that starts etcd clusters and kills their
    /// members): these run one at a time, beside lighter jobs only.
    pub(crate) heavy: bool,
}

impl Job {
    pub(crate) fn new(name: impl Into<String>, command: Command) -> Job {
        Job {
            name: name.into(),
            command,
            heavy: false,
        }
    }

    pub(crate) fn binary(binary: &TestBinary) -> Job {
        let mut command = Command::new(&binary.executable);
        command.current_dir(&binary.dir);
        let mut job = Job::new(&binary.name, command);
        job.heavy = HEAVY.contains(&(binary.package.as_str(), binary.target.as_str()));
        job
    }
}

/// The heavy test binaries (see [`Job::heavy`]).
const HEAVY: [(&str, &str); 2] = [("lock-etcd", "faults"), ("lock-etcd", "conformance")];

/// Runs `jobs`, `width` at once, in the order given (put the longest first); the heavy ones
/// one after another, in the first of the `width` lanes, which takes light jobs once they are
/// done. Each job's output is printed whole when it ends, so the log reads as if they ran one
/// after another. Every job runs even if one fails; the error names each that failed.
pub(crate) fn run(jobs: Vec<Job>, width: usize) -> Result<(), String> {
    let count = jobs.len();
    let (heavy, light): (VecDeque<Job>, VecDeque<Job>) = jobs.into_iter().partition(|j| j.heavy);
    let (heavy, light) = (Mutex::new(heavy), Mutex::new(light));
    let pop =
        |queue: &Mutex<VecDeque<Job>>| queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
    let failed = Mutex::new(Vec::new());
    let print = Mutex::new(());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for lane in 0..width.max(1) {
            let (heavy, light, pop) = (&heavy, &light, &pop);
            let (failed, print) = (&failed, &print);
            scope.spawn(move || loop {
                let next = match lane {
                    0 => pop(heavy).or_else(|| pop(light)),
                    _ => pop(light),
                };
                let Some(mut job) = next else {
                    return;
                };
                let began = Instant::now();
                let output = job
                    .command
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| e.to_string());
                let took = began.elapsed();
                let _print = print.lock().unwrap_or_else(|e| e.into_inner());
                if !report(&job.name, &output, took) {
                    failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(job.name.clone());
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "xtask: {count} test jobs, {} at once: {} failed, in {:.0?}",
        width,
        failed.len(),
        start.elapsed()
    );
    match failed.is_empty() {
        true => Ok(()),
        false => Err(format!("tests failed: {}", failed.join(", "))),
    }
}

/// Prints a finished job's output and verdict; whether it passed.
fn report(name: &str, output: &Result<Output, String>, took: Duration) -> bool {
    match output {
        Ok(output) => {
            eprintln!("xtask: ── {name}");
            eprint!("{}", String::from_utf8_lossy(&output.stdout));
            eprint!("{}", String::from_utf8_lossy(&output.stderr));
            let ok = output.status.success();
            eprintln!(
                "xtask: {name}: {} in {took:.1?}",
                if ok { "ok" } else { "FAILED" }
            );
            if !ok {
                eprintln!("xtask: {name}: {}", output.status);
            }
            ok
        }
        Err(e) => {
            eprintln!("xtask: {name}: could not run: {e}");
            false
        }
    }
}

/// Orders `binaries` so the slowest known ones start first (a job that starts last and runs
/// long leaves the other slots idle); the rest keep cargo's order.
pub(crate) fn slowest_first(binaries: &mut [TestBinary]) {
    // Measured (seconds, in one job each): the etcd backend's fault tests and its conformance
    // suite, the suite's self-test against broken backends, then the cluster-control tests.
    const SLOW: [(&str, &str); 9] = [
        ("lock-etcd", "faults"),
        ("lock-etcd", "conformance"),
        ("lock-testkit", "catches_broken_backends"),
        ("lock-etcd", "partition"),
        ("lock-etcd", "stale_requests"),
        ("lock-cli", "cli"),
        ("lock-etcd", "hung_member"),
        ("lock-etcd", "failover"),
        ("lock-cli", "secrets"),
    ];
    let rank = |b: &TestBinary| {
        SLOW.iter()
            .position(|&(package, target)| b.package == package && b.target == target)
            .unwrap_or(SLOW.len())
    };
    binaries.sort_by_key(rank);
}
