//! Helpers of the pool_* integration tests: a relay config in transaction mode, the server connections the
//! proxy holds, protocol frames a driver sends only in its own order (extended-protocol messages without
//! Sync), and one sample of a metrics scrape.

#![allow(dead_code)]

use dualwrite_proxy::config::PoolMode;
use dualwrite_proxy::Config;
use dualwrite_tests::*;

use super::proxy_support::config_for;

/// A relay to `cluster` in transaction mode with `size` server connections per pool.
pub fn pooled_config(cluster: &TestCluster, size: usize) -> Config {
    let mut config = config_for(cluster);
    config.pool_mode = PoolMode::Transaction;
    config.pool_size = size;
    config
}

/// Connections to `database` made by the proxy: client backends other than the test's direct ones (their
/// application_name is `direct`, see [`connect_direct`]).
pub async fn server_connections(direct: &tokio_postgres::Client, database: &str) -> i64 {
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

/// Waits until at most `at_most` server connections to `database` are left (panics after `limit`). The pool
/// closes an idle connection to make room for a client's authentication, and the backend of a closed
/// connection stays in pg_stat_activity until it has exited, a moment later: counted at once, a burst of
/// logins can show one backend too many that the proxy no longer holds.
pub async fn settle_server_connections(
    direct: &tokio_postgres::Client,
    database: &str,
    at_most: i64,
    limit: std::time::Duration,
) {
    let what = format!("at most {at_most} server connections");
    eventually(limit, &what, || async { server_connections(direct, database).await <= at_most }).await;
}

/// A connection to `db` that bypasses the proxy, named `direct` in pg_stat_activity.
pub async fn connect_direct(db: &TestDb) -> tokio_postgres::Client {
    connect(&format!("{}?application_name=direct", db.url())).await.unwrap()
}

pub async fn connect_all(url: &str, n: usize) -> Vec<tokio_postgres::Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(connect(url).await.unwrap());
    }
    clients
}

/// A Parse, Bind, Describe (statement), Close (statement), Execute or Sync frame.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    frame(b'P', &[name.as_bytes(), &[0], sql.as_bytes(), &[0, 0, 0]].concat())
}

pub fn bind(statement: &str) -> Vec<u8> {
    frame(b'B', &[&[0], statement.as_bytes(), &[0, 0, 0, 0, 0, 0, 0]].concat())
}

pub fn close(statement: &str) -> Vec<u8> {
    frame(b'C', &[b"S", statement.as_bytes(), &[0]].concat())
}

pub fn execute() -> Vec<u8> {
    frame(b'E', &[0, 0, 0, 0, 0])
}

pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

/// The value of the first sample of `series` (name and labels as exported) in a scrape.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}
