//! `dualwrite_table_rows` of a split on a running proxy's /metrics (its own test binary: the Prometheus
//! recorder is process-global): the shadow side counts the new shape a v2 read sees, the targets joined on
//! the key, not the first target's table alone.

use std::path::PathBuf;
use std::time::Duration;

use dualwrite_tests::*;

const MIGRATION: &str = "users_split_tables";

const SCHEMA: &str = "
    CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text);
    CREATE TABLE accounts (id int PRIMARY KEY, email text);
    CREATE TABLE profiles (id int PRIMARY KEY, first_name text, last_name text);
    INSERT INTO users (name, email) SELECT 'Old User' || g, 'OLD' || g || '@Example.org' FROM generate_series(1, 50) g;
";

/// The value of the sample line starting with `prefix`, if any.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

fn table_rows(table: &str) -> String {
    format!("dualwrite_table_rows{{migration=\"{MIGRATION}\",table=\"{table}\"}} ")
}

/// Waits until /metrics shows `old` rows for the old side and `shadow` for the new one.
async fn until_table_rows(metrics: std::net::SocketAddr, old: f64, shadow: f64, what: &str) {
    // The migration gauges come from a refresher that runs every few seconds.
    eventually(Duration::from_secs(60), what, || async {
        let text = scrape_metrics(metrics).await;
        sample(&text, &table_rows("old")) == Some(old) && sample(&text, &table_rows("shadow")) == Some(shadow)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_rows_of_a_split_count_the_targets_joined_on_the_key() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let rules = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rewrite-rules/examples/users_split_tables.toml"),
    )
    .unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy =
        TestProxy::with_rules_toml_and(&db, &rules, |config| config.metrics_listen = Some(metrics)).await.unwrap();
    let admin = proxy.connect(&db).await.unwrap();
    backfill_until_done(&admin, MIGRATION).await;

    // A key only the second target holds: the first target (`accounts`) has 50 rows, the new shape 51.
    direct.batch_execute("INSERT INTO profiles VALUES (999, 'Nobody', 'Here')").await.unwrap();
    until_table_rows(metrics, 50.0, 51.0, "the estimate before a verify: 50 old rows, 51 in the new shape").await;

    let verify = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!((value(&verify, "rows_checked"), value(&verify, "extra")), (Some("50"), Some("1")), "{verify:?}");
    // The catalog counts the old table (one more row, written past the proxy) and the first target after
    // the verify: the old side follows the catalog (51), the new shape still has 51 rows, not the first
    // target's 50. Both figures come from one refresh.
    direct
        .batch_execute("INSERT INTO users (name, email) VALUES ('Direct Write', 'd@x.org'); ANALYZE users, accounts")
        .await
        .unwrap();
    until_table_rows(metrics, 51.0, 51.0, "after the verify and an ANALYZE of the old table and the first target")
        .await;
    proxy.stop().await.unwrap();
}
