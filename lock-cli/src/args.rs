//! Command-line parsing (by hand: the grammar is small, and `--` must end option parsing).

use std::path::PathBuf;
use std::time::Duration;

pub(crate) const HELP: &str = "\
lock — run commands under a distributed lock

USAGE:
    lock [-v|-vv] exec [OPTIONS] ID -- COMMAND [ARGS...]
    lock [-v|-vv] status [OPTIONS] ID
    lock --help | --version

exec: take lock ID, run COMMAND while holding it, release it when COMMAND exits, and exit
with COMMAND's status. COMMAND gets the lock's fencing token in LOCK_FENCING_TOKEN (and the
id in LOCK_ID): pass it along with every write to the resource the lock protects. If the lock
is lost while COMMAND runs (lease expired, partition, key deleted), COMMAND's process group
(COMMAND and what it started) gets SIGTERM, then SIGKILL after --kill-after, and lock exits
with 125; so does Ctrl-C. If lock itself is killed with SIGKILL, or stopped (SIGSTOP, a frozen
machine), COMMAND keeps running unguarded (the lock frees after the TTL): only the fencing
token can stop its late writes.

status: show who holds lock ID (lease, fencing token, since when, host and pid) and how many
wait (etcd backend).

OPTIONS:
    --service URI          the lock service, e.g. etcd:http://127.0.0.1:2379 (env LOCK_SERVICE)
    --ttl DURATION         session TTL: how long the lock survives without keep-alives [10s]
    --timeout DURATION     exec: give up waiting after DURATION (exit 124)
    --try                  exec: fail at once if the lock is held (exit 75)
    --kill-after DURATION  exec: after SIGTERM on loss, SIGKILL after DURATION [10s]
    --password-file PATH   read the etcd password from PATH (env LOCK_PASSWORD_FILE); the
                           password may also come from LOCK_PASSWORD; it is never printed
    -v, --verbose          log to stderr (-vv: more); RUST_LOG works too
    -h, --help             this text
    -V, --version          the version

DURATIONS: 500ms, 10s, 2m, 1h 30m.

EXIT STATUS (exec):
    COMMAND's status (128+N if it was killed by signal N), or
    64   usage error (bad option, no service)
    69   the lock service cannot be reached or refused us
    75   --try: the lock is held by someone else
    124  --timeout: the lock was not granted in time
    125  the lock was lost while COMMAND ran; COMMAND was terminated
    126  COMMAND cannot be executed
    127  COMMAND was not found

EXAMPLE:
    export LOCK_SERVICE=etcd:http://127.0.0.1:2379
    lock exec --ttl 10s nightly-report -- ./report.sh --date today
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Common {
    pub(crate) service: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) ttl: Duration,
    pub(crate) verbose: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Help,
    Version,
    Exec {
        common: Common,
        id: String,
        timeout: Option<Duration>,
        try_only: bool,
        kill_after: Duration,
        command: Vec<String>,
    },
    Status {
        common: Common,
        id: String,
    },
}

fn duration(flag: &str, value: Option<String>) -> Result<Duration, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    match humantime::parse_duration(&value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{flag} must be greater than zero")),
        Err(e) => Err(format!(
            "{flag}: `{value}` is not a duration like 10s or 500ms ({e})"
        )),
    }
}

/// Parses everything after the program name.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter().peekable();
    let mut verbose = 0;
    let sub = loop {
        match args.next().as_deref() {
            None | Some("-h" | "--help" | "help") => return Ok(Command::Help),
            Some("-V" | "--version") => return Ok(Command::Version),
            Some("-v" | "--verbose") => verbose += 1,
            Some("-vv") => verbose += 2,
            Some(s @ ("exec" | "status")) => break s.to_owned(),
            Some(other) => return Err(format!("unknown command `{other}`; try `lock --help`")),
        }
    };
    let mut common = Common {
        service: None,
        password_file: None,
        ttl: Duration::from_secs(10),
        verbose,
    };
    let (mut timeout, mut try_only, mut kill_after) = (None, false, Duration::from_secs(10));
    let mut id = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next());
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-v" | "--verbose" => common.verbose += 1,
            "-vv" => common.verbose += 2,
            "--service" => common.service = Some(value().ok_or("--service needs a value")?),
            "--password-file" => {
                common.password_file = Some(value().ok_or("--password-file needs a value")?.into())
            }
            "--ttl" => common.ttl = duration("--ttl", value())?,
            "--timeout" if sub == "exec" => timeout = Some(duration("--timeout", value())?),
            "--kill-after" if sub == "exec" => kill_after = duration("--kill-after", value())?,
            "--try" if sub == "exec" => try_only = true,
            "--" if sub == "exec" => break,
            f if f.starts_with('-') && f.len() > 1 && id.is_none() => {
                return Err(format!(
                    "unknown option `{f}` for `lock {sub}`; try `lock --help`"
                ))
            }
            _ if id.is_none() => id = Some(arg),
            _ if sub == "exec" => {
                // `lock exec ID COMMAND…` without `--`.
                let mut command = vec![arg];
                command.extend(args.by_ref());
                return exec(common, id, timeout, try_only, kill_after, command);
            }
            _ => return Err(format!("unexpected argument `{arg}`; try `lock --help`")),
        }
    }
    match sub.as_str() {
        "exec" => exec(common, id, timeout, try_only, kill_after, args.collect()),
        _ => Ok(Command::Status {
            common,
            id: id.ok_or("lock status needs a lock ID")?,
        }),
    }
}

fn exec(
    common: Common,
    id: Option<String>,
    timeout: Option<Duration>,
    try_only: bool,
    kill_after: Duration,
    command: Vec<String>,
) -> Result<Command, String> {
    let id = id.ok_or("lock exec needs a lock ID and a command: lock exec ID -- COMMAND")?;
    if command.is_empty() {
        return Err(format!("lock exec {id}: no command to run after `--`"));
    }
    Ok(Command::Exec {
        common,
        id,
        timeout,
        try_only,
        kill_after,
        command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Command, String> {
        parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn exec_forms() {
        let Ok(Command::Exec { common, id, timeout, try_only, kill_after, command }) =
            parse_str("-v exec --service etcd:http://h:1 --ttl 5s --timeout=30s --try --kill-after 2s job -- sh -c x")
        else {
            panic!()
        };
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
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (line, says) in [
            ("exec", "needs a lock ID"),
            ("exec job --", "no command"),
            ("exec --ttl soon job -- x", "not a duration"),
            ("exec --ttl 0s job -- x", "greater than zero"),
            ("exec --bogus job -- x", "unknown option `--bogus`"),
            ("status", "needs a lock ID"),
            ("status --try x", "unknown option `--try`"),
            ("frobnicate", "unknown command"),
        ] {
            let err = parse_str(line).unwrap_err();
            assert!(err.contains(says), "{line}: {err}");
        }
        assert_eq!(parse_str("").unwrap(), Command::Help);
        assert_eq!(parse_str("exec --help").unwrap(), Command::Help);
    }
}
