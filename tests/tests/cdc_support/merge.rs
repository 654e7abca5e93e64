//! Shared setup of the cdc_merge* tests: the merge `accounts` + `profiles` -> `users` (joined on `id`,
//! rewrite-rules/examples/users_merge_tables.toml) under a migration name of each test's own, a database
//! with its tables and a proxy watching it, and comparisons of the three tables.

use std::time::Duration;

use dualwrite_tests::{TestCluster, TestDb, TestProxy};
use tokio_postgres::Client;

use super::{bypasses, until_watching, watch_on, Recorded};
use dualwrite_tests::eventually;

/// How long a test waits for the watch to record (and repair) a bypass.
pub const REPAIRED_WITHIN: Duration = Duration::from_secs(10);

/// The rules of rewrite-rules/examples/users_merge_tables.toml with `on_bypass`, under a migration name of
/// the test's own (the metrics are process-global when the tests share a process).
pub fn rules(name: &str, on_bypass: &str) -> String {
    format!(
        r#"
[[migration]]
name   = "{name}"
shadow = "public.users"
key    = ["id"]
versions = {{ old = "v1", new = "v2" }}
on_bypass = "{on_bypass}"

[[migration.sources]]
table   = "public.accounts"
present = "email"
forward  = {{ id = "id", email = "lower(email)" }}
backward = {{ id = "id", email = "email" }}

[[migration.sources]]
table   = "public.profiles"
present = "display_name"
forward  = {{ id = "id", display_name = "name", bio = "bio" }}
backward = {{ id = "id", name = "display_name", bio = "bio" }}
"#
    )
}

pub const SCHEMA: &str = "
    CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL);
    CREATE TABLE profiles (id int PRIMARY KEY, name text NOT NULL, bio text);
    CREATE TABLE users (id int PRIMARY KEY, email text, display_name text, bio text);
";

/// Key 1 only in accounts, 2 in both sources, 3 only in profiles.
pub const TWO_SOURCES: &str = "INSERT INTO accounts (id, email) VALUES (1, 'A1@X'), (2, 'A2@X');
     INSERT INTO profiles (id, name, bio) VALUES (2, 'P2', 'b2'), (3, 'P3', 'b3')";

pub struct Fixture {
    pub db: TestDb,
    /// A direct connection (superuser), bypassing the proxy.
    pub direct: Client,
    pub proxy: TestProxy,
    /// A session through the proxy (version v1, the default).
    pub app: Client,
}

/// A database with `SCHEMA` and the rows of `seed` (written before the proxy starts, so neither dual-written
/// nor watched: what a backfill would copy), and a proxy watching it.
pub async fn fixture(name: &str, on_bypass: &str, metrics: Option<std::net::SocketAddr>, seed: &str) -> Fixture {
    let db = TestCluster::shared().create_database().await.expect("database");
    let direct = db.connect().await.expect("connect");
    direct.batch_execute(SCHEMA).await.expect("schema");
    direct.batch_execute(seed).await.expect("seed");
    let proxy = TestProxy::with_rules_toml_and(&db, &rules(name, on_bypass), |config| {
        watch_on(None)(config);
        config.metrics_listen = metrics;
    })
    .await
    .expect("proxy");
    let app = proxy.connect(&db).await.expect("connect through the proxy");
    until_watching(&direct).await;
    Fixture { db, direct, proxy, app }
}

/// Rows of the sources' join mapped forward that the shadow lacks or holds differently, plus the other way.
pub async fn differences(direct: &Client) -> i64 {
    let mapped =
        "SELECT id, lower(email) AS email, name AS display_name, bio FROM accounts FULL JOIN profiles USING (id)";
    let shadow = "SELECT id, email, display_name, bio FROM users";
    let sql = format!(
        "SELECT (SELECT count(*) FROM (({mapped}) EXCEPT ({shadow})) a) \
              + (SELECT count(*) FROM (({shadow}) EXCEPT ({mapped})) b)"
    );
    direct.query_one(&sql, &[]).await.expect("differences").get(0)
}

/// The shadow row of `id`: (email, display_name, bio).
pub async fn shadow_row(direct: &Client, id: i32) -> Option<(Option<String>, Option<String>, Option<String>)> {
    direct
        .query_opt("SELECT email, display_name, bio FROM users WHERE id = $1", &[&id])
        .await
        .expect("shadow row")
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// Runs one direct write and waits until the watch has recorded it as one bypass (of `kind`, on `side`, at
/// key `id`) and repaired it, and the sources' join matches the shadow again.
pub async fn bypass_repaired(f: &Fixture, sql: &str, kind: &str, side: &str, id: i32) {
    let before = bypasses(&f.direct).await.len();
    f.direct.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    eventually(REPAIRED_WITHIN, sql, || async {
        let found = bypasses(&f.direct).await;
        found.len() > before
            && found[before..].iter().all(|(_, _, _, repaired)| *repaired)
            && differences(&f.direct).await == 0
    })
    .await;
    let key = format!(r#"{{"id": {id}}}"#);
    assert_eq!(bypasses(&f.direct).await[before..], [recorded(kind, side, Some(&key), true)], "{sql}");
}

pub fn recorded(kind: &str, side: &str, key: Option<&str>, repaired: bool) -> Recorded {
    (kind.into(), side.into(), key.map(str::to_string), repaired)
}

/// The one metrics address of this test process: the Prometheus recorder is process-global, so tests that
/// share a process (`cargo test`) share its exporter; each test's migration name keeps its series apart.
pub fn metrics_addr() -> std::net::SocketAddr {
    static ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap())
}

pub fn shadow_rows(migration: &str, source: &str) -> String {
    format!("dualwrite_shadow_rows_written_total{{migration=\"{migration}\",source=\"{source}\"}}")
}

pub fn bypassed(migration: &str, kind: &str) -> String {
    format!("dualwrite_bypassed_writes_total{{migration=\"{migration}\",kind=\"{kind}\"}}")
}

/// The value of the sample line starting with `prefix`, if any.
pub fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}
