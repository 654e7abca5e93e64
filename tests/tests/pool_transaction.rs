//! Transaction mode (`pool_mode = "transaction"`): many clients share a few server connections, one per
//! transaction; prepared statements follow their clients across connections; session state pins; the
//! proxy's own `dualwrite.version` survives the swaps; the wait timeout, cancel, a client killed
//! mid-transaction, `DUALWRITE POOLS` and the pool metrics.

mod proxy_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dualwrite_proxy::config::PoolMode;
use dualwrite_proxy::Config;
use dualwrite_tests::*;
use proxy_support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A relay to `cluster` in transaction mode with `size` server connections per pool.
fn pooled_config(cluster: &TestCluster, size: usize) -> Config {
    let mut config = config_for(cluster);
    config.pool_mode = PoolMode::Transaction;
    config.pool_size = size;
    config
}

/// Connections to `database` made by the proxy: client backends other than the test's direct ones (their
/// application_name is `direct`, see [`connect_direct`]).
async fn server_connections(direct: &tokio_postgres::Client, database: &str) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' \
             AND application_name IS DISTINCT FROM 'direct'",
            &[&database],
        )
        .await
        .unwrap()
        .get(0)
}

/// A connection to `db` that bypasses the proxy, named `direct` in pg_stat_activity.
async fn connect_direct(db: &TestDb) -> tokio_postgres::Client {
    connect(&format!("{}?application_name=direct", db.url())).await.unwrap()
}

async fn connect_all(url: &str, n: usize) -> Vec<tokio_postgres::Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(connect(url).await.unwrap());
    }
    clients
}

#[tokio::test]
async fn forty_clients_run_their_transactions_over_four_server_connections() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = connect_direct(&db).await;
    direct.batch_execute("CREATE TABLE counter (id int PRIMARY KEY, n int); INSERT INTO counter VALUES (1, 0)").await.unwrap();
    let proxy = TestProxy::start(pooled_config(&cluster, 4)).await.unwrap();
    let url = proxy.url(&db);
    let clients = connect_all(&url, 40).await;
    assert!(server_connections(&direct, &db.name).await <= 4, "authentication stayed within the pool");

    let most = Arc::new(AtomicI64::new(0));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (most, watching, database) = (Arc::clone(&most), Arc::clone(&watching), db.name.clone());
        let direct = connect_direct(&db).await;
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                let n = server_connections(&direct, &database).await;
                most.fetch_max(n, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let mut runs = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        runs.push(tokio::spawn(async move {
            for _ in 0..10 {
                client
                    .batch_execute("BEGIN; UPDATE counter SET n = n + 1 WHERE id = 1; SELECT pg_sleep(0.001); COMMIT")
                    .await
                    .unwrap();
                let row = client.query_one("SELECT $1::int + 1", &[&(i as i32)]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i as i32 + 1);
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for run in runs {
        clients.push(run.await.unwrap());
    }
    watching.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    let n: i32 = direct.query_one("SELECT n FROM counter WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 400, "every transaction of every client committed");
    let most = most.load(Ordering::Relaxed);
    assert!((1..=4).contains(&most), "at most the pool's 4 server connections at any time, saw {most}");
    drop(clients);
    proxy.stop().await.unwrap();
}
