//! Failure behaviour: upstream down or restarted, client gone mid-transaction or mid-query, malformed,
//! oversized and unknown frames, the connection limit and graceful shutdown. Each failure affects only its
//! own session.

mod proxy_support;

use std::time::{Duration, Instant};

use dualwrite_tests::*;
use proxy_support::*;
use tokio_postgres::error::SqlState;

fn query_frame(sql: &str) -> Vec<u8> {
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    msg
}

async fn backend_alive(direct: &tokio_postgres::Client, pid: i32) -> bool {
    direct.query_one("SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1", &[&pid]).await.unwrap().get(0)
}

async fn wait_backend_gone(direct: &tokio_postgres::Client, pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !backend_alive(direct, pid).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn upstream_down_gives_08001_and_recovers() {
    let cluster = TestCluster::start().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let url = cluster.connection_string().replace(&cluster.port().to_string(), &proxy.addr().port().to_string());
    cluster.stop(StopMode::Fast).await.unwrap();
    let err = connect(&url).await.unwrap_err();
    let err = err.downcast_ref::<tokio_postgres::Error>().unwrap();
    assert_eq!(err.code(), Some(&SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION), "{err}");
    let text = err.as_db_error().unwrap().message().to_owned();
    assert!(text.contains("could not connect to upstream server"), "{text}");
    let out = psql(&url, &["-c", "SELECT 1"], None).await.unwrap();
    assert!(!out.success());
    assert!(out.stderr.contains("could not connect to upstream server"), "{}", out.stderr);
    cluster.start_again().await.unwrap();
    let client = connect(&url).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_restart_while_connected() {
    let cluster = TestCluster::start().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let url = cluster.connection_string().replace(&cluster.port().to_string(), &proxy.addr().port().to_string());
    let client = connect(&url).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let mut idle = RawClient::connect(proxy.addr(), cluster.superuser(), "postgres").await;
    cluster.restart(StopMode::Fast).await.unwrap();
    // The server's own 57P01 reaches the client (read on the wire: a driver reports a FATAL that arrives
    // between queries as a closed connection).
    let told = tokio::time::timeout(Duration::from_secs(10), idle.read_to_close()).await.expect("no hang");
    assert_eq!(first_error(&told).map(|(code, _)| code).as_deref(), Some("57P01"), "{told:?}");
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert!(err.is_closed(), "unexpected error after restart: {err:?}");
    let again = connect(&url).await.unwrap();
    assert_eq!(again.query_one("SELECT 5", &[]).await.unwrap().get::<_, i32>(0), 5);

    // A killed upstream says nothing: the proxy tells the client the connection was lost (08006) and
    // closes it, rather than leave it hanging.
    let mut idle = RawClient::connect(proxy.addr(), cluster.superuser(), "postgres").await;
    cluster.kill().await.unwrap();
    let told = tokio::time::timeout(Duration::from_secs(10), idle.read_to_close()).await.expect("no hang");
    assert_eq!(first_error(&told).map(|(code, _)| code).as_deref(), Some("08006"), "{told:?}");
    let err = tokio::time::timeout(Duration::from_secs(10), again.simple_query("SELECT 1"))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(err.is_closed() || err.code() == Some(&SqlState::CONNECTION_FAILURE), "{err:?}");
    cluster.start_again().await.unwrap();
    let third = connect(&url).await.unwrap();
    third.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn pg_terminate_backend_error_reaches_the_client() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let mut raw = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    let rows = raw.query("SELECT pg_backend_pid()").await;
    let pid: i32 = String::from_utf8_lossy(&rows.iter().find(|(t, _)| *t == b'D').unwrap().1[6..]).parse().unwrap();
    let direct = db.connect().await.unwrap();
    direct.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    let told = tokio::time::timeout(Duration::from_secs(10), raw.read_to_close()).await.expect("no hang");
    let (code, message) = first_error(&told).unwrap_or_else(|| panic!("no error before the close: {told:?}"));
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("administrator command"), "the server's own message: {message}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn client_gone_mid_transaction_rolls_back_and_cancels() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute("CREATE TABLE gone (id int)").await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();

    // Open transaction, then the client vanishes: the upstream session ends and nothing is committed.
    let mut raw = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    raw.query("BEGIN; INSERT INTO gone VALUES (1)").await;
    let pid_rows = raw.query("SELECT pg_backend_pid()").await;
    let pid: i32 = String::from_utf8_lossy(&pid_rows.iter().find(|(t, _)| *t == b'D').unwrap().1[6..]).parse().unwrap();
    drop(raw);
    assert!(wait_backend_gone(&direct, pid, Duration::from_secs(10)).await, "backend {pid} outlived its client");
    let n: i64 = direct.query_one("SELECT count(*) FROM gone", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);

    // A running query whose client vanishes is cancelled (pg_sleep would otherwise hold the backend).
    let mut raw = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    let pid_rows = raw.query("SELECT pg_backend_pid()").await;
    let pid: i32 = String::from_utf8_lossy(&pid_rows.iter().find(|(t, _)| *t == b'D').unwrap().1[6..]).parse().unwrap();
    raw.send(&query_frame("SELECT pg_sleep(60)")).await;
    wait_until_running(&direct, pid, "SELECT pg_sleep(60)").await;
    drop(raw);
    assert!(wait_backend_gone(&direct, pid, Duration::from_secs(10)).await, "sleeping backend {pid} was not cancelled");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_oversized_and_unknown_frames_end_only_their_session() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let mut config = config_for(&cluster);
    config.limits.max_message_size = 64 * 1024;
    let proxy = TestProxy::start(config).await.unwrap();
    let bystander = connect(&db.url_via(proxy.addr())).await.unwrap();
    bystander.batch_execute("BEGIN; CREATE TABLE bystander (id int)").await.unwrap();

    // A lying length (below the 4 bytes that count the length itself).
    let mut raw = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    raw.send(&[b'Q', 0, 0, 0, 2]).await;
    assert_eq!(raw.error_then_close().await.as_deref(), Some("08P01"));

    // A negative length.
    let mut raw = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    raw.send(&[b'P', 0xff, 0xff, 0xff, 0xf0]).await;
    assert_eq!(raw.error_then_close().await.as_deref(), Some("08P01"));

    // Above the configured limit: 54000 as soon as the header arrives.
    let mut raw = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    raw.send(&query_frame(&format!("SELECT '{}'", "x".repeat(100_000)))).await;
    assert_eq!(raw.error_then_close().await.as_deref(), Some("54000"));

    // A message type nobody knows is relayed raw; the server rejects it with its own error.
    let mut raw = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    raw.send(&[b'Y', 0, 0, 0, 4]).await;
    assert_eq!(raw.error_then_close().await.as_deref(), Some("08P01"));

    // Garbage instead of a startup packet: closed without a word, as Postgres does.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(&[0, 0, 0, 2, 1, 2, 3, 4]).await.unwrap();
    let mut answer = Vec::new();
    let closed = s.read_to_end(&mut answer).await;
    assert!(closed.is_ok() && answer.is_empty(), "{closed:?} {answer:?}");

    // Under the limit still works, and the bystander's transaction was never disturbed.
    let mut raw = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    let answer = raw.query(&format!("SELECT length('{}')", "y".repeat(60_000))).await;
    assert!(answer.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"60000")));
    bystander.batch_execute("INSERT INTO bystander VALUES (1); COMMIT").await.unwrap();
    let n: i64 = bystander.query_one("SELECT count(*) FROM bystander", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn connection_limit_and_graceful_shutdown() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let mut config = config_for(&cluster);
    config.limits.max_client_connections = 2;
    config.limits.shutdown_grace_secs = 20;
    let proxy = TestProxy::start(config).await.unwrap();
    // The idle session is read on the wire, to see what it is told at shutdown.
    let mut first = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    let second = connect(&db.url_via(proxy.addr())).await.unwrap();
    let err = connect(&db.url_via(proxy.addr())).await.unwrap_err();
    let err = err.downcast_ref::<tokio_postgres::Error>().unwrap();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");

    // Shutdown: the idle session is closed at once, the busy one finishes its transaction first.
    second.batch_execute("BEGIN").await.unwrap();
    let addr = proxy.addr();
    let stopping = tokio::spawn(proxy.stop());
    eventually(Duration::from_secs(10), "the proxy stops accepting", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    let told = tokio::time::timeout(Duration::from_secs(10), first.read_to_close()).await.expect("idle session closed");
    let (code, message) = first_error(&told).unwrap_or_else(|| panic!("no error before the close: {told:?}"));
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("proxy is shutting down"), "{message}");
    second.simple_query("SELECT 1").await.unwrap();
    second.batch_execute("COMMIT").await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), stopping).await.expect("run returns").unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    let err = second.simple_query("SELECT 1").await.unwrap_err();
    assert!(err.is_closed(), "the session ended with the proxy: {err}");
}
