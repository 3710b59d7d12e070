//! TLS: certificates made at test time; `https://` endpoints with `ca-file`/`cert-file`/
//! `key-file` work; a client that trusts another CA is rejected.

mod common;

use std::path::Path;
use std::time::Duration;

use lock_core::{Error, SessionConfig};
use lock_tools::etcd::{ClusterSpec, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// Writes `<name>.pem` and `<name>-key.pem` for a leaf certificate valid for 127.0.0.1.
    fn leaf(&self, dir: &Path, name: &str) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.issuer.pem()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let dir = std::env::temp_dir().join(common::unique_prefix("tls").trim_end_matches('/'));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("lock test CA");
    ca.write(&dir.join("ca.pem"));
    ca.leaf(&dir, "server");
    ca.leaf(&dir, "client");
    Ca::new("some other CA").write(&dir.join("other-ca.pem"));

    let spec = ClusterSpec {
        nodes: 1,
        tls: Some(ServerTls {
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server-key.pem"),
            client_ca_file: Some(dir.join("ca.pem")),
        }),
        ..ClusterSpec::default()
    };
    let Some(cluster) = common::own_cluster("tls_with_client_certificates", spec) else {
        return;
    };
    assert!(cluster.endpoints().starts_with("https://"));
    use lock_etcd as _;
    let files = |ca: &str| {
        format!(
            "etcd:{}?ca-file={}&cert-file={}&key-file={}&dial-timeout=5s",
            cluster.endpoints(),
            dir.join(ca).display(),
            dir.join("client.pem").display(),
            dir.join("client-key.pem").display()
        )
    };

    let service = lock_core::new(&files("ca.pem")).await.unwrap();
    let session = service
        .new_session(SessionConfig::new(Duration::from_secs(5)))
        .await
        .unwrap();
    let mut locker = session.new_locker("tls");
    let _held = locker.lock().await.unwrap();
    locker.unlock().await.unwrap();
    service.close().await.unwrap();

    let err = lock_core::new(&files("other-ca.pem")).await.unwrap_err();
    assert!(
        matches!(err, Error::Backend { .. }),
        "a wrong CA must be rejected: {err:?}"
    );

    let missing = format!(
        "etcd:{}?ca-file={}",
        cluster.endpoints(),
        dir.join("nope.pem").display()
    );
    let err = lock_core::new(&missing).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidConnectionString(ref m) if m.contains("ca-file")),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
