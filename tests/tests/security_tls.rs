//! TLS between clients and the proxy, from the client's side: libpq's `sslmode=verify-full` accepts the
//! proxy's certificate chain (issued by a CA generated here with rcgen) only with that CA and only for the
//! name on the certificate, and a client that offers nothing newer than TLS 1.1 is refused (rustls
//! speaks TLS 1.2 and 1.3 only). `sslmode=require` from clients: `proxy_auth_tls.rs`.
//!
//! And from the proxy's side, to an upstream whose certificate a test CA issued for 127.0.0.1 only: the
//! upstream URL's `sslmode=verify-full` / `verify-ca` / `require` with `sslrootcert` behave as in libpq,
//! for the sessions' connections and for the control plane's, and a refused certificate reaches the
//! client as 08001 with the reason.

mod proxy_support;
mod tls_support;

use std::path::{Path, PathBuf};

use dualwrite_proxy::{Config, Server};
use dualwrite_tests::*;
use proxy_support::*;
use rcgen::{CertificateParams, KeyPair};
use tls_support::{ca, upstream_pki};
use tokio_postgres::error::SqlState;

struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA, a certificate for `localhost` only that it issued, and an unrelated CA.
fn pki(dir: &Path) -> Pki {
    let (ca_cert, ca_key) = ca("dualwrite test CA");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf =
        CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
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
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-starttls",
            "postgres",
            protocol,
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ])
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
        assert!(
            stdout.contains(&format!("Protocol  : {name}")) || stdout.contains(&format!("New, {name}")),
            "{flag}:\n{stdout}"
        );
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

/// The URL of `db` on the shared cluster through `host` (its port), with `params`.
fn upstream_url(db: &TestDb, host: &str, params: &str) -> String {
    let port = db.cluster.port();
    format!("postgres://{}@{host}:{port}/{}?{params}", db.cluster.superuser(), db.name)
}

fn verify(mode: &str, root: &Path) -> String {
    format!("sslmode={mode}&sslrootcert={}", root.display())
}

/// A relay to `upstream` (metrics off).
async fn relay_to(upstream: String) -> TestProxy {
    TestProxy::start(Config::relay("127.0.0.1:0".parse().unwrap(), upstream)).await.unwrap()
}

/// Whether the session's upstream connection is encrypted (answered by the upstream itself).
async fn session_on_tls(client: &tokio_postgres::Client) -> bool {
    client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0)
}

/// A session through `proxy` that the proxy must refuse: its SQLSTATE and message.
async fn refused(proxy: &TestProxy, db: &TestDb) -> (SqlState, String) {
    let error = match tokio_postgres::connect(&db.url_via(proxy.addr()), tokio_postgres::NoTls).await {
        Ok(_) => panic!("the session was served"),
        Err(error) => error,
    };
    let db_error = error.as_db_error().unwrap_or_else(|| panic!("not a server error: {error}"));
    (db_error.code().clone(), db_error.message().to_owned())
}

