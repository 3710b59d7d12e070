//! The subcommands.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use lock_tools::etcd::{Binaries, Cluster, ClusterSpec, BIN_VAR, ENDPOINTS_VAR, REQUIRE_VAR};

use crate::{provision, tests, versions};

pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(protoc: &std::path::Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root()).env("PROTOC", protoc);
    if in_ci() {
        // A clean clone builds once: incremental state (2.2 GiB of a clean run) is never reused.
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    cmd
}

/// Whether this runs in CI (`CI` set, and not to `false` or `0`, as CI services set it).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn step(name: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: {name}");
    let start = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{name}: could not run: {e}"))?;
    eprintln!(
        "xtask: {name}: {} in {:.0?}",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

fn binaries(tools: &provision::Tools) -> Binaries {
    Binaries {
        etcd: tools.etcd.clone(),
        etcdctl: tools.etcdctl.clone(),
    }
}

fn bin_dir(tools: &provision::Tools) -> PathBuf {
    tools.etcd.parent().map(PathBuf::from).unwrap_or_default()
}

/// `cargo xtask test [--quick]`.
pub(crate) fn test(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let tools = provision::all()?;
    if !quick {
        step(
            "cargo fmt --check",
            cargo(&tools.protoc).args(["fmt", "--all", "--", "--check"]),
        )?;
        step(
            "cargo clippy",
            cargo(&tools.protoc).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        step(
            "cargo doc",
            cargo(&tools.protoc)
                .args(["doc", "--workspace", "--no-deps", "--all-features"])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )?;
        publish_dry_run(&tools)?;
        packages_carry_their_licenses(&tools)?;
    }
    versions::check(&workspace_root())?;
    first_command_needs_no_protoc()?;
    every_example_runs()?;
    // Build first, so the clusters do not idle through a long compile.
    let mut build = cargo(&tools.protoc);
    build.args(["test", "--workspace", "--all-features", "--no-run"]);
    let mut test_binaries = tests::build(build)?;
    tests::slowest_first(&mut test_binaries);
    let cluster = Cluster::start(&binaries(&tools), &ClusterSpec::default())?;
    eprintln!("xtask: etcd cluster up: {}", cluster.endpoints());
    let (old_cluster, old_bin) = old_etcd_cluster()?;
    let skips = cluster.dir().join("skipped-checks.txt");
    let on = |mut job: tests::Job, cluster: &Cluster, bin: &std::path::Path| {
        job.command
            .env(ENDPOINTS_VAR, cluster.endpoints())
            .env(BIN_VAR, bin)
            .env(REQUIRE_VAR, "1");
        job
    };
    let main = |job: tests::Job| {
        let mut job = on(job, &cluster, &bin_dir(&tools));
        job.command.env(lock_testkit::SKIP_LOG_VAR, &skips);
        job
    };
    let mut jobs = Vec::new();
    for binary in &test_binaries {
        jobs.push(main(tests::Job::binary(binary)));
        // The conformance suite again, on the older etcd series the README supports.
        if (binary.package.as_str(), binary.target.as_str()) == ("lock-etcd", "conformance") {
            let mut job = tests::Job::binary(binary);
            job.name = format!("{} (etcd {})", job.name, provision::ETCD_OLD.series);
            jobs.push(on(job, &old_cluster, &old_bin));
        }
    }
    let mut doc = cargo(&tools.protoc);
    doc.args(["test", "--workspace", "--all-features", "--doc"]);
    // First: it compiles before it runs, and would otherwise be the last job left running.
    jobs.insert(0, main(tests::Job::new("doc tests", doc)));
    let result = tests::run(jobs, tests::WIDTH);
    report_skips(&skips);
    drop(old_cluster);
    // The fencing example on etcd: guarded writes and the guide's `fenced_put`; the leader and
    // semaphore examples on etcd (all run on `local:` above too). `cargo test --workspace
    // --all-features` built them.
    let result = result.and_then(|()| {
        let example = target_dir().join("debug/examples/fenced_write");
        step(
            "examples/fenced_write etcd:… (guarded writes, fenced_put)",
            Command::new(example).arg(format!("etcd:{}", cluster.endpoints())),
        )
    });
    let result = result.and_then(|()| {
        for example in ["leader", "semaphore"] {
            let uri = format!("etcd:{}?prefix=example-{example}/", cluster.endpoints());
            let binary = target_dir().join(format!("debug/examples/{example}"));
            step(
                &format!("examples/{example} etcd:…"),
                Command::new(binary).arg(uri),
            )?;
        }
        Ok(())
    });
    drop(cluster);
    eprintln!("xtask: etcd clusters stopped");
    result?;
    // A short torture run, loaded: a fixed seed, so the fault sequence is the same in every
    // run (the seed of the report in docs/RELIABILITY.md). The load is what makes etcd revoke
    // leases early (etcd issue 15247, docs/RELIABILITY.md); the lock-delay keeps that from
    // giving two holders.
    // `cargo test` built the runner (an example of lock-etcd) with the tests.
    torture_run(&tools, 40, SHORT_TORTURE_SEED, true, false)
}

/// The workspace's crates meant for crates.io (the others say `publish = false`).
const PUBLISHED: [&str; 6] = [
    "lock-core",
    "lock-local",
    "lock-etcd",
    "lock-testkit",
    "lock-rs",
    "lock-cli",
];

/// The manifests say `MIT OR Apache-2.0`: every crate meant for crates.io packages both texts
/// (symbolic links to the workspace's `LICENSE-MIT` and `LICENSE-APACHE`).
fn packages_carry_their_licenses(tools: &provision::Tools) -> Result<(), String> {
    for package in PUBLISHED {
        let output = cargo(&tools.protoc)
            .args(["package", "--list", "--allow-dirty", "-p", package])
            .stderr(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cargo package --list -p {package}: {e}"))?;
        let files = String::from_utf8_lossy(&output.stdout);
        for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
            if !output.status.success() || !files.lines().any(|f| f == license) {
                return Err(format!("the {package} package lacks {license}"));
            }
        }
    }
    eprintln!("xtask: every published package carries LICENSE-MIT and LICENSE-APACHE");
    Ok(())
}

/// Every crate meant for crates.io (those without `publish = false`) packages and builds from
/// its package alone, its workspace dependencies taken from their packages. The verification
/// builds go to a target directory of their own, removed afterwards whatever the outcome: their
/// feature sets differ from the workspace's, so they share little with the tests' build, and
/// kept they would add their size to the tests' on the disk.
fn publish_dry_run(tools: &provision::Tools) -> Result<(), String> {
    let verify = target_dir().join("publish-verify");
    let _ = std::fs::remove_dir_all(&verify);
    forget_packaged_workspace_crates();
    let result = step(
        "cargo publish --dry-run",
        cargo(&tools.protoc)
            .args(["publish", "--dry-run", "--workspace", "--allow-dirty"])
            .arg("--target-dir")
            .arg(&verify),
    );
    let _ = std::fs::remove_dir_all(&verify);
    result
}

/// Removes what an earlier `cargo publish --dry-run` unpacked of this workspace's own crates.
/// Cargo unpacks the packages it verifies from a temporary local registry (under
/// `target/package/`) into `$CARGO_HOME/registry/src/-<hash>/`, named by crate and version
/// only, and reuses an unpacked copy of the same version as if it could not change: a second
/// dry run from the same checkout would build the first run's sources (seen: `lock-etcd` failed
/// to build against an older `lock-core`). Local registries are the directories whose name
/// starts with `-`; crates.io's copies are never touched. What the dry run built is gone with
/// its target directory ([`publish_dry_run`]).
fn forget_packaged_workspace_crates() {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(home) = home else {
        return;
    };
    for kind in ["src", "cache"] {
        let Ok(registries) = std::fs::read_dir(home.join("registry").join(kind)) else {
            continue;
        };
        for registry in registries.flatten() {
            if registry.file_name().to_string_lossy().starts_with('-') {
                remove_our_crates_in(&registry.path());
            }
        }
    }
}

/// Removes the entries of `dir` named after one of this workspace's crates (`<crate>-…`).
fn remove_our_crates_in(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = |package: &&str| {
            name.strip_prefix(package)
                .is_some_and(|rest| rest.starts_with('-'))
        };
        if PUBLISHED.iter().any(ours) {
            let path = entry.path();
            let _ = match path.is_dir() {
                true => std::fs::remove_dir_all(&path),
                false => std::fs::remove_file(&path),
            };
        }
    }
}

/// A 3-node cluster of the older etcd series the README supports ([`provision::ETCD_OLD`]),
/// and the directory of its binaries.
fn old_etcd_cluster() -> Result<(Cluster, PathBuf), String> {
    let old = provision::ETCD_OLD;
    let (etcd, etcdctl) = provision::release(old)?;
    let dir = etcd.parent().map(PathBuf::from).unwrap_or_default();
    let cluster = Cluster::start(&Binaries { etcd, etcdctl }, &ClusterSpec::default())?;
    eprintln!(
        "xtask: etcd {} cluster up: {}",
        old.series,
        cluster.endpoints()
    );
    Ok((cluster, dir))
}

/// Prints how many checks were skipped and why (each one a line in the skip log): none of them
/// needs etcd (those fail under `LOCK_REQUIRE_ETCD=1`); they are checks a harness's declarations
/// rule out, such as fault injection for an in-process backend.
fn report_skips(log: &std::path::Path) {
    let lines = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = lines.lines().collect();
    eprintln!(
        "xtask: {} conformance checks skipped (ruled out by their backend's declarations){}",
        lines.len(),
        if lines.is_empty() { "" } else { ":" }
    );
    for line in lines {
        eprintln!("xtask:   {line}");
    }
}

/// The README's first command, as a newcomer runs it: no `protoc` (it points at a path that
/// does not exist) and no etcd; it must print `1000`.
fn first_command_needs_no_protoc() -> Result<(), String> {
    let name = "cargo run --example counter (no protoc)";
    eprintln!("xtask: {name}");
    let output = cargo(std::path::Path::new("/nonexistent/protoc"))
        .args(["run", "--quiet", "--example", "counter"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("{name}: could not run: {e}"))?;
    let printed = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && printed.trim() == "1000" {
        eprintln!("xtask: {name}: ok, printed 1000");
        Ok(())
    } else {
        Err(format!(
            "{name} failed ({}), printed {:?}",
            output.status,
            printed.trim()
        ))
    }
}

/// The application examples besides the seed (`examples/examples/`), each run to its end on
/// `local:` as its doc says to run it, with no `protoc`; each asserts what it shows, so a run
/// that exits 0 passed. Like the seed's, these commands select the default members, so those
/// without features share the seed's build.
fn every_example_runs() -> Result<(), String> {
    for (example, features) in [
        ("leader", None),
        ("semaphore", None),
        ("try_lock", None),
        ("fenced_write", None),
        ("prometheus", Some("metrics")),
    ] {
        let name = match features {
            Some(features) => format!("cargo run --example {example} --features {features}"),
            None => format!("cargo run --example {example}"),
        };
        eprintln!("xtask: {name}");
        let mut command = cargo(std::path::Path::new("/nonexistent/protoc"));
        command.args(["run", "--quiet", "--example", example]);
        if let Some(features) = features {
            command.args(["--features", features]);
        }
        let output = command
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("{name}: could not run: {e}"))?;
        if !output.status.success() {
            return Err(format!("{name} failed ({})", output.status));
        }
    }
    Ok(())
}

/// Cargo's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// The seed of the torture run inside `cargo xtask test`.
const SHORT_TORTURE_SEED: u64 = 7;

fn torture_run(
    tools: &provision::Tools,
    seconds: u64,
    seed: u64,
    load: bool,
    build: bool,
) -> Result<(), String> {
    if build {
        // Built with the same workspace features as the tests, so nothing is compiled twice.
        step(
            "build the torture runner",
            cargo(&tools.protoc).args([
                "build",
                "--quiet",
                "--workspace",
                "--all-features",
                "--examples",
            ]),
        )?;
    }
    let target = target_dir();
    let runner = target.join("debug/examples/torture");
    let _load = if load {
        Some(crate::load::Load::start(&target.join("torture-load"))?)
    } else {
        None
    };
    let loaded = if load { ", loaded" } else { "" };
    step(
        &format!("torture {seconds} s, seed {seed}{loaded}"),
        Command::new(runner)
            .args([
                "--seconds",
                &seconds.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .env(BIN_VAR, bin_dir(tools)),
    )
}

/// `cargo xtask torture [--seconds N] [--seed S] [--load]`.
pub(crate) fn torture(args: &[String]) -> Result<(), String> {
    let mut seconds = 60;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let mut load = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--load" {
            load = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = value
            .parse()
            .map_err(|_| format!("{flag} takes a number, not `{value}`"))?;
        match flag.as_str() {
            "--seconds" => seconds = number,
            "--seed" => seed = number,
            _ => {
                return Err(format!(
                    "unknown option `{flag}`: cargo xtask torture [--seconds N] [--seed S] [--load]"
                ))
            }
        }
    }
    let tools = provision::all()?;
    torture_run(&tools, seconds, seed, load, true)
}

/// `cargo xtask bench [local|etcd]`.
pub(crate) fn bench(args: &[String]) -> Result<(), String> {
    let which = args.first().map(String::as_str).unwrap_or("all");
    let tools = provision::all()?;
    if matches!(which, "all" | "local") {
        step(
            "bench local",
            cargo(&tools.protoc).args(["bench", "-p", "lock-local", "--bench", "local"]),
        )?;
    }
    if matches!(which, "all" | "etcd") {
        let spec = ClusterSpec {
            nodes: 1,
            ..ClusterSpec::default()
        };
        let single = Cluster::start(&binaries(&tools), &spec)?;
        let cluster = Cluster::start(&binaries(&tools), &ClusterSpec::default())?;
        let result = step(
            "bench etcd",
            cargo(&tools.protoc)
                .args(["bench", "-p", "lock-etcd", "--bench", "etcd"])
                .env(ENDPOINTS_VAR, single.endpoints())
                .env("LOCK_ETCD_CLUSTER_ENDPOINTS", cluster.endpoints())
                .env("LOCK_ETCDCTL", &tools.etcdctl),
        );
        drop((single, cluster));
        result?;
    }
    if !matches!(which, "all" | "local" | "etcd") {
        return Err(format!("unknown benchmark `{which}`: use local or etcd"));
    }
    Ok(())
}

/// `cargo xtask etcd [--nodes N] [--old]`.
pub(crate) fn etcd(args: &[String]) -> Result<(), String> {
    const USAGE: &str = "usage: cargo xtask etcd [--nodes N] [--old]";
    let (mut nodes, mut old) = (3, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nodes" => {
                let n = args.next().ok_or(USAGE)?;
                nodes = n
                    .parse()
                    .map_err(|_| format!("--nodes takes a number, not `{n}`"))?;
            }
            "--old" => old = true,
            _ => return Err(USAGE.to_owned()),
        }
    }
    let bins = if old {
        let (etcd, etcdctl) = provision::release(provision::ETCD_OLD)?;
        Binaries { etcd, etcdctl }
    } else {
        binaries(&provision::all()?)
    };
    let cluster = Cluster::start(
        &bins,
        &ClusterSpec {
            nodes,
            ..ClusterSpec::default()
        },
    )?;
    println!("etcd:{}", cluster.endpoints());
    eprintln!(
        "xtask: {nodes}-node etcd cluster running (data in {}); Ctrl-C stops it",
        cluster.dir().display()
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
