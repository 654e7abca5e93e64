//! Following a failover: two clusters, a primary and a streaming standby of it (`pg_basebackup -R`), and
//! proxies whose upstream URL names both (`target_session_attrs=read-write` or `primary`). The primary is
//! stopped and the standby promoted while dual writes run through the proxy: new sessions, the state
//! watcher and the change-data-capture watch reach the new primary, the dual writes keep both tables
//! equal, a phase change made after the failover reaches every instance, and the watch reports the
//! interval its lost slot did not see until a verify covers it. Also: a standby-first host list reaches
//! the primary, a session that reaches a standby anyway is refused with libpq's words, `verify-full`
//! checks each host's own name, a first host gone without a word is passed over, and the
//! standby-seeking `target_session_attrs` values are refused at start.

mod cdc_support;
mod tls_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdc_support::{column, difference, fixture_on, rules, status, until_watching, watch_state, Fixture, MIGRATION};
use dualwrite_proxy::config::Config;
use dualwrite_proxy::server::Server;
use dualwrite_tests::{connect, eventually, StopMode, TestCluster, TestDb, TestProxy};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(60);

/// `postgres://postgres@127.0.0.1:<a>,127.0.0.1:<b>/<db>?...` over `hosts` in that order.
fn multi_host_url(db: &TestDb, hosts: &[&TestCluster], attrs: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|c| format!("127.0.0.1:{}", c.port())).collect();
    format!(
        "postgres://{}@{}/{}?sslmode=disable&target_session_attrs={attrs}",
        db.cluster.superuser(),
        hosts.join(","),
        db.name
    )
}

/// A primary with the cdc fixture's schema and a hot standby that has replayed it.
async fn primary_and_standby() -> (TestCluster, TestCluster, Fixture) {
    let primary = TestCluster::start().await.expect("primary");
    let f = fixture_on(&primary).await;
    let standby = primary.start_standby().await.expect("standby");
    let on_standby = standby.connection_string_for(standby.superuser(), None, &f.db.name);
    eventually(WAIT, "the standby replays the schema", || {
        let url = on_standby.clone();
        async move {
            match connect(&url).await {
                Ok(c) => c.query_one("SELECT to_regclass('users_v2') IS NOT NULL", &[]).await.is_ok_and(|r| r.get(0)),
                Err(_) => false,
            }
        }
    })
    .await;
    (primary, standby, f)
}

/// The database of `f` directly on `cluster`.
async fn direct_on(cluster: &TestCluster, f: &Fixture) -> Client {
    connect(&cluster.connection_string_for(cluster.superuser(), None, &f.db.name)).await.expect("direct")
}

/// (in recovery, port) of the server a session opened with `url` (through a proxy) landed on.
async fn server_of(url: &str) -> Option<(bool, i32)> {
    let client = connect(url).await.ok()?;
    let row = client.query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[]).await.ok()?;
    Some((row.get(0), row.get(1)))
}

/// Inserts rows one at a time through the proxy, reconnecting after any error; ids whose INSERT was
/// acknowledged and ids whose outcome is unknown (the connection broke before the answer).
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    task: tokio::task::JoinHandle<BTreeSet<i64>>,
}

impl Writer {
    fn start(url: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
            tokio::spawn(async move {
                let mut unknown = BTreeSet::new();
                let mut client: Option<Client> = None;
                let mut id: i64 = 1000;
                while !stop.load(Ordering::Relaxed) {
                    let Some(c) = client.as_ref().filter(|c| !c.is_closed()) else {
                        client = connect(&url).await.ok();
                        if client.is_none() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        continue;
                    };
                    id += 1;
                    let sql = "INSERT INTO users VALUES ($1, 'writer ' || $1::int8 || ' x', 'W@X', 'a1')";
                    match c.execute(sql, &[&id]).await {
                        Ok(_) => acked.lock().unwrap().push(id),
                        Err(_) => {
                            unknown.insert(id);
                            client = None;
                        }
                    }
                }
                unknown
            })
        };
        Writer { stop, acked, task }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops and returns (acknowledged ids, ids of unknown outcome).
    async fn finish(self) -> (Vec<i64>, BTreeSet<i64>) {
        self.stop.store(true, Ordering::Relaxed);
        let unknown = self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, unknown)
    }
}