#[tokio::test]
async fn upstream_verify_full_with_the_right_ca_serves_sessions() {
    let pki = upstream_pki().await;
    let db = TestCluster::shared().create_database().await.unwrap();
    let proxy = relay_to(upstream_url(&db, "127.0.0.1", &verify("verify-full", &pki.ca))).await;
    let client = connect(&db.url_via(proxy.addr())).await.unwrap();
    assert!(session_on_tls(&client).await);
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'over verified TLS')")
        .await
        .unwrap();
    let v: String = client.query_one("SELECT v FROM t WHERE id = $1", &[&1]).await.unwrap().get(0);
    assert_eq!(v, "over verified TLS");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_verify_full_with_another_ca_refuses_each_session_with_08001() {
    let pki = upstream_pki().await;
    let db = TestCluster::shared().create_database().await.unwrap();
    let proxy = relay_to(upstream_url(&db, "127.0.0.1", &verify("verify-full", &pki.other_ca))).await;
    // Twice: a refused session ends alone, the proxy goes on accepting.
    for _ in 0..2 {
        let (code, message) = refused(&proxy, &db).await;
        assert_eq!(code, SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION, "{message}");
        assert!(message.contains("certificate is not trusted"), "{message}");
    }
    // Meanwhile a proxy that trusts the right CA serves the same upstream.
    let good = relay_to(upstream_url(&db, "127.0.0.1", &verify("verify-full", &pki.ca))).await;
    connect(&db.url_via(good.addr())).await.unwrap().simple_query("SELECT 1").await.unwrap();
    good.stop().await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let pki = upstream_pki().await;
    let db = TestCluster::shared().create_database().await.unwrap();
    // The certificate names 127.0.0.1 only; `localhost` reaches the same server.
    let full = relay_to(upstream_url(&db, "localhost", &verify("verify-full", &pki.ca))).await;
    let (code, message) = refused(&full, &db).await;
    assert_eq!(code, SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION, "{message}");
    assert!(message.contains("does not match host name \"localhost\""), "{message}");
    full.stop().await.unwrap();

    let chain_only = relay_to(upstream_url(&db, "localhost", &verify("verify-ca", &pki.ca))).await;
    let client = connect(&db.url_via(chain_only.addr())).await.unwrap();
    assert!(session_on_tls(&client).await);
    // verify-ca still checks the chain.
    let wrong_ca = relay_to(upstream_url(&db, "localhost", &verify("verify-ca", &pki.other_ca))).await;
    let (_, message) = refused(&wrong_ca, &db).await;
    assert!(message.contains("certificate is not trusted"), "{message}");
    wrong_ca.stop().await.unwrap();
    chain_only.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_require_encrypts_any_certificate_unless_a_root_is_given() {
    let pki = upstream_pki().await;
    let db = TestCluster::shared().create_database().await.unwrap();
    // As libpq: require alone encrypts without checking the certificate (no root given here)...
    let require = relay_to(upstream_url(&db, "localhost", "sslmode=require")).await;
    let client = connect(&db.url_via(require.addr())).await.unwrap();
    assert!(session_on_tls(&client).await);
    require.stop().await.unwrap();
    // ...and with sslrootcert it checks the chain, as verify-ca.
    let rooted = relay_to(upstream_url(&db, "localhost", &verify("require", &pki.other_ca))).await;
    let (_, message) = refused(&rooted, &db).await;
    assert!(message.contains("certificate is not trusted"), "{message}");
    rooted.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_root_certificate_that_cannot_be_used_is_refused_at_startup_naming_the_file() {
    let pki = upstream_pki().await;
    let db = TestCluster::shared().create_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-root.crt");
    let not_pem = dir.path().join("garbage.crt");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    for (file, reason) in
        [(&missing, "reading root certificate file"), (&not_pem, "no certificate in root certificate file")]
    {
        let config =
            Config::relay("127.0.0.1:0".parse().unwrap(), upstream_url(&db, "127.0.0.1", &verify("verify-full", file)));
        let error = format!("{:#}", Server::bind(config).await.err().expect("the proxy started"));
        assert!(error.contains(reason) && error.contains(&file.display().to_string()), "{error}");
    }
    // The control plane's URL is read the same way.
    let mut config =
        Config::relay("127.0.0.1:0".parse().unwrap(), upstream_url(&db, "127.0.0.1", &verify("verify-full", &pki.ca)));
    config.control.url = Some(upstream_url(&db, "127.0.0.1", &verify("verify-ca", &missing)));
    let (_, rules) = split_database().await;
    config.rules = Some(rules.path().to_owned());
    let error = format!("{:#}", Server::bind(config).await.err().expect("the proxy started"));
    assert!(error.contains(&missing.display().to_string()), "{error}");
}

#[tokio::test]
async fn upstream_verify_full_with_rules_puts_the_control_plane_on_verified_tls_and_dual_writes() {
    let pki = upstream_pki().await;
    let db = TestCluster::shared().create_database().await.unwrap();
    // The test's own plaintext connection, left out of the TLS check below by its pid.
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SPLIT_TABLES).await.unwrap();
    let rules = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(rules.path(), SPLIT_RULES).unwrap();
    let config_with = |root: &Path| {
        let mut config =
            Config::relay("127.0.0.1:0".parse().unwrap(), upstream_url(&db, "127.0.0.1", &verify("verify-full", root)));
        config.rules = Some(rules.path().to_owned());
        config
    };

    // The state store is read before the first client: with a CA that did not issue the upstream's
    // certificate, the proxy does not start.
    let error = format!("{:#}", Server::bind(config_with(&pki.other_ca)).await.err().expect("the proxy started"));
    assert!(error.contains("certificate is not trusted"), "{error}");

    let proxy = TestProxy::start(config_with(&pki.ca)).await.unwrap();
    let client = connect(&db.url_via(proxy.addr())).await.unwrap();
    assert!(session_on_tls(&client).await);
    client.execute("INSERT INTO users VALUES (1, 'Ada')", &[]).await.unwrap();
    let shadow: String = direct.query_one("SELECT first_name FROM users_v2 WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(shadow, "Ada");
    // Every other connection to the database is on TLS: the session's and the state store's (opened
    // before the proxy accepts anyone), with the state watcher's whenever it is up.
    let row = direct
        .query_one(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let (connections, all_on_tls): (i64, bool) = (row.get(0), row.get(1));
    assert!(connections >= 2 && all_on_tls, "{connections} connections, all on TLS: {all_on_tls}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_root_certificate_is_read_at_start_and_a_reload_keeps_it() {
    let pki = upstream_pki().await;
    let db = TestCluster::shared().create_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ca.crt");
    std::fs::copy(&pki.ca, &root).unwrap();
    let config =
        Config::relay("127.0.0.1:0".parse().unwrap(), upstream_url(&db, "127.0.0.1", &verify("verify-full", &root)));
    let server = Server::bind(config.clone()).await.unwrap();
    let reloader = server.reloader();
    let running = run_server(server);
    // The upstream URL is restart-only, the files it names with it: a reload does not read them again.
    std::fs::remove_file(&root).unwrap();
    let mut reloaded = config;
    reloaded.limits.connect_timeout_secs = 7;
    let report = reloader.reload(reloaded).await.unwrap();
    assert!(report.changed.iter().any(|change| change.contains("connect_timeout_secs")), "{:?}", report.changed);
    let client = connect(&db.url_via(running.addr)).await.unwrap();
    assert!(session_on_tls(&client).await);
    drop(client);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_client_certificate_is_presented_by_sessions_and_the_control_plane() {
    let pki = upstream_pki().await;
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SPLIT_TABLES).await.unwrap();
    let rules = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(rules.path(), SPLIT_RULES).unwrap();
    let params = format!(
        "{}&sslcert={}&sslkey={}",
        verify("verify-full", &pki.ca),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let mut config = Config::relay("127.0.0.1:0".parse().unwrap(), upstream_url(&db, "127.0.0.1", &params));
    config.rules = Some(rules.path().to_owned());
    let proxy = TestProxy::start(config).await.unwrap();
    let client = connect(&db.url_via(proxy.addr())).await.unwrap();
    let own: Option<String> =
        client.query_one("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    // Postgres prints the DN as "/CN=..." or "CN=..." depending on its version.
    let is_ours =
        |dn: &Option<String>| dn.as_deref().is_some_and(|dn| dn.trim_start_matches('/') == "CN=dualwrite-proxy");
    assert!(is_ours(&own), "{own:?}");
    // The state store's connection (and the watcher's, once up) presents it too.
    let others: Vec<Option<String>> = direct
        .query(
            "SELECT s.client_dn FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(others.len() >= 2 && others.iter().all(is_ours), "{others:?}");
    drop(client);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_system_roots_do_not_vouch_for_a_private_ca() {
    upstream_pki().await;
    let db = TestCluster::shared().create_database().await.unwrap();
    // sslrootcert=system alone means verify-full against the platform's roots, which do not hold the
    // test CA: the session is refused, not merely encrypted.
    let proxy = relay_to(upstream_url(&db, "127.0.0.1", "sslrootcert=system")).await;
    let (code, message) = refused(&proxy, &db).await;
    assert_eq!(code, SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION, "{message}");
    assert!(message.contains("certificate is not trusted"), "{message}");
    proxy.stop().await.unwrap();
    // A weaker mode with the system's roots is refused at startup, as libpq refuses it.
    let config = Config::relay(
        "127.0.0.1:0".parse().unwrap(),
        upstream_url(&db, "127.0.0.1", "sslmode=require&sslrootcert=system"),
    );
    let error = format!("{:#}", Server::bind(config).await.err().expect("the proxy started"));
    assert!(error.contains("sslrootcert=system needs sslmode=verify-full"), "{error}");
}
