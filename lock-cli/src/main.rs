//! `lock`: run a command while holding a distributed lock; see `lock --help`.

mod args;
mod exec;
mod open;
mod status;

use std::process::ExitCode;

use args::Command;

/// Exit statuses of `lock` itself (a command's own status passes through otherwise).
pub(crate) mod exit {
    pub(crate) const USAGE: u8 = 64;
    pub(crate) const UNAVAILABLE: u8 = 69;
    pub(crate) const HELD: u8 = 75;
    pub(crate) const TIMEOUT: u8 = 124;
    pub(crate) const LOST: u8 = 125;
    pub(crate) const CANNOT_EXECUTE: u8 = 126;
    pub(crate) const NOT_FOUND: u8 = 127;
}

/// A failure of `lock` itself: one line for the user, and the exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: u8, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "lock=debug,lock_etcd=debug,lock_cli=debug,warn",
        _ => "trace",
    };
    let filter = if verbose == 0 {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
    } else {
        EnvFilter::new(default)
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let command = match args::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(end) => {
            end.print();
            return ExitCode::from(end.status);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let result = match command {
        Command::Completions(shell) => {
            clap_complete::generate(
                shell,
                &mut args::definition(),
                "lock",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Exec { ref common, .. }
        | Command::Observe { ref common, .. }
        | Command::Status { ref common, .. } => {
            init_tracing(common.verbose);
            runtime.block_on(async {
                match command {
                    Command::Exec { .. } => exec::run(command).await,
                    Command::Observe { .. } => exec::observe(command).await,
                    _ => status::run(command).await,
                }
            })
        }
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(failure) => {
            eprintln!("lock: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}
