//! `cargo xtask`: development automation for the `lock` workspace.
//!
//! - `cargo xtask test` — fmt, clippy, rustdoc and every test of the workspace, against a
//!   3-node etcd cluster it provisions and starts (and stops, also on failure).
//! - `cargo xtask bench [local|etcd]` — the benchmark tables of `docs/BENCHMARKS.md`.
//! - `cargo xtask etcd [--nodes N]` — starts a cluster for manual use until Ctrl-C.
//! - `cargo xtask torture [--seconds N] [--seed S] [--load]` — random faults (on a loaded
//!   machine with `--load`), then the safety checker.

mod load;
mod provision;
mod run;
mod tests;
mod versions;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => run::test(&args[1..]),
        Some("bench") => run::bench(&args[1..]),
        Some("etcd") => run::etcd(&args[1..]),
        Some("torture") => run::torture(&args[1..]),
        Some("provision") => provision::all().and_then(|tools| {
            println!("protoc:   {}", tools.protoc.display());
            println!("etcd:     {}", tools.etcd.display());
            let (old, _) = provision::release(provision::ETCD_OLD)?;
            println!("etcd 3.4: {}", old.display());
            Ok(())
        }),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test [--quick]        fmt + clippy + rustdoc checks, then every test of the workspace against
                        a fresh 3-node etcd cluster (--quick skips the fmt/clippy/rustdoc checks)
  bench [local|etcd]    run the benchmarks and print their tables (default: all)
  etcd [--nodes N] [--old]
                        start an etcd cluster (default 3 nodes; --old: etcd 3.4) and print its
                        connection string
  torture [--seconds N] [--seed S] [--load]
                        random faults (members killed/paused, clients partitioned/slowed/cut,
                        whole cluster down) under contention, then the history checker's verdict;
                        --load runs CPU, memory and disk burners beside it
  provision             install protoc and etcd under target/tools if missing, print their paths";
