//! Several proxy instances behind one address (peering, README "Several instances behind one address"):
//! a CancelRequest that reaches the instance that did not issue its key is forwarded to the one that did
//! and cancels the right query, in session and transaction mode; unknown keys are dropped without a word
//! and cancel nothing; with peering off an instance keeps to its own keys.
//!
//! Two in-process proxies on one cluster: A (peer 1) serves the query, B (peer 2, A listed as its peer)
//! receives the cancel. Metrics are read from the process-global recorder, which both instances share:
//! nextest runs each test in its own process.

mod proxy_support;

use std::net::SocketAddr;
use std::time::Duration;

use dualwrite_proxy::config::{Config, PeerConfig, PoolMode};
use dualwrite_proxy::Server;
use dualwrite_tests::*;
use proxy_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(30);

/// A relay to `cluster` with `peer_id` and the given peers, in `mode`, metrics at `metrics` if given.
fn peer_config(
    cluster: &TestCluster,
    peer_id: u32,
    peers: &[(u32, SocketAddr)],
    mode: PoolMode,
    metrics: Option<SocketAddr>,
) -> Config {
    let mut config = config_for(cluster);
    config.peer_id = peer_id;
    config.peers = peers.iter().map(|(id, addr)| PeerConfig { id: *id, address: addr.to_string() }).collect();
    config.pool_mode = mode;
    config.pool_size = 4;
    config.metrics_listen = metrics;
    config
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The value of the sample `name{labels}`, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn cancels(text: &str, outcome: &str) -> f64 {
    sample(text, &format!("dualwrite_cancel_requests_total{{outcome=\"{outcome}\"}}"))
}

/// Sends a raw CancelRequest for (`pid`, `secret`) to `addr` and reads until the close: returns what the
/// proxy answered (Postgres answers nothing). The close comes once the request has been passed on.
async fn send_cancel(addr: SocketAddr, pid: i32, secret: &[u8]) -> Vec<u8> {
    let mut packet = ((12 + secret.len()) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102i32.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(secret);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut answer)).await.expect("the proxy closes").unwrap();
    answer
}

/// A raw session through `addr`, with the BackendKeyData it was given (pid, secret).
async fn raw_session(addr: SocketAddr, cluster: &TestCluster, database: &str) -> (RawClient, i32, Vec<u8>) {
    let mut client = RawClient::open(addr, cluster.superuser(), database).await;
    let mut key = None;
    loop {
        let (tag, body) = client.read_message().await.expect("startup answer");
        assert_ne!(tag, b'E', "startup failed");
        if tag == b'K' {
            key = Some((i32::from_be_bytes(body[..4].try_into().unwrap()), body[4..].to_vec()));
        }
        if tag == b'Z' {
            break;
        }
    }
    let (pid, secret) = key.expect("BackendKeyData");
    (client, pid, secret)
}

/// `pg_sleep(30)` through A, cancelled by the client's own cancel token sent to B's port; ends with 57014
/// and the session goes on.
async fn cancel_through_the_other_instance(mode: PoolMode) {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    let metrics = free_addr();
    let a = TestProxy::start(peer_config(&cluster, 1, &[], mode, Some(metrics))).await.unwrap();
    let b = TestProxy::start(peer_config(&cluster, 2, &[(1, a.addr())], mode, None)).await.unwrap();
    let client = connect(&db.url_via(a.addr())).await.unwrap();
    let token = client.cancel_token();
    let sleep = "SELECT pg_sleep(30)";
    let (outcome, cancelled) = tokio::join!(client.simple_query(sleep), async {
        eventually(LIMIT, "the sleep runs", || async {
            let running: i64 = direct
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query = $1", &[&sleep])
                .await
                .unwrap()
                .get(0);
            running == 1
        })
        .await;
        let to_b = TcpStream::connect(b.addr()).await.unwrap();
        token.cancel_query_raw(to_b, tokio_postgres::NoTls).await
    });
    cancelled.unwrap();
    let err = outcome.unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{err}");
    assert_eq!(client.query_one("SELECT 41 + 1", &[]).await.unwrap().get::<_, i32>(0), 42, "the session goes on");
    // Counted once each instance has seen the next one close, which may come after the query's error.
    eventually(LIMIT, "B counts the request forwarded, A sent to the upstream", || async {
        let text = scrape_metrics(metrics).await;
        cancels(&text, "forwarded") == 1.0 && cancels(&text, "local") == 1.0
    })
    .await;
    let text = scrape_metrics(metrics).await;
    assert_eq!(cancels(&text, "unknown") + cancels(&text, "failed"), 0.0, "{text}");
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test]
async fn a_cancel_sent_to_another_instance_cancels_the_query_in_session_mode() {
    cancel_through_the_other_instance(PoolMode::Session).await;
}

#[tokio::test]
async fn a_cancel_sent_to_another_instance_cancels_the_query_in_transaction_mode() {
    cancel_through_the_other_instance(PoolMode::Transaction).await;
}

