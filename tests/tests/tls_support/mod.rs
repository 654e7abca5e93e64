//! Certificate fixtures of the tests against an upstream with TLS (`security_tls.rs`, `cdc_tls.rs`): a CA
//! generated with rcgen, the shared cluster serving a certificate it issued for 127.0.0.1, a client
//! certificate of the same CA, and an unrelated CA.

#![allow(dead_code)]

use std::path::PathBuf;

use dualwrite_tests::TestCluster;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::sync::OnceCell;

/// A self-signed CA named `name`.
pub fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

/// The CA files of the upstream tests; the shared cluster serves a certificate `ca` issued for 127.0.0.1.
pub struct UpstreamPki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    /// Issued by `ca` to CN=dualwrite-proxy.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The shared cluster with TLS on, once per test binary.
pub async fn upstream_pki() -> &'static UpstreamPki {
    static PKI: OnceCell<UpstreamPki> = OnceCell::const_new();
    PKI.get_or_init(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, ca_key) = ca("dualwrite upstream test CA");
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .unwrap();
        let chain = format!("{}{}", leaf.pem(), ca_cert.pem());
        // The server asks for client certificates of the same CA (trust authentication still applies).
        TestCluster::shared().enable_tls(&chain, &leaf_key.serialize_pem(), Some(&ca_cert.pem())).await.unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params.distinguished_name.push(rcgen::DnType::CommonName, "dualwrite-proxy");
        let client_cert = client_params.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
        let (other, _) = ca("some other CA");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        UpstreamPki {
            ca: write("ca.crt", ca_cert.pem()),
            other_ca: write("other-ca.crt", other.pem()),
            client_cert: write("client.crt", client_cert.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            _dir: dir,
        }
    })
    .await
}
