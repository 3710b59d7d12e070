//! Connecting to the cluster as the connection string says.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use lock_core::{Error, Result};

use crate::config::{EtcdConfig, OLDEST_SUPPORTED_VERSION};
use crate::error::{etcd_error, request, timeout_error};
use crate::health::Probes;

/// HTTP/2 keep-alive pings are on by default, every `request-timeout`, each allowed twice
/// that for its answer: a backstop that closes a connection nobody answers on any more (the
/// streams on it then move elsewhere), generous enough for a slow network that still works.
/// The health probes ([`crate::health`]) find a silent member much sooner.
/// `dial-keep-alive-time` and `dial-keep-alive-timeout` override this.
fn keep_alive(config: &EtcdConfig) -> (Duration, Duration) {
    (
        config
            .dial_keep_alive_time
            .unwrap_or(config.request_timeout),
        config
            .dial_keep_alive_timeout
            .unwrap_or(2 * config.request_timeout),
    )
}

fn read(option: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::InvalidConnectionString(format!(
            "option `{option}`: cannot read `{}`: {e}",
            path.display()
        ))
    })
}

fn options(config: &EtcdConfig) -> Result<ConnectOptions> {
    let (time, timeout) = keep_alive(config);
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.dial_timeout)
        .with_keep_alive(time, timeout)
        .with_keep_alive_while_idle(true);
    if let Some(user) = &config.username {
        let password = config.password().map_or("", |p| p.expose());
        options = options.with_user(user.clone(), password.to_owned());
    }
    if let Some(files) = &config.tls {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &files.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read("ca-file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&files.cert_file, &files.key_file) {
            tls = tls.identity(Identity::from_pem(
                read("cert-file", cert)?,
                read("key-file", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

/// Proves which endpoints answer (within `dial-timeout`), then connects to those; the
/// returned probes keep watching every endpoint (see [`crate::health`]).
pub(crate) async fn connect(config: &EtcdConfig) -> Result<(Client, Probes)> {
    let options = options(config)?;
    let limit = config.dial_timeout;
    let start = tokio::time::Instant::now();
    let probes = Probes::new(&config.endpoints, &options, &config.prefix, limit).await?;
    let answering = probes
        .answering(limit.saturating_sub(start.elapsed()), limit)
        .await?;
    // What is left of `dial-timeout` (the endpoints just answered, so this is quick).
    let left = limit
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(100));
    let connecting = Client::connect(&answering, Some(options));
    let client = match tokio::time::timeout(left, connecting).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(etcd_error("connecting to etcd", e)),
        Err(_) => return Err(timeout_error("connecting to etcd", limit)),
    };
    if config.reject_old_cluster {
        let maintenance = client.maintenance_client();
        let status = request("asking the cluster's version", limit, || {
            let mut maintenance = maintenance.clone();
            async move { maintenance.status().await }
        })
        .await?;
        check_version(status.version())?;
    }
    Ok((client, probes))
}

fn check_version(version: &str) -> Result<()> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let parsed = (parts.next().flatten(), parts.next().flatten());
    match parsed {
        (Some(major), Some(minor)) if (major, minor) >= OLDEST_SUPPORTED_VERSION => Ok(()),
        _ => Err(Error::backend(
            crate::SERVICE_ETCD,
            format!(
                "the etcd cluster runs version {version}, older than {}.{} (reject-old-cluster=true)",
                OLDEST_SUPPORTED_VERSION.0, OLDEST_SUPPORTED_VERSION.1
            ),
        )),
    }
}

/// Refreshes the client's endpoints from the member list every `interval`, like etcd's Go
/// client's `AutoSyncInterval`.
pub(crate) async fn auto_sync(
    client: Client,
    endpoints: Arc<Mutex<BTreeSet<String>>>,
    interval: Duration,
    limit: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let mut cluster = client.cluster_client();
        let Ok(Ok(resp)) = tokio::time::timeout(limit, cluster.member_list()).await else {
            continue;
        };
        let current: BTreeSet<String> = resp
            .members()
            .iter()
            .flat_map(|m| m.client_urls().iter().cloned())
            .collect();
        if current.is_empty() {
            continue;
        }
        let known = endpoints.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for url in current.difference(&known) {
            if client.add_endpoint(url).await.is_ok() {
                endpoints
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(url.clone());
            }
        }
        for url in known.difference(&current) {
            if client.remove_endpoint(url).await.is_ok() {
                endpoints
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(url);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_are_compared_numerically() {
        assert!(super::check_version("3.5.1").is_ok());
        assert!(super::check_version("3.10.0").is_ok());
        assert!(super::check_version("4.0.0").is_ok());
        assert!(super::check_version("3.3.27").is_err());
        assert!(super::check_version("2.3.8").is_err());
        assert!(super::check_version("garbage").is_err());
    }
}
