//! No secret in any output: the etcd password given every way `lock` takes one (environment,
//! a password file, the connection string's option, credentials inside an endpoint), right,
//! wrong, empty, with special characters or not valid UTF-8, run at `-vv` and with
//! `RUST_LOG=trace`, against a real etcd cluster with authentication enabled. Neither the
//! secret nor any piece of it longer than three bytes may appear on stdout or stderr; a refused
//! input is a usage error (64) that names the input, a refused password is 69.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command, Output};

use lock_tools::etcd::{binaries, Cluster, ClusterSpec};

const LOCK: &str = env!("CARGO_BIN_EXE_lock");
const USER: &str = "app";
/// The right password: special characters a connection string must percent-encode.
const RIGHT: &[u8] = b"Rt9#kQ2!v&Lx7=Wm%q+Zs";

/// How a password reaches `lock`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    /// `LOCK_PASSWORD`.
    Env,
    /// A file named by `LOCK_PASSWORD_FILE`.
    EnvFile,
    /// A file named by `--password-file`.
    FileFlag,
    /// `password=` in `LOCK_SERVICE`, percent-encoded.
    UriEncoded,
    /// `password=` in `--service`, written raw (not percent-encoded, as a hurried user does).
    UriRaw,
    /// `http://app:PASSWORD@host:port` in `LOCK_SERVICE`.
    Userinfo,
}

const SOURCES: [Source; 6] = [
    Source::Env,
    Source::EnvFile,
    Source::FileFlag,
    Source::UriEncoded,
    Source::UriRaw,
    Source::Userinfo,
];

/// A password, and the exit statuses it may end with.
struct Case {
    name: &'static str,
    secret: &'static [u8],
    /// The statuses that are right for it (the service refuses a wrong password: 69; `lock`
    /// refuses an input it cannot use: 64).
    exits: &'static [i32],
}

const CASES: [Case; 5] = [
    Case {
        name: "right, with special characters",
        secret: RIGHT,
        exits: &[0, 64],
    },
    Case {
        name: "wrong",
        secret: b"Wz4hT8pNq3Yb-Xj7",
        exits: &[69, 64],
    },
    Case {
        name: "wrong, with special characters",
        secret: b"Pk5&Vd=2% #Hq+;'\"\\Gw",
        exits: &[69, 64],
    },
    Case {
        name: "not valid UTF-8",
        secret: b"\xffLt1nZq8vKw3\xe9",
        exits: &[64],
    },
    Case {
        name: "empty",
        secret: b"",
        exits: &[64],
    },
];

fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The byte strings of `secret` that must not appear: every piece longer than three bytes of
/// the secret itself and of the percent-encoded form a connection string carries.
fn pieces(secret: &[u8]) -> Vec<Vec<u8>> {
    let encoded = percent_encode(secret).into_bytes();
    let mut pieces = Vec::new();
    for form in [secret, &encoded[..]] {
        pieces.extend(form.windows(4).map(<[u8]>::to_vec));
    }
    pieces
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs `lock ARGS` with `secret` given through `source`, at verbosity `loud` (`-vv`) or
/// with `RUST_LOG=trace`.
fn run(
    endpoint: &str,
    dir: &Path,
    source: Source,
    secret: &[u8],
    args: &[&str],
    loud: bool,
) -> Output {
    let mut cmd = Command::new(LOCK);
    cmd.env_remove("LOCK_SERVICE")
        .env_remove("LOCK_PASSWORD")
        .env_remove("LOCK_PASSWORD_FILE")
        .env_remove("RUST_LOG");
    let base = format!("etcd:{endpoint}?prefix=pwtest/&dial-timeout=2s");
    let with_user = format!("{base}&username={USER}");
    let file = dir.join("pw.txt");
    let mut service: OsString = with_user.clone().into();
    let mut service_flag = false;
    match source {
        Source::Env => {
            cmd.env("LOCK_PASSWORD", OsString::from_vec(secret.to_vec()));
        }
        Source::EnvFile | Source::FileFlag => {
            let mut text = secret.to_vec();
            text.push(b'\n');
            std::fs::write(&file, text).unwrap();
            if source == Source::EnvFile {
                cmd.env("LOCK_PASSWORD_FILE", &file);
            }
        }
        Source::UriEncoded => {
            service = format!("{with_user}&password={}", percent_encode(secret)).into();
        }
        Source::UriRaw => {
            let mut raw = format!("{with_user}&password=").into_bytes();
            raw.extend_from_slice(secret);
            service = OsString::from_vec(raw);
            service_flag = true;
        }
        Source::Userinfo => {
            let mut raw = format!("etcd:http://{USER}:").into_bytes();
            raw.extend_from_slice(secret);
            raw.push(b'@');
            raw.extend_from_slice(endpoint.trim_start_matches("http://").as_bytes());
            raw.extend_from_slice(b"?prefix=pwtest/&dial-timeout=2s");
            service = OsString::from_vec(raw);
        }
    }
    let (command, rest) = args.split_first().unwrap();
    cmd.arg(command);
    if loud {
        cmd.arg("-vv");
    } else {
        cmd.env("RUST_LOG", "trace");
    }
    if service_flag {
        cmd.arg("--service").arg(&service);
    } else {
        cmd.env("LOCK_SERVICE", &service);
    }
    if source == Source::FileFlag {
        cmd.arg("--password-file").arg(&file);
    }
    cmd.args(rest);
    cmd.output().unwrap()
}

#[test]
fn no_password_appears_in_any_output() {
    let Some(bins) = binaries("no_password_appears_in_any_output") else {
        return;
    };
    let spec = ClusterSpec {
        nodes: 1,
        ..ClusterSpec::default()
    };
    let cluster = Cluster::start(&bins, &spec).unwrap();
    let ctl = |args: &[&str]| {
        cluster
            .etcdctl(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    };
    let right = std::str::from_utf8(RIGHT).unwrap();
    ctl(&["user", "add", "root", "--new-user-password=r00t-pw"]);
    ctl(&["role", "add", "locker"]);
    ctl(&[
        "role",
        "grant-permission",
        "locker",
        "--prefix=true",
        "readwrite",
        "pwtest/",
    ]);
    ctl(&["user", "add", USER, &format!("--new-user-password={right}")]);
    ctl(&["user", "grant-role", USER, "locker"]);
    ctl(&["auth", "enable"]);
    let endpoint = cluster.endpoints();
    let dir = std::env::temp_dir().join(format!("lock-cli-pwtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let mut failures = Vec::new();
    let mut right_worked = 0;
    for case in &CASES {
        let pieces = pieces(case.secret);
        for source in SOURCES {
            for (args, loud) in [
                (&["exec", "sec", "--", "true"][..], true),
                (&["exec", "sec", "--", "true"][..], false),
                (&["status", "sec"][..], true),
            ] {
                let out = run(&endpoint, &dir, source, case.secret, args, loud);
                let all = [&out.stdout[..], &out.stderr[..]].concat();
                let text = String::from_utf8_lossy(&all);
                let what = format!(
                    "{} password from {source:?}, `lock {}` {}",
                    case.name,
                    args.join(" "),
                    if loud { "-vv" } else { "RUST_LOG=trace" }
                );
                if let Some(piece) = pieces.iter().find(|p| contains(&all, p)) {
                    failures.push(format!(
                        "{what}: printed {:?}, a piece of the secret:\n{}",
                        String::from_utf8_lossy(piece),
                        text.lines()
                            .filter(|l| contains(l.as_bytes(), piece))
                            .take(3)
                            .collect::<Vec<_>>()
                            .join("\n")
                    ));
                }
                let code = out.status.code().unwrap_or(-1);
                if !case.exits.contains(&code) {
                    failures.push(format!(
                        "{what}: exit {code}, expected one of {:?}; stderr ends:\n{}",
                        case.exits,
                        text.lines().rev().take(3).collect::<Vec<_>>().join("\n")
                    ));
                }
                if code == 64 && !text.contains("lock: ") {
                    failures.push(format!("{what}: exit 64 without a message"));
                }
                if case.secret == RIGHT && code == 0 {
                    right_worked += 1;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The right password must really work from the sources meant for it: environment, files,
    // the percent-encoded option (three runs each).
    assert!(
        right_worked >= 12,
        "the right password worked in {right_worked} runs only"
    );
}

#[test]
fn a_ttl_beyond_etcds_largest_is_refused_before_connecting() {
    // Port 1 on loopback: nothing listens, so contacting etcd would fail with 69.
    let out = Command::new(LOCK)
        .env_remove("RUST_LOG")
        .env("LOCK_SERVICE", "etcd:http://127.0.0.1:1?dial-timeout=5s")
        .args(["exec", "--ttl", "100000000h", "x", "--", "true"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(
        text.contains("9000000000") || text.contains("largest"),
        "the message names the limit: {text}"
    );
}