async fn ids_in(client: &Client, table: &str) -> BTreeSet<i64> {
    client.query(&format!("SELECT id FROM {table}"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_promotion_sessions_state_dual_writes_phase_changes_and_the_watch_follow_the_new_primary() {
    let (primary, standby, f) = primary_and_standby().await;
    let upstream = multi_host_url(&f.db, &[&primary, &standby], "read-write");
    let watched = TestProxy::with_rules_toml_and(&f.db, &rules("alert"), |c: &mut Config| {
        c.upstream = upstream.clone();
        cdc_support::watch_on(None)(c);
    })
    .await
    .expect("proxy with the watch");
    let other = TestProxy::with_rules_toml_and(&f.db, &rules("alert"), |c: &mut Config| c.upstream = upstream.clone())
        .await
        .expect("a second instance");
    until_watching(&f.direct).await;
    let through = watched.url(&f.db);
    assert_eq!(server_of(&through).await, Some((false, i32::from(primary.port()))), "sessions reach the primary");

    let writer = Writer::start(through.clone());
    eventually(WAIT, "dual writes run", || async { writer.acked() >= 20 }).await;

    // The failover: a fast shutdown sends the standby all the WAL, then the standby is promoted.
    primary.stop(StopMode::Fast).await.unwrap();
    let before = writer.acked();
    standby.promote().await.unwrap();
    let new_primary = direct_on(&standby, &f).await;

    eventually(WAIT, "new sessions through the proxy reach the new primary", || async {
        server_of(&through).await == Some((false, i32::from(standby.port())))
    })
    .await;
    eventually(WAIT, "dual writes go on after the failover", || async { writer.acked() >= before + 20 }).await;
    eventually(WAIT, "both proxies' state listeners run on the new primary", || async {
        new_primary
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'dualwrite state listener'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 2
    })
    .await;
    let (acked, unknown) = writer.finish().await;

    // No acknowledged write is lost, and the two tables are equal (an INSERT of unknown outcome is in
    // both or in neither).
    let (old, shadow) = (ids_in(&new_primary, "users").await, ids_in(&new_primary, "users_v2").await);
    let missing: Vec<&i64> = acked.iter().filter(|id| !old.contains(id)).collect();
    assert!(missing.is_empty(), "acknowledged writes missing on the new primary: {missing:?}");
    assert_eq!(old, shadow, "both tables hold the same keys (unknown outcomes: {unknown:?})");
    assert_eq!(difference(&new_primary).await, 0, "both tables hold the same rows");

    // The watch streams from the new primary with a new slot and says which interval it did not see.
    let lost = |detail: &Option<String>| detail.as_deref().is_some_and(|d| d.starts_with("replication slot lost"));
    eventually(WAIT, "the watch streams again and reports the lost slot", || async {
        watch_state(&new_primary).await.is_some_and(|(state, detail)| state == "watching" && lost(&detail))
    })
    .await;
    let admin = connect(&through).await.unwrap();
    let shown = column(&status(&admin).await, "cdc_watch").unwrap_or_default();
    assert!(
        shown.starts_with("watching: replication slot lost (a failover, or dropped) and recreated at ["),
        "{shown}"
    );
    assert!(
        shown.contains("were not watched; bypasses in that interval are found only by DUALWRITE VERIFY"),
        "{shown}"
    );
    // A verify covers the interval: the watch stops reporting it.
    admin.simple_query(&format!("DUALWRITE VERIFY {MIGRATION}")).await.unwrap();
    eventually(WAIT, "the verify covers the interval", || async {
        watch_state(&new_primary).await.is_some_and(|(state, detail)| state == "watching" && detail.is_none())
    })
    .await;

    // A phase change made through the other instance after the failover lands on the new primary and
    // reaches the watched instance through its state watcher: at complete, v1 writes are refused.
    let other_admin = connect(&other.url(&f.db)).await.unwrap();
    other_admin.simple_query(&format!("DUALWRITE PHASE {MIGRATION} cutover FORCE")).await.unwrap();
    other_admin.simple_query(&format!("DUALWRITE PHASE {MIGRATION} complete")).await.unwrap();
    let phase: String = new_primary
        .query_one("SELECT phase FROM dualwrite.migrations WHERE name = $1", &[&MIGRATION])
        .await
        .unwrap()
        .get(0);
    assert_eq!(phase, "complete");
    let session = connect(&through).await.unwrap();
    eventually(WAIT, "the watched instance sees the phase change", || async {
        match session.execute("INSERT INTO users VALUES (1, 'late v1', 'L@X', 'a1')", &[]).await {
            Err(e) => e.code().map(|c| c.code()) == Some("0A000"),
            Ok(_) => false,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_first_host_list_reaches_the_primary_for_sessions_and_the_control_plane() {
    let (primary, standby, f) = primary_and_standby().await;
    for (id, attrs) in [(1, "read-write"), (2, "primary")] {
        let id: i64 = id;
        let upstream = multi_host_url(&f.db, &[&standby, &primary], attrs);
        let relay = TestProxy::start(Config::relay(SocketAddr::from(([127, 0, 0, 1], 0)), upstream.clone()))
            .await
            .expect("relay");
        assert_eq!(server_of(&relay.url(&f.db)).await, Some((false, i32::from(primary.port()))), "{attrs}");
        // A client's own read-only default is its choice: not a reason to refuse its session.
        let read_only = format!("{}?options=-c%20default_transaction_read_only%3Don", relay.url(&f.db));
        let client = connect(&read_only).await.unwrap();
        let setting: String = client.query_one("SHOW default_transaction_read_only", &[]).await.unwrap().get(0);
        assert_eq!(setting, "on", "{attrs}");
        // The control plane registers the migration (a write) at start: it found the primary too.
        let live = TestProxy::with_rules_toml_and(&f.db, &rules("alert"), |c: &mut Config| c.upstream = upstream)
            .await
            .expect("a proxy with rules on a standby-first host list starts");
        let client = live.connect(&f.db).await.unwrap();
        client.execute("INSERT INTO users VALUES ($1, 'first x', 'F@X', 'a1')", &[&id]).await.unwrap();
        assert_eq!(difference(&f.direct).await, 0, "{attrs}: the write was dual");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_reaches_a_standby_is_refused_with_08001_not_run_read_only() {
    let (_primary, standby, f) = primary_and_standby().await;
    let only_standby = |attrs: &str| multi_host_url(&f.db, &[&standby], attrs);
    let relay = TestProxy::start(Config::relay(SocketAddr::from(([127, 0, 0, 1], 0)), only_standby("read-write")))
        .await
        .expect("relay");
    let error = connect(&relay.url(&f.db)).await.expect_err("a standby is refused for read-write");
    let db = error.downcast_ref::<tokio_postgres::Error>().and_then(|e| e.as_db_error()).expect("a server error");
    assert_eq!(db.code().code(), "08001");
    assert_eq!(
        db.message(),
        format!(
            "connection to server at \"127.0.0.1\", port {} failed: server is in hot standby mode \
             (target_session_attrs=read-write)",
            standby.port()
        )
    );
    // With `any` the same server is acceptable, read-only as it is.
    let any = TestProxy::start(Config::relay(SocketAddr::from(([127, 0, 0, 1], 0)), only_standby("any")))
        .await
        .expect("relay");
    assert_eq!(server_of(&any.url(&f.db)).await, Some((true, i32::from(standby.port()))));
}

#[tokio::test]
async fn standby_seeking_target_session_attrs_are_refused_at_start() {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    for (upstream, value) in [
        ("postgres://u@a:5432,b:5433/db?target_session_attrs=standby", "standby"),
        ("postgres://u@a,b/db?target_session_attrs=prefer-standby", "prefer-standby"),
        ("host=a,b user=u dbname=db target_session_attrs=read-only", "read-only"),
    ] {
        let error = Server::bind(Config::relay(listen, upstream)).await.err().expect("refused");
        assert_eq!(
            format!("{error:#}"),
            format!(
                "upstream URL: target_session_attrs={value} is not supported: the proxy writes (dual writes, its \
                 migration state), so it needs the primary; use read-write or primary (or any)"
            )
        );
    }
}

/// A certificate of `ca` for `name` and its key (PEM chain, PEM key).
fn leaf_for(name: &str, ca: &(rcgen::Certificate, rcgen::KeyPair)) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().signed_by(&key, &ca.0, &ca.1).unwrap();
    (format!("{}{}", leaf.pem(), ca.0.pem()), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_each_hosts_own_name() {
    let (primary, standby, f) = primary_and_standby().await;
    let ca = tls_support::ca("dualwrite failover test CA");
    // The standby's certificate names 127.0.0.1 only, the primary's localhost only.
    for (cluster, name) in [(&standby, "127.0.0.1"), (&primary, "localhost")] {
        let (chain, key) = leaf_for(name, &ca);
        cluster.enable_tls(&chain, &key, None).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ca.crt");
    std::fs::write(&root, ca.0.pem()).unwrap();
    let url = |first: &str, second: &str| {
        format!(
            "postgres://{}@{first}:{},{second}:{}/{}?sslmode=verify-full&sslrootcert={}&target_session_attrs=read-write",
            primary.superuser(),
            standby.port(),
            primary.port(),
            f.db.name,
            root.display()
        )
    };
    // Each host checked against its own name: the standby as 127.0.0.1, the primary as localhost.
    let named_right = url("127.0.0.1", "localhost");
    let proxy = TestProxy::with_rules_toml_and(&f.db, &rules("alert"), |c: &mut Config| c.upstream = named_right)
        .await
        .expect("the control plane verifies each host by its own name");
    assert_eq!(server_of(&proxy.url(&f.db)).await, Some((false, i32::from(primary.port()))));
    // The names swapped: no host's certificate matches, so no host is acceptable.
    let relay = TestProxy::start(Config::relay(SocketAddr::from(([127, 0, 0, 1], 0)), url("localhost", "127.0.0.1")))
        .await
        .expect("relay");
    let error = connect(&relay.url(&f.db)).await.expect_err("refused");
    let db = error.downcast_ref::<tokio_postgres::Error>().and_then(|e| e.as_db_error()).expect("a server error");
    assert_eq!(db.code().code(), "08001");
    assert!(
        db.message().starts_with("no upstream server accepts target_session_attrs=read-write: "),
        "{}",
        db.message()
    );
    for (name, port) in [("localhost", standby.port()), ("127.0.0.1", primary.port())] {
        let attempt = format!("connection to server at \"{name}\", port {port} failed: ");
        assert!(db.message().contains(&attempt), "{attempt} in {}", db.message());
    }
    assert_eq!(db.message().matches("does not match").count(), 2, "{}", db.message());
}

/// A port where connects hang, as to a host gone without a word (no RST): a listener whose queue
/// (backlog 0) one connection nobody accepts has filled, so the kernel drops further SYNs.
async fn black_hole() -> (tokio::net::TcpListener, std::net::TcpStream, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let queued = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    (listener, queued, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_host_gone_without_a_word_is_passed_over_by_sessions_and_the_control_plane() {
    let cluster = TestCluster::shared();
    let f = fixture_on(&cluster).await;
    let (_listener, _queued, dead_port) = black_hole().await;
    let upstream = format!(
        "postgres://{}@127.0.0.1:{dead_port},127.0.0.1:{}/{}?sslmode=disable&target_session_attrs=read-write",
        cluster.superuser(),
        cluster.port(),
        f.db.name
    );
    // The control plane registers the migration (a write) at start: it passed over the dead host.
    let proxy = TestProxy::with_rules_toml_and(&f.db, &rules("alert"), |c: &mut Config| {
        c.upstream = upstream;
        c.limits.connect_timeout_secs = 2;
        c.limits.state_max_age_secs = 4;
    })
    .await
    .expect("the proxy starts with a dead first host");
    // The state watcher's reconnects are bounded (by state_max_age_secs) as a whole: the dead host gets
    // its share of that, and the listener runs on the live one.
    eventually(WAIT, "the state listener runs", || async {
        f.direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'dualwrite state listener'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    assert_eq!(server_of(&proxy.url(&f.db)).await, Some((false, i32::from(cluster.port()))));
    let client = proxy.connect(&f.db).await.unwrap();
    client.execute("INSERT INTO users VALUES (1, 'dual x', 'D@X', 'a1')", &[]).await.unwrap();
    assert_eq!(difference(&f.direct).await, 0, "the write was dual");
}
