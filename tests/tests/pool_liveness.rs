//! Transaction mode stays live when clients vanish (issue 16's pool defect): clients killed while they
//! wait in line, or in the middle of an extended-protocol batch (Parse/Bind/Execute without Sync), leave
//! the line and their connections' places; the next clients are served; a waiter left with no connection
//! gets a replacement opened for it, or, where the server asks for a password the proxy does not keep, a
//! clear error; and `DUALWRITE POOLS`, the pool gauges and the server's own pg_stat_activity agree.

mod pool_support;
mod proxy_support;

use std::net::SocketAddr;
use std::time::Duration;

use dualwrite_proxy::config::PoolMode;
use dualwrite_tests::*;
use pool_support::*;
use proxy_support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// The application_name of the clients under test (the admin and direct connections have their own).
const APP: &str = "pooled";

/// A pooling proxy (with rules, for `DUALWRITE POOLS`), its metrics endpoint, an admin session logged in
/// before the pool fills, and a connection to the database that bypasses the proxy.
struct Pooled {
    proxy: TestProxy,
    db: TestDb,
    metrics: SocketAddr,
    admin: tokio_postgres::Client,
    direct: tokio_postgres::Client,
    _rules: tempfile::NamedTempFile,
}

impl Pooled {
    async fn start(size: usize, reserve: usize) -> Pooled {
        let (db, rules) = split_database().await;
        let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let proxy = TestProxy::with_rules_toml_and(&db, SPLIT_RULES, |config| {
            config.pool_mode = PoolMode::Transaction;
            config.pool_size = size;
            config.reserve_pool_size = reserve;
            config.metrics_listen = Some(metrics);
        })
        .await
        .unwrap();
        let admin = connect(&format!("{}?application_name=admin", proxy.url(&db))).await.unwrap();
        let direct = connect(&format!("{}?application_name=direct", db.url())).await.unwrap();
        direct.batch_execute("CREATE TABLE t (id int)").await.unwrap();
        Pooled { proxy, db, metrics, admin, direct, _rules: rules }
    }

    /// A client URL as `user` (`None`: the superuser, trust).
    fn url(&self, user: Option<(&str, &str)>) -> String {
        let url = match user {
            Some((user, password)) => self.proxy.url_as(&self.db, user, Some(password)),
            None => self.proxy.url(&self.db),
        };
        format!("{url}?application_name={APP}")
    }

    /// A client speaking the protocol by hand, as the superuser (trust), in the pool of the superuser's
    /// tokio-postgres clients (same startup parameters).
    async fn raw_client(&self) -> RawClient {
        let user = self.db.cluster.superuser();
        let parameters = [
            ("user", user),
            ("database", self.db.name.as_str()),
            ("application_name", APP),
            ("client_encoding", "UTF8"),
        ];
        RawClient::connect_with(self.proxy.addr(), &parameters).await
    }

    /// `DUALWRITE POOLS` summed over the pools of the clients under test.
    async fn pools(&self) -> Figures {
        self.pool_rows(|_, parameters| parameters.contains(&format!("application_name={APP}"))).await
    }

    /// `DUALWRITE POOLS` summed over the rows `chosen(user, parameters)` picks.
    async fn pool_rows(&self, chosen: impl Fn(&str, &str) -> bool) -> Figures {
        let rows = simple_rows(&self.admin.simple_query("DUALWRITE POOLS").await.unwrap());
        let mut sum = Figures::default();
        for row in rows {
            let cell = |i: usize| row[i].as_deref().unwrap_or_default().to_owned();
            if !chosen(&cell(1), &cell(9)) {
                continue;
            }
            let n = |i: usize| cell(i).parse::<i64>().unwrap();
            sum = Figures { active: sum.active + n(4), idle: sum.idle + n(5), waiting: sum.waiting + n(6) };
        }
        sum
    }

