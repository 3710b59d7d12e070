//! Opening the lock service from `--service`/`LOCK_SERVICE`, with the password from a file or
//! the environment.

use lock::backend::ConnectionString;
use lock::etcd::{EtcdConfig, EtcdService};
use lock::Service;

use crate::args::Common;
use crate::{exit, Failure};

/// The opened service; `etcd` is set for the etcd backend (for `status` and queue positions).
pub(crate) struct Opened {
    pub(crate) service: Service,
    pub(crate) etcd: Option<EtcdService>,
}

fn password(common: &Common) -> Result<Option<String>, Failure> {
    let file = common
        .password_file
        .clone()
        .or_else(|| std::env::var_os("LOCK_PASSWORD_FILE").map(Into::into));
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Failure::new(
                exit::USAGE,
                format!("cannot read the password file {}: {e}", path.display()),
            )
        })?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    env("LOCK_PASSWORD")
}

/// An environment variable, if set; one that is not UTF-8 is a usage error (not "unset").
fn env(name: &str) -> Result<Option<String>, Failure> {
    std::env::var_os(name)
        .map(|value| crate::args::utf8(name, value))
        .transpose()
        .map_err(|message| Failure::new(exit::USAGE, message))
}

pub(crate) async fn open(common: &Common) -> Result<Opened, Failure> {
    let uri = match &common.service {
        Some(uri) => Some(uri.clone()),
        None => env("LOCK_SERVICE")?,
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
    let mut config =
        EtcdConfig::parse(&cs).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
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
        service: Service::from_backend(etcd.clone()),
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
    Failure::new(status, e.to_string())
}
