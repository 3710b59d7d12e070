//! Opening the lock service from `--service`/`LOCK_SERVICE`, with the password from a file or
//! the environment.

use std::os::unix::ffi::OsStringExt;

use lock::backend::{ConnectionString, Secret};
use lock::etcd::{EtcdConfig, EtcdService};
use lock::{Service, SessionConfig};

use crate::args::Common;
use crate::{exit, Failure};

/// The opened service; `etcd` is set for the etcd backend (for `status` and queue positions).
pub(crate) struct Opened {
    pub(crate) service: Service,
    pub(crate) etcd: Option<EtcdService>,
}

/// The password from `--password-file`, `LOCK_PASSWORD_FILE` or `LOCK_PASSWORD`, if any. A
/// password that cannot be used (empty, not UTF-8) is a usage error that names where it came
/// from and never shows it.
fn password(common: &Common) -> Result<Option<Secret>, Failure> {
    let file = common
        .password_file
        .clone()
        .or_else(|| std::env::var_os("LOCK_PASSWORD_FILE").map(Into::into));
    let (what, mut bytes) = match file {
        Some(path) => {
            let bytes = std::fs::read(&path).map_err(|e| {
                Failure::new(
                    exit::USAGE,
                    format!("cannot read the password file {}: {e}", path.display()),
                )
            })?;
            (format!("the password file {}", path.display()), bytes)
        }
        None => match std::env::var_os("LOCK_PASSWORD") {
            Some(value) => ("LOCK_PASSWORD".to_owned(), value.into_vec()),
            None => return Ok(None),
        },
    };
    while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        bytes.pop();
    }
    Secret::from_bytes(&what, bytes)
        .map(Some)
        .map_err(|e| Failure::new(exit::USAGE, e.to_string()))
}

pub(crate) async fn open(common: &Common) -> Result<Opened, Failure> {
    let uri = match &common.service {
        Some(uri) => Some(uri.clone()),
        None => std::env::var_os("LOCK_SERVICE")
            .map(|value| crate::args::utf8_uri("LOCK_SERVICE", value))
            .transpose()
            .map_err(|message| Failure::new(exit::USAGE, message))?,
    };
    let uri = uri.ok_or_else(|| {
        Failure::new(
            exit::USAGE,
            "no lock service: pass --service etcd:http://HOST:2379 or set LOCK_SERVICE \
                 (an in-process `local:` lock would not exclude other processes)",
        )
    })?;
    let cs = ConnectionString::parse(&uri).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    if cs.scheme() == "local" {
        tracing::warn!("`local:` locks exist only inside this process: they exclude nobody else");
    }
    if cs.scheme() != lock::etcd::SERVICE_ETCD {
        let service = lock::new(&uri).await.map_err(unavailable)?;
        return Ok(Opened {
            service,
            etcd: None,
        });
    }
    let usage = |e: lock::Error| Failure::new(exit::USAGE, e.report().to_string());
    let mut config = EtcdConfig::parse(&cs).map_err(usage)?;
    // Before connecting: a TTL etcd cannot grant is the user's to fix, not the service's.
    EtcdService::check_session_config(&SessionConfig::new(common.ttl)).map_err(usage)?;
    if let Some(password) = password(common)? {
        if config.username.is_none() {
            return Err(Failure::new(
                exit::USAGE,
                "a password was given but the service has no username=",
            ));
        }
        config.set_password(Some(password));
    }
    let etcd = EtcdService::connect(config).await.map_err(unavailable)?;
    Ok(Opened {
        service: lock::backend::service(etcd.clone()),
        etcd: Some(etcd),
    })
}

pub(crate) fn unavailable(e: lock::Error) -> Failure {
    let status = match e {
        lock::Error::InvalidConnectionString(_)
        | lock::Error::UnsupportedService { .. }
        | lock::Error::InvalidConfig(_)
        | lock::Error::InvalidId(_) => exit::USAGE,
        _ => exit::UNAVAILABLE,
    };
    Failure::new(status, e.report().to_string())
}
