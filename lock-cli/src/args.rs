//! Command-line parsing, with `clap` (derive): `lock help exec`, suggestions for typos, shell
//! completions. Ids and command arguments are `OsString`s end to end: an id must be UTF-8 for
//! the lock service (a usage error otherwise), a command's arguments need not be.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use crate::exit;

const ABOUT: &str = "lock — run commands under a distributed lock";

const EXEC_ABOUT: &str = "\
Take lock ID, run COMMAND while holding it, release it when COMMAND exits, and exit with
COMMAND's status.

COMMAND gets the lock's fencing token in LOCK_FENCING_TOKEN (and the id in LOCK_ID): pass it
along with every write to the resource the lock protects. If the lock is lost while COMMAND
runs (lease expired, partition, key deleted), COMMAND's process group (COMMAND and what it
started) gets SIGTERM, then SIGKILL after --kill-after, and lock exits with 125. Ctrl-C
(SIGINT) or SIGTERM to lock stops COMMAND the same way, releases the lock, and lock exits with
130 or 143. If lock itself is killed with SIGKILL, or stopped (SIGSTOP, a frozen machine), COMMAND
keeps running unguarded (the lock frees after the TTL): only the fencing token can stop its
late writes.

An ID that starts with `-` is given as --id=ID.";

const ELECT_ABOUT: &str = "\
Campaign in election NAME with VALUE (e.g. this machine's address), run COMMAND while leading,
resign when COMMAND exits, and exit with COMMAND's status.

