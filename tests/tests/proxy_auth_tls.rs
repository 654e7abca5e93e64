//! Authentication is relayed end to end (the proxy stores no password): SCRAM-SHA-256, md5 and cleartext
//! roles log in through it, a wrong password gets the server's own 28P01; and clients can require TLS to
//! the proxy (certificate generated here with rcgen).

mod proxy_support;

use dualwrite_tests::*;
use proxy_support::*;
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn password_roles_log_in_through_the_proxy() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    for (user, password) in
        [(SCRAM_USER, SCRAM_PASSWORD), (MD5_USER, MD5_PASSWORD), (CLEARTEXT_USER, CLEARTEXT_PASSWORD)]
    {
        let client = connect(&db.url_via_as(proxy.addr(), user, Some(password)))
            .await
            .unwrap_or_else(|e| panic!("{user} through the proxy: {e:#}"));
        let who: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(who, user);
        // psql (libpq) too.
        let out =
            psql(&db.url_via_as(proxy.addr(), user, Some(password)), &["-A", "-t", "-c", "SELECT current_user"], None)
                .await
                .unwrap();
        out.assert_success();
        assert_eq!(out.stdout.trim(), user);
    }
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_password_gets_the_servers_error() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    for user in [SCRAM_USER, MD5_USER] {
        let err = connect(&db.url_via_as(proxy.addr(), user, Some("not-the-password"))).await.unwrap_err();
        let err = err.downcast_ref::<tokio_postgres::Error>().unwrap();
        assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{user}: {err}");
    }
    // The proxy keeps serving.
    let client = connect(&db.url_via_as(proxy.addr(), SCRAM_USER, Some(SCRAM_PASSWORD))).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn startup_parameters_reach_the_upstream_as_given() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let url = format!(
        "{}?application_name=dw_app&options=-c%20statement_timeout%3D1234%20-c%20dualwrite.version%3Dv2",
        db.url_via(proxy.addr())
    );
    let client = connect(&url).await.unwrap();
    let row = client
        .query_one(
            "SELECT current_setting('application_name'), current_setting('statement_timeout'), current_setting('dualwrite.version')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "dw_app");
    assert_eq!(row.get::<_, String>(1), "1234ms");
    assert_eq!(row.get::<_, String>(2), "v2");
    proxy.stop().await.unwrap();
}

fn write_self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert_path = dir.join("proxy.crt");
    let key_path = dir.join("proxy.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[tokio::test]
async fn sslmode_require_against_the_proxys_tls() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_self_signed(dir.path());
    let mut config = config_for(&cluster);
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    let proxy = TestProxy::start(config).await.unwrap();
    for (user, password) in [(cluster.superuser().to_owned(), None), (SCRAM_USER.to_owned(), Some(SCRAM_PASSWORD))] {
        let url = format!("{}?sslmode=require", db.url_via_as(proxy.addr(), &user, password));
        let out = psql(&url, &["-A", "-t", "-c", "\\conninfo", "-c", "SELECT current_user"], None).await.unwrap();
        out.assert_success();
        assert!(out.stdout.contains("SSL connection (protocol: TLSv1."), "{}", out.stdout);
        assert!(out.stdout.trim_end().ends_with(&user), "{}", out.stdout);
        // COPY and a larger result over TLS.
        let out =
            psql(&url, &["-A", "-t", "-c", "SELECT sum(length(repeat('x', g))) FROM generate_series(1, 2000) g"], None)
                .await
                .unwrap();
        out.assert_success();
        assert_eq!(out.stdout.trim(), "2001000");
    }
    // Without a certificate the proxy answers SSLRequest with 'N': require fails, prefer falls back.
    let plain = TestProxy::start(config_for(&cluster)).await.unwrap();
    let out = psql(&format!("{}?sslmode=require", db.url_via(plain.addr())), &["-c", "SELECT 1"], None).await.unwrap();
    assert!(!out.success());
    assert!(out.stderr.contains("does not support SSL"), "{}", out.stderr);
    let out = psql(&format!("{}?sslmode=prefer", db.url_via(plain.addr())), &["-A", "-t", "-c", "SELECT 1"], None)
        .await
        .unwrap();
    out.assert_success();
    proxy.stop().await.unwrap();
    plain.stop().await.unwrap();
}

#[tokio::test]
async fn gssenc_request_is_refused_and_the_session_goes_on() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    // gssencmode=prefer makes libpq send GSSENCRequest first when it has GSS support; either way it works.
    let out = psql(&format!("{}?gssencmode=prefer", db.url_via(proxy.addr())), &["-A", "-t", "-c", "SELECT 7"], None)
        .await
        .unwrap();
    out.assert_success();
    assert_eq!(out.stdout.trim(), "7");
    // And by hand: GSSENCRequest gets exactly 'N'.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    proxy.stop().await.unwrap();
}

/// Turns TLS on in a running cluster with a fresh self-signed certificate.
async fn enable_server_tls(cluster: &TestCluster) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    cluster.enable_tls(&cert.cert.pem(), &cert.key_pair.serialize_pem(), None).await.unwrap();
}

#[tokio::test]
async fn tls_to_the_upstream_and_scram_without_channel_binding() {
    let cluster = TestCluster::start().await.unwrap();
    enable_server_tls(&cluster).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_self_signed(dir.path());
    let mut config = config_for(&cluster);
    config.upstream = format!("{}?sslmode=require", cluster.connection_string());
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    let proxy = TestProxy::start(config).await.unwrap();
    let base = url_for(proxy.addr(), SCRAM_USER, Some(SCRAM_PASSWORD), "postgres");
    let probe =
        ["-A", "-t", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", "-c", "SELECT current_user"];
    // Channel binding cannot cross the proxy: the upstream (on TLS) offers SCRAM-SHA-256-PLUS, the proxy
    // takes it off the list, so a client on TLS that requires binding is refused by libpq itself...
    let out = psql(&format!("{base}?sslmode=require&channel_binding=require"), &probe, None).await.unwrap();
    assert!(!out.success());
    assert!(out.stderr.contains("channel binding"), "{}", out.stderr);
    // ...while a client on TLS without binding, and a plaintext client, log in; the upstream leg is TLS.
    for params in ["sslmode=require&channel_binding=disable", "sslmode=disable"] {
        let out = psql(&format!("{base}?{params}"), &probe, None).await.unwrap();
        out.assert_success();
        assert_eq!(out.stdout.trim(), format!("t\n{SCRAM_USER}"), "{params}");
    }
    // Cancel keys work over the TLS upstream as well.
    let client = connect(&url_for(proxy.addr(), MD5_USER, Some(MD5_PASSWORD), "postgres")).await.unwrap();
    let direct = connect(&cluster.connection_string()).await.unwrap();
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let token = client.cancel_token();
    let (outcome, cancelled) = tokio::join!(client.simple_query("SELECT pg_sleep(30)"), async {
        wait_until_running(&direct, pid, "SELECT pg_sleep(30)").await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    cancelled.unwrap();
    assert_eq!(outcome.unwrap_err().code(), Some(&SqlState::QUERY_CANCELED));
    proxy.stop().await.unwrap();
}
