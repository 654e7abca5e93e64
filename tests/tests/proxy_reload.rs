//! `dualwrite serve` reloads its config and rules file on SIGHUP without dropping sessions, refuses a broken
//! file and keeps the running config, and answers /health and /ready next to /metrics. Each test runs the
//! real binary (signals and the process-global metrics exporter are per process), waits for a reload by
//! polling `dualwrite_config_reloads_total`, and for readiness changes by polling /ready, each with a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dualwrite_tests::{ProxyProcess, StopMode, TestCluster, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long any awaited state change may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

const USERS_RULES: &str = include_str!("../../rewrite-rules/examples/users_split_name.toml");

const ORDERS_RULES: &str = r#"
[[migration]]
name   = "orders_cents"
table  = "public.orders"
shadow = "public.orders_v2"
key    = ["id"]
versions = { old = "o1", new = "o2" }
[migration.forward]
id = "id"
amount_cents = "amount * 100"
[migration.backward]
id     = "id"
amount = "amount_cents / 100"
"#;

const SCHEMA: &str = "
CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL);
CREATE TABLE users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
CREATE TABLE orders (id int PRIMARY KEY, amount int NOT NULL);
CREATE TABLE orders_v2 (id int PRIMARY KEY, amount_cents bigint NOT NULL);
";

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], dualwrite_proxy::pgcluster::free_port().unwrap()))
}