Candidates are elected in the order they campaigned; others see VALUE as the leader's (`lock
observe NAME`; on etcd also `etcdctl elect -l <prefix>NAME`). COMMAND gets the term's fencing
token in LOCK_FENCING_TOKEN (and the name in LOCK_ID). Losing the leadership, Ctrl-C and SIGTERM
stop COMMAND as for `lock exec` (exit 125, 130, 143).";

const OBSERVE_ABOUT: &str = "\
Print the leader of election NAME, then every change of leader or value as it happens, one line
each: the term's fencing token, a tab, the leader's value; `-` while nobody leads. Runs until
Ctrl-C (exit 130) or SIGTERM (143).";

const STATUS_ABOUT: &str = "\
Show who holds lock ID (lease, fencing token, since when, host and pid) and how many wait
(etcd backend).";

const AFTER_HELP: &str = "\
DURATIONS: 500ms, 10s, 2m, 1h 30m.

ENVIRONMENT:
    LOCK_SERVICE        the lock service, when --service is not given
    LOCK_PASSWORD_FILE  a file holding the etcd password, when --password-file is not given
    LOCK_PASSWORD       the etcd password (never printed)
    RUST_LOG            log filter, as -v

EXIT STATUS (exec, elect):
    COMMAND's status (128+N if it was killed by signal N), or
    64   usage error (bad option, no service, unknown scheme, an id that is not UTF-8, a
         --limit other parties of the id do not use)
    69   the lock service cannot be reached or refused us
    75   --try: the lock is held by someone else
    124  --timeout: the lock was not granted in time
    125  the lock was lost while COMMAND ran; COMMAND was terminated
    130  Ctrl-C (SIGINT): COMMAND was terminated, the lock released (143: SIGTERM)
    126  COMMAND cannot be executed
    127  COMMAND was not found

EXAMPLE:
    export LOCK_SERVICE=etcd:http://127.0.0.1:2379
    lock exec --ttl 10s nightly-report -- ./report.sh --date today
    lock exec --limit 4 renders -- ./render.sh       # at most 4 renders at once
    lock elect scheduler \"$(hostname):8080\" -- ./scheduler
    lock observe scheduler                           # who leads, as it changes";

#[derive(Debug, Parser)]
#[command(
    name = "lock",
    version,
    about = ABOUT,
    after_help = AFTER_HELP,
    arg_required_else_help = true,
    propagate_version = true
)]
struct Cli {
    /// Log to stderr (-vv: more); RUST_LOG works too.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Run COMMAND while holding lock ID; kill it if the lock is lost.
    #[command(long_about = EXEC_ABOUT, after_help = AFTER_HELP)]
    Exec(ExecArgs),
    /// Run COMMAND while leading election NAME with VALUE; kill it if leadership is lost.
    #[command(long_about = ELECT_ABOUT, after_help = AFTER_HELP)]
    Elect(ElectArgs),
    /// Print the leader of election NAME and every change, as it happens.
    #[command(long_about = OBSERVE_ABOUT, after_help = AFTER_HELP)]
    Observe(ObserveArgs),
    /// Show who holds lock ID and how many wait (etcd backend).
    #[command(long_about = STATUS_ABOUT, after_help = AFTER_HELP)]
    Status(StatusArgs),
    /// Print a completion script for SHELL, e.g. `lock completions bash > /etc/bash_completion.d/lock`.
    Completions {
        /// The shell.
        shell: Shell,
    },
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// The lock service, e.g. etcd:http://127.0.0.1:2379 (env LOCK_SERVICE).
    #[arg(long, value_name = "URI")]
    service: Option<OsString>,
    /// Session TTL: how long the lock survives without keep-alives.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    ttl: Duration,
    /// Read the etcd password from PATH (env LOCK_PASSWORD_FILE); the password may also come
    /// from LOCK_PASSWORD; it is never printed.
    #[arg(long, value_name = "PATH")]
    password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ExecArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Give up waiting after DURATION (exit 124).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    timeout: Option<Duration>,
    /// Fail at once if the lock is held (exit 75).
    #[arg(long = "try")]
    try_only: bool,
    /// Let up to N commands hold ID at once, across machines (a semaphore; every party of ID
    /// must give the same N).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// After SIGTERM on loss, SIGKILL after DURATION.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    kill_after: Duration,
    /// The lock id, for an id that starts with `-` (then every positional word is COMMAND).
    #[arg(long = "id", value_name = "ID", allow_hyphen_values = true)]
    id_option: Option<OsString>,
    /// The lock id (UTF-8).
    #[arg(value_name = "ID")]
    id: Option<OsString>,
    /// The command and its arguments (after `--`, or after ID).
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct ElectArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Give up campaigning after DURATION (exit 124).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    timeout: Option<Duration>,
    /// After SIGTERM on loss, SIGKILL after DURATION.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    kill_after: Duration,
    /// The election's name (UTF-8).
    #[arg(value_name = "NAME")]
    name: OsString,
    /// What others see as the leader's value while this command leads (UTF-8).
    #[arg(value_name = "VALUE")]
    value: OsString,
    /// The command and its arguments (after `--`).
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct ObserveArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The election's name (UTF-8).
    #[arg(value_name = "NAME")]
    name: OsString,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The lock id, for an id that starts with `-`.
    #[arg(
        long = "id",
        value_name = "ID",
        allow_hyphen_values = true,
        conflicts_with = "id"
    )]
    id_option: Option<OsString>,
    /// The lock id (UTF-8).
    #[arg(value_name = "ID", required_unless_present = "id_option")]
    id: Option<OsString>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Common {
    pub(crate) service: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) ttl: Duration,
    pub(crate) verbose: u8,
}

/// What `lock exec` (or `lock elect`) holds while the command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hold {
    /// The lock.
    Lock,
    /// One of the semaphore's permits (`--limit N`).
    Permit(u32),
    /// The election's leadership, campaigning with this value.
    Leader(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Exec {
        common: Common,
        id: String,
        hold: Hold,
        timeout: Option<Duration>,
        try_only: bool,
        kill_after: Duration,
        command: Vec<OsString>,
    },
    Observe {
        common: Common,
        name: String,
    },
    Status {
        common: Common,
        id: String,
    },
    Completions(Shell),
}

/// What to print and the exit status, when parsing ends the program (help, version, errors).
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) status: u8,
    /// Printed by `clap` itself (help to stdout, errors to stderr), else `message` on stderr.
    clap: Option<clap::Error>,
    message: String,
}

impl Exit {
    fn usage(message: impl Into<String>) -> Self {
        Exit {
            status: exit::USAGE,
            clap: None,
            message: message.into(),
        }
    }

    /// Prints what it says, where it belongs.
    pub(crate) fn print(&self) {
        match &self.clap {
            Some(e) => drop(e.print()),
            None => eprintln!("lock: {}", self.message),
        }
    }

    /// The message, for tests.
    #[cfg(test)]
    fn text(&self) -> String {
        match &self.clap {
            Some(e) => e.render().to_string(),
            None => self.message.clone(),
        }
    }
}

fn duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be greater than zero".to_owned()),
        Err(e) => Err(format!(
            "`{value}` is not a duration like 10s or 500ms ({e})"
        )),
    }
}

/// `what` as UTF-8, or a usage error naming it and showing it.
pub(crate) fn utf8(what: &str, value: OsString) -> Result<String, String> {
    value
        .into_string()
        .map_err(|raw| format!("{what} {raw:?} is not valid UTF-8 (it must be)"))
}

/// A connection string as UTF-8, or a usage error naming `what` and showing the string with
/// its credentials and secret options redacted.
pub(crate) fn utf8_uri(what: &str, value: OsString) -> Result<String, String> {
    value.into_string().map_err(|raw| {
        let shown = lock::backend::redact_uri(&raw.to_string_lossy());
        format!("{what} is not valid UTF-8 (it must be): {shown:?}")
    })
}

impl CommonArgs {
    fn into_common(self, verbose: u8) -> Result<Common, Exit> {
        let service = self
            .service
            .map(|s| utf8_uri("--service", s))
            .transpose()
            .map_err(Exit::usage)?;
        Ok(Common {
            service,
            password_file: self.password_file,
            ttl: self.ttl,
            verbose,
        })
    }
}

/// The clap definition, for completions and the help test.
pub(crate) fn definition() -> clap::Command {
    Cli::command()
}

/// Parses the whole command line (program name first).
pub(crate) fn parse<I, T>(args: I) -> Result<Command, Exit>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| {
        use clap::error::ErrorKind;
        let status = match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
            _ => exit::USAGE,
        };
        Exit {
            status,
            clap: Some(e),
            message: String::new(),
        }
    })?;
    let verbose = cli.verbose;
    match cli.command {
        Sub::Completions { shell } => Ok(Command::Completions(shell)),
        Sub::Status(args) => {
            let id = args
                .id_option
                .or(args.id)
                .ok_or_else(|| Exit::usage("lock status needs a lock ID"))?;
            Ok(Command::Status {
                common: args.common.into_common(verbose)?,
                id: utf8("the lock id", id).map_err(Exit::usage)?,
            })
        }
        Sub::Elect(args) => {
            let name = utf8("the election name", args.name).map_err(Exit::usage)?;
            let value = utf8("the value", args.value).map_err(Exit::usage)?;
            if args.command.is_empty() {
                return Err(Exit::usage(format!(
                    "lock elect {name} {value}: no command to run after `--`"
                )));
            }
            Ok(Command::Exec {
                common: args.common.into_common(verbose)?,
                id: name,
                hold: Hold::Leader(value),
                timeout: args.timeout,
                try_only: false,
                kill_after: args.kill_after,
                command: args.command,
            })
        }
        Sub::Observe(args) => Ok(Command::Observe {
            common: args.common.into_common(verbose)?,
            name: utf8("the election name", args.name).map_err(Exit::usage)?,
        }),
        Sub::Exec(args) => {
            let mut command = args.command;
            let id = match args.id_option {
                Some(id) => {
                    // With --id, every positional word is the command's.
                    if let Some(first) = args.id {
                        command.insert(0, first);
                    }
                    Some(id)
                }
                None => args.id,
            };
            let id = id.ok_or_else(|| {
                Exit::usage("lock exec needs a lock ID and a command: lock exec ID -- COMMAND")
            })?;
            let id = utf8("the lock id", id).map_err(Exit::usage)?;
            if command.is_empty() {
                return Err(Exit::usage(format!(
                    "lock exec {id}: no command to run after `--`"
                )));
            }
            Ok(Command::Exec {
                common: args.common.into_common(verbose)?,
                id,
                hold: args.limit.map_or(Hold::Lock, Hold::Permit),
                timeout: args.timeout,
                try_only: args.try_only,
                kill_after: args.kill_after,
                command,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Command, Exit> {
        parse(std::iter::once("lock").chain(line.split_whitespace()))
    }

    #[test]
    fn the_definition_is_consistent() {
        definition().debug_assert();
    }

    #[test]
    fn exec_forms() {
        let Ok(Command::Exec { common, id, hold, timeout, try_only, kill_after, command }) =
            parse_str("-v exec --service etcd:http://h:1 --ttl 5s --timeout=30s --try --kill-after 2s job -- sh -c x")
        else {
            panic!()
        };
        assert_eq!(hold, Hold::Lock);
        assert_eq!(common.service.as_deref(), Some("etcd:http://h:1"));
        assert_eq!((common.ttl, common.verbose), (Duration::from_secs(5), 1));
        assert_eq!(
            (id.as_str(), timeout, try_only),
            ("job", Some(Duration::from_secs(30)), true)
        );
        assert_eq!(kill_after, Duration::from_secs(2));
        assert_eq!(command, ["sh", "-c", "x"]);
        let Ok(Command::Exec { command, .. }) = parse_str("exec job true --flag") else {
            panic!()
        };
        assert_eq!(
            command,
            ["true", "--flag"],
            "options after the command belong to it"
        );
        let Ok(Command::Exec {
            id,
            command,
            common,
            ..
        }) = parse_str("exec -vv --id -odd -- true -x")
        else {
            panic!()
        };
        assert_eq!((id.as_str(), common.verbose), ("-odd", 2));
        assert_eq!(command, ["true", "-x"]);
        let Ok(Command::Status { id, .. }) = parse_str("status --id=-odd") else {
            panic!()
        };
        assert_eq!(id, "-odd");
        let Ok(Command::Exec { hold, .. }) = parse_str("exec --limit 4 renders -- true") else {
            panic!()
        };
        assert_eq!(hold, Hold::Permit(4));
        let Ok(Command::Exec {
            id, hold, command, ..
        }) = parse_str("elect --timeout 5s leader 10.0.0.7:80 -- ./serve --port 80")
        else {
            panic!()
        };
        assert_eq!(
            (id.as_str(), hold),
            ("leader", Hold::Leader("10.0.0.7:80".into()))
        );
        assert_eq!(command, ["./serve", "--port", "80"]);
        let Ok(Command::Observe { name, .. }) = parse_str("observe leader") else {
            panic!()
        };
        assert_eq!(name, "leader");
    }

    #[test]
    fn ids_and_arguments_are_os_strings() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(b"bad\xff".to_vec());
        let args: Vec<OsString> = vec![
            "lock".into(),
            "exec".into(),
            bad.clone(),
            "--".into(),
            "true".into(),
        ];
        let err = parse(args).unwrap_err();
        assert_eq!(err.status, exit::USAGE);
        assert!(err.text().contains("not valid UTF-8"), "{}", err.text());
        let args: Vec<OsString> = vec![
            "lock".into(),
            "exec".into(),
            "ok".into(),
            "--".into(),
            "printf".into(),
            bad.clone(),
        ];
        let Ok(Command::Exec { command, .. }) = parse(args) else {
            panic!()
        };
        assert_eq!(command[1], bad, "a command's argument is passed as it is");
        let args: Vec<OsString> = vec![
            "lock".into(),
            "exec".into(),
            "--service".into(),
            bad,
            "x".into(),
            "--".into(),
            "true".into(),
        ];
        assert_eq!(parse(args).unwrap_err().status, exit::USAGE);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (line, says) in [
            ("exec", "needs a lock ID"),
            ("exec job --", "no command"),
            ("exec --ttl soon job -- x", "not a duration"),
            ("exec --ttl 0s job -- x", "greater than zero"),
            ("exec --bogus job -- x", "--bogus"),
            ("status", "ID"),
            ("status --try x", "--try"),
            ("exec --limit 0 job -- x", "--limit"),
            ("elect leader", "VALUE"),
            ("elect leader me --", "no command"),
            ("observe", "NAME"),
            ("frobnicate", "frobnicate"),
            ("exce job -- x", "exec"), // a typo: the suggestion names the command
        ] {
            let err = parse_str(line).unwrap_err();
            assert_eq!(err.status, exit::USAGE, "{line}: {}", err.text());
            assert!(err.text().contains(says), "{line}: {}", err.text());
        }
        for line in ["", "--help", "exec --help", "help exec", "--version"] {
            assert_eq!(parse_str(line).unwrap_err().status, 0, "{line}");
        }
    }

    #[test]
    fn help_keeps_what_it_always_said() {
        let help = definition().render_long_help().to_string();
        for says in [
            "EXIT STATUS",
            "LOCK_SERVICE",
            "DURATIONS",
            "EXAMPLE",
            "125",
            "130  Ctrl-C",
        ] {
            assert!(help.contains(says), "lock --help lacks {says}: {help}");
        }
        let mut exec = definition();
        let exec = exec
            .find_subcommand_mut("exec")
            .unwrap()
            .render_long_help()
            .to_string();
        for says in [
            "LOCK_FENCING_TOKEN",
            "SIGSTOP",
            "--kill-after",
            "--id",
            "EXIT STATUS",
            "exits with 125",
            "130 or 143",
        ] {
            assert!(exec.contains(says), "lock help exec lacks {says}: {exec}");
        }
    }
}
