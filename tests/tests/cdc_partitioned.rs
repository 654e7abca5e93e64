//! The change-data-capture watch on a partitioned old table: changes are published under the partitioned
//! table's name (`publish_via_partition_root`), so the proxy's dual writes pair as for a plain table and a
//! write naming a partition directly is found as a bypass of the old table.

mod cdc_support;

use std::time::Duration;

use cdc_support::{bypasses, difference, rules_accepting, until_watching, watch_on};
use dualwrite_tests::{eventually, TestCluster, TestProxy};

const SCHEMA: &str = "
CREATE TABLE users (id bigint, name text NOT NULL, email text, account text, PRIMARY KEY (id))
    PARTITION BY RANGE (id);
CREATE TABLE users_low PARTITION OF users FOR VALUES FROM (0) TO (100);
CREATE TABLE users_high PARTITION OF users FOR VALUES FROM (100) TO (MAXVALUE);
CREATE TABLE users_v2 (id bigint PRIMARY KEY, first_name text, last_name text, email text, account text);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_naming_a_partition_of_the_old_table_is_a_bypass_and_the_proxys_writes_are_not() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let rules = rules_accepting("alert", r#""inheritance:public.users_low", "inheritance:public.users_high""#);
    let proxy = TestProxy::with_rules_toml_and(&db, &rules, watch_on(None)).await.unwrap();
    let app = proxy.connect(&db).await.unwrap();
    until_watching(&direct).await;
    // Through the proxy, into both partitions: dual writes, never bypasses.
    app.batch_execute(
        "INSERT INTO users VALUES (1, 'a b', 'E@X', 'a1'), (150, 'c d', 'F@X', 'a2');
         UPDATE users SET email = 'G@X' WHERE id = 150;",
    )
    .await
    .unwrap();
    assert_eq!(difference(&direct).await, 0);
    // A marker write after them: once the watch has recorded it, it has handled the proxy's writes too.
    direct.batch_execute("UPDATE users_low SET email = 'changed@x' WHERE id = 1").await.unwrap();
    eventually(Duration::from_secs(10), "the partition's write is recorded as a bypass", || async {
        !bypasses(&direct).await.is_empty()
    })
    .await;
    assert_eq!(
        bypasses(&direct).await,
        vec![("update".into(), "old".into(), Some(r#"{"id": 1}"#.into()), false)],
        "the write naming the partition, as one of the old table; the proxy's writes paired"
    );
    proxy.stop().await.unwrap();
}