/// `(status code, body)` of a GET on the metrics listener.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// A `dualwrite serve --config FILE` process with its config and rules files.
struct Serve {
    process: ProxyProcess,
    listen: SocketAddr,
    metrics: SocketAddr,
    config_path: PathBuf,
    rules_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Starts the proxy for `db` with `rules` and extra config `settings` (TOML lines after the top-level keys).
    async fn start(db: &TestDb, rules: &str, settings: &str) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("dualwrite.toml");
        let rules_path = dir.path().join("rules.toml");
        let (listen, metrics) = (free_addr(), free_addr());
        std::fs::write(&rules_path, rules).unwrap();
        std::fs::write(&config_path, config_text(listen, metrics, &rules_path, db, settings)).unwrap();
        let process =
            ProxyProcess::start(&["serve", "--config", config_path.to_str().unwrap()], &[], listen).await.unwrap();
        Serve { process, listen, metrics, config_path, rules_path, _dir: dir }
    }

    /// Rewrites the config file with other `settings`.
    fn write_config(&self, db: &TestDb, settings: &str) {
        let text = config_text(self.listen, self.metrics, &self.rules_path, db, settings);
        std::fs::write(&self.config_path, text).unwrap();
    }

    fn log(&self) -> String {
        self.process.output()
    }

    fn url(&self, db: &TestDb) -> String {
        db.url_via(self.listen)
    }

    fn signal(&self, signal: i32) {
        self.process.signal(signal).unwrap();
    }

    async fn scrape(&self) -> String {
        let (status, body) = http_get(self.metrics, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `dualwrite_config_reloads_total{result=...}` (0 before the first).
    async fn reloads(&self, result: &str) -> f64 {
        let prefix = format!("dualwrite_config_reloads_total{{result=\"{result}\"}} ");
        let text = self.scrape().await;
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().unwrap()).unwrap_or(0.0)
    }

    /// Sends SIGHUP and waits until the reload it caused is counted with `result`.
    async fn hup_expecting(&self, result: &str) {
        let before = self.reloads(result).await;
        self.signal(libc::SIGHUP);
        let started = Instant::now();
        while self.reloads(result).await < before + 1.0 {
            assert!(started.elapsed() < DEADLINE, "no reload counted as {result}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/ready` until it answers `status`; returns the body.
    async fn wait_ready_status(&self, status: u16) -> String {
        let started = Instant::now();
        loop {
            if let Ok((got, body)) = http_get(self.metrics, "/ready").await {
                if got == status {
                    return body;
                }
            }
            assert!(started.elapsed() < DEADLINE, "/ready never answered {status}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The config file: the proxy's addresses, `db`, the rules file, the superuser as admin, then `settings`.
fn config_text(listen: SocketAddr, metrics: SocketAddr, rules: &Path, db: &TestDb, settings: &str) -> String {
    format!(
        "listen = \"{listen}\"\nupstream = \"{}\"\nrules = \"{}\"\nmetrics_listen = \"{metrics}\"\nadmin_roles = [\"{}\"]\n{settings}\n",
        db.url(),
        rules.display(),
        db.cluster.superuser(),
    )
}

async fn database_with_tables(cluster: &TestCluster) -> TestDb {
    let db = cluster.create_database().await.unwrap();
    db.connect().await.unwrap().batch_execute(SCHEMA).await.unwrap();
    db
}

/// Ids in `table`, read straight from PostgreSQL.
async fn ids(db: &TestDb, table: &str) -> Vec<i32> {
    let direct = db.connect().await.unwrap();
    let rows = direct.query(&format!("SELECT id FROM {table} ORDER BY id"), &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_rules_to_an_open_transaction_and_its_prepared_statement() {
    let cluster = TestCluster::shared();
    let db = database_with_tables(&cluster).await;
    let serve = Serve::start(&db, USERS_RULES, "").await;
    let mut client = dualwrite_tests::connect(&serve.url(&db)).await.unwrap();
    let insert = client.prepare("INSERT INTO orders (id, amount) VALUES ($1, $2)").await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(&insert, &[&1i32, &5i32]).await.unwrap();

    // The same rules file now also migrates orders; the session is inside its transaction.
    std::fs::write(&serve.rules_path, format!("{USERS_RULES}\n{ORDERS_RULES}")).unwrap();
    serve.hup_expecting("ok").await;
    assert!(serve.log().contains("migration orders_cents added"), "{}", serve.log());

    // The statement prepared before the reload is prepared again under the new rules; a new one too.
    tx.execute(&insert, &[&2i32, &7i32]).await.unwrap();
    tx.batch_execute("INSERT INTO orders (id, amount) VALUES (3, 9)").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids(&db, "orders").await, vec![1, 2, 3]);
    assert_eq!(ids(&db, "orders_v2").await, vec![2, 3], "writes after the reload land in both tables");
    let direct = db.connect().await.unwrap();
    let cents: i64 = direct.query_one("SELECT amount_cents FROM orders_v2 WHERE id = 2", &[]).await.unwrap().get(0);
    assert_eq!(cents, 700, "through the reloaded forward mapping");

    // The new migration is registered in the state like one present at start.
    let status = client.simple_query("DUALWRITE STATUS").await.unwrap();
    let names: Vec<String> = status
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert!(names.contains(&"orders_cents".to_owned()), "{names:?}");
    assert!(client.query_one("SELECT count(*) FROM users", &[]).await.is_ok(), "the session still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_on_sighup_changes_nothing_and_is_counted() {
    let cluster = TestCluster::shared();
    let db = database_with_tables(&cluster).await;
    let serve = Serve::start(&db, &format!("{USERS_RULES}\n{ORDERS_RULES}"), "").await;
    let client = dualwrite_tests::connect(&serve.url(&db)).await.unwrap();
    client.batch_execute("BEGIN; INSERT INTO orders (id, amount) VALUES (1, 1)").await.unwrap();

    // Not TOML.
    std::fs::write(&serve.rules_path, "[[migration]\nname = ").unwrap();
    serve.hup_expecting("error").await;
    // Valid TOML, but a mapping names a column the old table does not have.
    std::fs::write(&serve.rules_path, ORDERS_RULES.replace("amount * 100", "amount_typo * 100")).unwrap();
    serve.hup_expecting("error").await;
    // The config file itself broken (the rules file is fine again).
    std::fs::write(&serve.rules_path, USERS_RULES).unwrap();
    std::fs::write(&serve.config_path, "listen = [").unwrap();
    serve.hup_expecting("error").await;
    assert_eq!(serve.reloads("error").await, 3.0);
    assert_eq!(serve.reloads("ok").await, 0.0);

    let log = serve.log();
    let rules_file = serve.rules_path.display().to_string();
    let config_file = serve.config_path.display().to_string();
    let refusals: Vec<&str> =
        log.lines().filter(|l| l.contains("ERROR") && l.contains("configuration reload refused")).collect();
    assert_eq!(refusals.len(), 3, "{log}");
    assert!(refusals[0].contains(&rules_file), "names the file: {}", refusals[0]);
    assert!(
        refusals[1].contains(&rules_file) && refusals[1].contains("amount_typo"),
        "and the reason: {}",
        refusals[1]
    );
    assert!(refusals[2].contains(&config_file), "{}", refusals[2]);

    // The rules loaded at start are still in force (orders still dual-written), in the same transaction.
    client.batch_execute("INSERT INTO orders (id, amount) VALUES (2, 2); COMMIT").await.unwrap();
    assert_eq!(ids(&db, "orders_v2").await, vec![1, 2]);
    let fresh = dualwrite_tests::connect(&serve.url(&db)).await.unwrap();
    fresh.batch_execute("INSERT INTO orders (id, amount) VALUES (3, 3)").await.unwrap();
    assert_eq!(ids(&db, "orders_v2").await, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_connection_limit_applies_to_new_connections() {
    let cluster = TestCluster::shared();
    let db = database_with_tables(&cluster).await;
    let serve = Serve::start(&db, USERS_RULES, "[limits]\nmax_client_connections = 10").await;
    let first = dualwrite_tests::connect(&serve.url(&db)).await.unwrap();
    let second = dualwrite_tests::connect(&serve.url(&db)).await.unwrap();

    serve.write_config(&db, "[limits]\nmax_client_connections = 2");
    serve.hup_expecting("ok").await;
    assert!(serve.log().contains("limits.max_client_connections: 10 -> 2"), "{}", serve.log());
    let refused = dualwrite_tests::connect(&serve.url(&db)).await.expect_err("a third connection is over the limit");
    assert!(format!("{refused:#}").contains("too many clients"), "{refused:#}");
    // The sessions already open are untouched.
    first.simple_query("SELECT 1").await.unwrap();
    second.simple_query("SELECT 1").await.unwrap();

    serve.write_config(&db, "[limits]\nmax_client_connections = 3");
    serve.hup_expecting("ok").await;
    let third = dualwrite_tests::connect(&serve.url(&db)).await.unwrap();
    third.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_follow_the_upstream_and_shutdown() {
    let cluster = TestCluster::start().await.unwrap();
    let db = database_with_tables(&cluster).await;
    let serve = Serve::start(&db, USERS_RULES, "[limits]\nshutdown_grace_secs = 60").await;
    assert_eq!(http_get(serve.metrics, "/health").await.unwrap().0, 200);
    assert_eq!(serve.wait_ready_status(200).await.trim(), "ready");

    cluster.stop(StopMode::Fast).await.unwrap();
    let reason = serve.wait_ready_status(503).await;
    assert!(reason.starts_with("not ready: "), "{reason}");
    assert_eq!(http_get(serve.metrics, "/health").await.unwrap().0, 200, "alive while the upstream is down");

    cluster.start_again().await.unwrap();
    assert_eq!(serve.wait_ready_status(200).await.trim(), "ready");

    // During the shutdown grace period (a query still runs) the proxy is alive but not ready.
    let busy = dualwrite_tests::connect(&serve.url(&db)).await.unwrap();
    let sleeper = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(600)").await.map(|_| ()) });
    let direct = db.connect().await.unwrap();
    let sleeping = "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)' AND state = 'active'";
    let started = Instant::now();
    while direct.query(sleeping, &[]).await.unwrap().is_empty() {
        assert!(started.elapsed() < DEADLINE, "the query never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serve.signal(libc::SIGTERM);
    assert_eq!(serve.wait_ready_status(503).await.trim(), "not ready: shutting down");
    assert_eq!(http_get(serve.metrics, "/health").await.unwrap().0, 200);
    // The proxy no longer accepts, so the query is cancelled on the server directly.
    direct.batch_execute(&format!("SELECT pg_cancel_backend(pid) FROM ({sleeping}) s")).await.unwrap();
    let cancelled = sleeper.await.unwrap().unwrap_err();
    assert_eq!(cancelled.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{cancelled}");
    let mut serve = serve;
    let status = serve.process.wait().await.unwrap();
    assert!(status.success(), "{status}");
}
