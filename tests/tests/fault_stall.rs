//! The network to the upstream stalling. A stalled connect, TLS negotiation or startup (the upstream
//! accepted the TCP connection and then never answers) fails within the connect timeout with 08001
//! naming the upstream and the timeout, and other sessions are not held up by it. An upstream backend
//! that stops (SIGSTOP) mid-session looks like a long-running query, which is legitimate, so that
//! session waits; every other session on the same proxy keeps working, and when the backend continues
//! the stalled session completes normally.

use std::net::SocketAddr;

use dualwrite_tests::*;
use tokio::net::TcpListener;
use tokio_postgres::error::SqlState;

/// A listener that accepts connections and never sends a byte (kept open until the task is aborted).
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

async fn stalled_upstream_error(sslmode: &str) -> String {
    let (hole, task) = black_hole().await;
    let mut config = dualwrite_proxy::Config::relay(
        "127.0.0.1:0".parse().unwrap(),
        format!("postgres://postgres@{hole}/postgres?sslmode={sslmode}"),
    );
    config.limits.connect_timeout_secs = 1;
    let proxy = TestProxy::start(config).await.unwrap();
    let url = format!("postgres://postgres@{}/postgres?connect_timeout=30", proxy.addr());
    let err = connect(&url).await.unwrap_err();
    let err = err.downcast_ref::<tokio_postgres::Error>().unwrap();
    assert_eq!(err.code(), Some(&SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains(&hole.to_string()), "names the upstream: {message}");
    assert!(message.contains("timeout (1s)") || message.contains("timeout 1s"), "names the timeout: {message}");
    task.abort();
    proxy.stop().await.unwrap();
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_startup_times_out_with_08001() {
    let message = stalled_upstream_error("disable").await;
    assert!(message.contains("did not answer the startup"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_negotiation_times_out_with_08001() {
    let message = stalled_upstream_error("require").await;
    assert!(message.contains("timed out connecting"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_backend_holds_only_its_own_session() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let proxy = TestProxy::relay(&db).await.unwrap();
    let stalled = proxy.connect(&db).await.unwrap();
    let pid: i32 = stalled.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);

    // SAFETY: kill(2) on a backend of the test's own cluster; SIGCONT follows below.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let pending =
        tokio::spawn(async move { stalled.query_one("SELECT count(*) FROM t", &[]).await.map(|r| r.get::<_, i64>(0)) });
    for i in 0..20 {
        let other = proxy.connect(&db).await.unwrap();
        other.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
    }
    assert!(!pending.is_finished(), "the stopped backend cannot have answered");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let n = pending.await.unwrap().unwrap();
    assert_eq!(n, 20);
    proxy.stop().await.unwrap();
}
