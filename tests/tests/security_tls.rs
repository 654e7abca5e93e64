//! TLS between clients and the proxy, from the client's side: libpq's `sslmode=verify-full` accepts the
//! proxy's certificate chain (issued by a CA generated here with rcgen) only with that CA and only for the
//! name on the certificate, and a client that offers nothing newer than TLS 1.1 is refused (rustls
//! speaks TLS 1.2 and 1.3 only). `sslmode=require` and TLS to the upstream: `proxy_auth_tls.rs`.

mod proxy_support;

use std::path::{Path, PathBuf};

use dualwrite_tests::*;
use proxy_support::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

/// A CA, a certificate for `localhost` only that it issued, and an unrelated CA.
fn pki(dir: &Path) -> Pki {
    let (ca_cert, ca_key) = ca("dualwrite test CA");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    let (other, _) = ca("some other CA");
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.crt", ca_cert.pem()),
        other_ca: write("other-ca.crt", other.pem()),
        // The chain the proxy presents: its certificate, then the issuer.
        cert: write("proxy.crt", format!("{}{}", leaf.pem(), ca_cert.pem())),
        key: write("proxy.key", leaf_key.serialize_pem()),
    }
}

async fn tls_proxy(cluster: &TestCluster, pki: &Pki) -> TestProxy {
    let mut config = config_for(cluster);
    config.tls_cert = Some(pki.cert.clone());
    config.tls_key = Some(pki.key.clone());
    TestProxy::start(config).await.unwrap()
}

#[tokio::test]
async fn verify_full_accepts_the_chain_and_name_and_nothing_else() {
    let cluster = TestCluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let proxy = tls_proxy(&cluster, &pki).await;
    let port = proxy.addr().port();
    let url = |host: &str, root: &Path| {
        format!(
            "postgres://{SCRAM_USER}:{SCRAM_PASSWORD}@{host}:{port}/postgres?sslmode=verify-full&sslrootcert={}&channel_binding=disable",
            root.display()
        )
    };

    let out = psql(&url("localhost", &pki.ca), &["-A", "-t", "-c", "SELECT current_user"], None).await.unwrap();
    out.assert_success();
    assert_eq!(out.stdout.trim(), SCRAM_USER);

    // A CA that did not issue the proxy's certificate.
    let out = psql(&url("localhost", &pki.other_ca), &["-c", "SELECT 1"], None).await.unwrap();
    assert!(!out.success());
    assert!(out.stderr.contains("certificate verify failed"), "{}", out.stderr);

    // The right CA, but a host name the certificate does not carry.
    let out = psql(&url("127.0.0.1", &pki.ca), &["-c", "SELECT 1"], None).await.unwrap();
    assert!(!out.success());
    assert!(out.stderr.contains("does not match host name"), "{}", out.stderr);
    proxy.stop().await.unwrap();
}

/// `openssl s_client -starttls postgres` with the given protocol flag against the proxy.
async fn s_client(addr: std::net::SocketAddr, protocol: &str) -> std::process::Output {
    // SECLEVEL=0 so that OpenSSL itself is willing to offer the old protocol: the refusal must be the
    // proxy's.
    tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-starttls", "postgres", protocol, "-cipher", "DEFAULT:@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("running openssl")
}

#[tokio::test]
async fn clients_older_than_tls_1_2_are_refused() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        panic!("openssl is needed for this test (apt-get install openssl)");
    }
    let cluster = TestCluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let proxy = tls_proxy(&cluster, &pki).await;
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = s_client(proxy.addr(), flag).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("Protocol  : {name}")) || stdout.contains(&format!("New, {name}")), "{flag}:\n{stdout}");
    }
    for flag in ["-tls1", "-tls1_1"] {
        let out = s_client(proxy.addr(), flag).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} handshake succeeded:\n{stdout}");
        // An alert the server sent (protocol_version or handshake_failure), not a client-side refusal to
        // offer the protocol.
        assert!(stderr.contains("ssl3_read_bytes") && stderr.contains("SSL alert number"), "{flag}:\n{stderr}");
        assert!(stdout.contains("Cipher is (NONE)"), "{flag}:\n{stdout}");
    }
    proxy.stop().await.unwrap();
}