    /// The pool gauges of `user`, which sum every pool of the user (the admin's included).
    async fn gauges(&self, user: &str) -> Figures {
        let text = scrape_metrics(self.metrics).await;
        let labels = format!("database=\"{}\",user=\"{user}\"", self.db.name);
        let connections = |state: &str| {
            sample(&text, &format!("dualwrite_pool_server_connections{{{labels},state=\"{state}\"}}")) as i64
        };
        Figures {
            active: connections("active"),
            idle: connections("idle"),
            waiting: sample(&text, &format!("dualwrite_pool_clients_waiting{{{labels}}}")) as i64,
        }
    }

    /// The proxy's server connections of the clients under test, as the server counts them.
    async fn server_connections(&self) -> i64 {
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2";
        self.direct.query_one(sql, &[&self.db.name, &APP]).await.unwrap().get(0)
    }

    /// Waits until no client under test holds or waits for a connection, and the three views agree:
    /// `DUALWRITE POOLS`, the gauges of `user` (all of the user's pools, the admin's included for the
    /// superuser) and the server's own count of connections. Returns the idle connections of the pools
    /// under test.
    async fn settled(&self, user: &str) -> i64 {
        eventually(LIMIT, "the pools settle and every view agrees", || async {
            let under_test = self.pools().await;
            let of_user = self.pool_rows(|u, _| u == user).await;
            let gauges = self.gauges(user).await;
            let server = self.server_connections().await;
            tracing::info!(?under_test, ?of_user, ?gauges, server, "pool figures");
            under_test.active == 0 && under_test.waiting == 0 && gauges == of_user && server == under_test.idle
        })
        .await;
        self.pools().await.idle
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Figures {
    active: i64,
    idle: i64,
    waiting: i64,
}

#[tokio::test]
async fn clients_killed_while_waiting_in_line_leave_it_unserved_and_the_next_clients_are_served() {
    let pooled = Pooled::start(1, 6).await;
    let holder = connect(&pooled.url(None)).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // Six clients in line (logged in on the reserve): three with a simple Query, three in the middle of
    // an extended-protocol batch (Parse, Bind, Execute, no Sync yet).
    // All log in first: a login's connection goes to the first client in line once it is authenticated.
    let mut in_line = Vec::new();
    for _ in 0..6 {
        in_line.push(pooled.raw_client().await);
    }
    for (i, client) in in_line.iter_mut().enumerate() {
        let insert = format!("INSERT INTO t VALUES ({i})");
        if i % 2 == 0 {
            client.send(&frame(b'Q', &[insert.as_bytes(), &[0]].concat())).await;
        } else {
            client.send(&[parse("", &insert), bind(""), execute()].concat()).await;
        }
    }
    eventually(LIMIT, "six clients wait", || async { pooled.pools().await.waiting == 6 }).await;
    drop(in_line);
    eventually(LIMIT, "the killed clients left the line", || async {
        let (pools, gauges) = (pooled.pools().await, pooled.gauges(pooled.db.cluster.superuser()).await);
        pools.waiting == 0 && gauges.waiting == 0
    })
    .await;
    assert_eq!(pooled.pools().await.active, 1, "the holder still has the one connection");
    holder.batch_execute("COMMIT").await.unwrap();
    // A new client (on the reserve) gets the connection the holder gave back; the killed clients'
    // requests never ran.
    let next = connect(&pooled.url(None)).await.unwrap();
    for _ in 0..3 {
        let n: i64 = next.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
        assert_eq!(n, 0, "no request of a client killed in line reached the server");
    }
    drop((holder, next));
    assert_eq!(pooled.settled(pooled.db.cluster.superuser()).await, 1, "the pool keeps its one connection");
    pooled.proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_killed_between_parse_and_sync_frees_its_place_for_a_connection_opened_for_the_next_waiter() {
    let pooled = Pooled::start(1, 2).await;
    let mut killed = pooled.raw_client().await;
    killed.send(&[parse("", "INSERT INTO t VALUES (1)"), bind(""), execute()].concat()).await;
    eventually(LIMIT, "the batch holds the one connection", || async { pooled.pools().await.active == 1 }).await;
    let waiter = connect(&pooled.url(None)).await.unwrap();
    let waiting = tokio::spawn(async move {
        let n: i64 = waiter.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
        (waiter, n)
    });
    eventually(LIMIT, "the next client waits", || async { pooled.pools().await.waiting == 1 }).await;
    // The killed client's connection is closed mid-batch (the server rolls back); the pool is below its
    // size with a client waiting, so the waiter opens a connection in its place (trust: no password).
    drop(killed);
    let (waiter, n) = waiting.await.unwrap();
    assert_eq!(n, 0, "the killed client's uncommitted insert was rolled back");
    drop(waiter);
    assert_eq!(pooled.settled(pooled.db.cluster.superuser()).await, 1);
    pooled.proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_waiter_left_with_no_connection_where_the_server_wants_a_password_gets_a_clear_error_and_logins_work() {
    let pooled = Pooled::start(1, 1).await;
    let url = pooled.url(Some((SCRAM_USER, SCRAM_PASSWORD)));
    let holder = connect(&url).await.unwrap();
    holder.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.unwrap();
    let waiter = connect(&url).await.unwrap();
    let waiting = tokio::spawn(async move { waiter.batch_execute("SELECT 1").await });
    eventually(LIMIT, "the second client waits", || async { pooled.pools().await.waiting == 1 }).await;
    // Leaving mid-transaction: the connection is closed, and no other is lent that could come back. The
    // proxy cannot open one for the waiter without the client's password.
    drop(holder);
    let err = waiting.await.unwrap().unwrap_err();
    let db_error = err.as_db_error().expect("an error from the proxy");
    assert_eq!((db_error.severity(), db_error.code().code()), ("FATAL", "08006"), "{db_error:?}");
    assert!(db_error.message().contains("asks the proxy for a password"), "{}", db_error.message());
    assert!(db_error.hint().is_some_and(|h| h.starts_with("Reconnect")), "{db_error:?}");
    // A login brings the pool a connection again, with the client's own authentication.
    let again = connect(&url).await.unwrap();
    let n: i64 = again.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "the holder's transaction was rolled back");
    drop(again);
    assert_eq!(pooled.settled(SCRAM_USER).await, 1);
    pooled.proxy.stop().await.unwrap();
}

#[tokio::test]
async fn pgbench_killed_while_its_prepared_clients_queue_leaves_a_pool_that_serves_the_next_pgbench() {
    let pooled = Pooled::start(4, 0).await;
    pgbench(&pooled.db.url(), &["-i", "-s", "1", "-q"]).await.unwrap().assert_success();
    let url = pooled.url(None);
    // Eight times more clients than connections, two threads: pgbench prepares with a blocking call while
    // other clients of its thread hold connections in their transactions, so it stalls (README,
    // "Connection pooling"), as the benchmark's run did, with clients in line and in the middle of
    // prepares; then it is killed.
    let mut stalled = spawn_pgbench(&url, &["-M", "prepared", "-c", "32", "-j", "2", "-T", "300"]).unwrap();
    eventually(LIMIT, "pgbench's clients queue for the pool", || async { pooled.pools().await.waiting > 0 }).await;
    stalled.kill().await.unwrap();
    pooled.settled(pooled.db.cluster.superuser()).await;
    let out = pgbench(&url, &["-S", "-M", "simple", "-c", "8", "-j", "8", "-t", "50"]).await.unwrap();
    out.assert_success();
    assert!(out.stdout.contains("number of transactions actually processed: 400/400"), "{}", out.stdout);
    let idle = pooled.settled(pooled.db.cluster.superuser()).await;
    assert!((1..=4).contains(&idle), "the pool holds at most its size: {idle}");
    pooled.proxy.stop().await.unwrap();
}