#[tokio::test]
async fn cancels_with_unknown_keys_sent_to_another_instance_are_dropped_silently_and_cancel_nothing() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let metrics = free_addr();
    let a = TestProxy::start(peer_config(&cluster, 1, &[], PoolMode::Session, Some(metrics))).await.unwrap();
    let b = TestProxy::start(peer_config(&cluster, 2, &[(1, a.addr())], PoolMode::Session, None)).await.unwrap();

    // A query through A waits on a lock the test holds: only a cancel (or the lock's release) ends it.
    // Its own connection: pg_stat_activity read inside a transaction is a snapshot taken at first read.
    let locker = db.connect().await.unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let (mut waiter, pid, secret) = raw_session(a.addr(), &cluster, &db.name).await;
    let (_b_session, b_pid, b_secret) = raw_session(b.addr(), &cluster, &db.name).await;
    waiter.send_message(b'Q', b"SELECT count(*) FROM t\0").await;
    wait_until_lock_wait(&direct, pid).await;

    // Keys that name A (forwarded by B, unknown at A) and B (unknown at B): the last byte is random in both.
    let flip_last = |secret: &[u8]| {
        let mut s = secret.to_vec();
        *s.last_mut().unwrap() ^= 0x01;
        s
    };
    assert_eq!(send_cancel(b.addr(), pid, &flip_last(&secret)).await, b"", "dropped without a word");
    assert_eq!(send_cancel(b.addr(), b_pid, &flip_last(&b_secret)).await, b"", "dropped without a word");
    // A pid with no session at all.
    assert_eq!(send_cancel(b.addr(), pid.wrapping_add(1_000_000), &secret).await, b"");

    // Each request was passed on before its connection closed: had one reached the server, the waiting
    // query would be cancelled by now.
    assert!(lock_waiting(&direct, pid).await, "the query still waits");
    let text = scrape_metrics(metrics).await;
    assert_eq!(cancels(&text, "forwarded"), 2.0, "B forwarded the keys naming A:\n{text}");
    assert_eq!(cancels(&text, "unknown"), 3.0, "A knew neither, B not its own");
    assert_eq!(cancels(&text, "local") + cancels(&text, "failed"), 0.0);
    locker.batch_execute("COMMIT").await.unwrap();
    let answer = read_until_ready(&mut waiter).await;
    assert!(answer.iter().all(|(tag, _)| *tag != b'E'), "the query was not cancelled");
    assert_eq!(command_tags(&answer), vec!["SELECT 1"]);
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test]
async fn without_peering_a_cancel_reaches_only_the_instance_that_issued_the_key() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let a = TestProxy::start(peer_config(&cluster, 0, &[], PoolMode::Session, None)).await.unwrap();
    let b = TestProxy::start(peer_config(&cluster, 0, &[], PoolMode::Session, None)).await.unwrap();
    // Its own connection: pg_stat_activity read inside a transaction is a snapshot taken at first read.
    let locker = db.connect().await.unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let (mut waiter, pid, secret) = raw_session(a.addr(), &cluster, &db.name).await;
    assert_eq!(secret.len(), 4, "a protocol 3.0 key");
    waiter.send_message(b'Q', b"SELECT count(*) FROM t\0").await;
    wait_until_lock_wait(&direct, pid).await;

    // B never issued this key and has no peers: the request is dropped there.
    assert_eq!(send_cancel(b.addr(), pid, &secret).await, b"");
    assert!(lock_waiting(&direct, pid).await, "the query still waits");
    // The same request sent to A cancels the query, as it always did.
    assert_eq!(send_cancel(a.addr(), pid, &secret).await, b"");
    let answer = read_until_ready(&mut waiter).await;
    assert_eq!(first_error(&answer).map(|(code, _)| code).as_deref(), Some("57014"), "{answer:?}");
    locker.batch_execute("COMMIT").await.unwrap();
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test]
async fn peers_given_by_a_reload_take_the_cancels_received_afterwards_and_a_bad_list_is_refused() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let a = TestProxy::start(peer_config(&cluster, 1, &[], PoolMode::Session, None)).await.unwrap();
    let b_config = peer_config(&cluster, 2, &[], PoolMode::Session, None);
    let b_server = Server::bind(b_config.clone()).await.unwrap();
    let reloader = b_server.reloader();
    let b = run_server(b_server);
    let locker = db.connect().await.unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let (mut waiter, pid, secret) = raw_session(a.addr(), &cluster, &db.name).await;
    waiter.send_message(b'Q', b"SELECT count(*) FROM t\0").await;
    wait_until_lock_wait(&direct, pid).await;

    // B lists no peer 1 yet: the request is dropped there.
    assert_eq!(send_cancel(b.addr, pid, &secret).await, b"");
    assert!(lock_waiting(&direct, pid).await, "the query still waits");

    // A list naming B itself is refused whole; a changed peer_id is kept for a restart.
    let mut bad = b_config.clone();
    bad.peers = vec![PeerConfig { id: 2, address: a.addr().to_string() }];
    let error = format!("{:#}", reloader.reload(bad).await.unwrap_err());
    assert!(error.contains("peer 2 is this instance's own peer_id"), "{error}");
    let mut good = b_config.clone();
    good.peer_id = 3;
    good.peers = vec![PeerConfig { id: 1, address: a.addr().to_string() }];
    let report = reloader.reload(good).await.unwrap();
    assert_eq!(report.needs_restart, vec!["peer_id"]);
    assert!(report.changed.iter().any(|c| c.starts_with("peers: ")), "{:?}", report.changed);
    assert_eq!(reloader.config().peer_id, 2);

    // Now the same request reaches A and cancels the query.
    assert_eq!(send_cancel(b.addr, pid, &secret).await, b"");
    let answer = read_until_ready(&mut waiter).await;
    assert_eq!(first_error(&answer).map(|(code, _)| code).as_deref(), Some("57014"), "{answer:?}");
    locker.batch_execute("COMMIT").await.unwrap();
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

async fn lock_waiting(direct: &tokio_postgres::Client, pid: i32) -> bool {
    direct
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND wait_event_type = 'Lock')",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0)
}

async fn wait_until_lock_wait(direct: &tokio_postgres::Client, pid: i32) {
    eventually(LIMIT, "the query waits for the lock", || lock_waiting(direct, pid)).await;
}

/// Messages up to ReadyForQuery, within `LIMIT`.
async fn read_until_ready(client: &mut RawClient) -> Vec<(u8, Vec<u8>)> {
    tokio::time::timeout(LIMIT, client.read_until_ready()).await.expect("an answer")
}
