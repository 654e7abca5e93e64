//! /metrics serves the proxy figures of README's Metrics section (its own test binary: the Prometheus recorder
//! is process-global).

mod proxy_support;

use std::time::Duration;

use dualwrite_tests::*;
use proxy_support::*;

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

#[tokio::test]
async fn metrics_endpoint_reports_connections_queries_bytes_and_errors() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let metrics_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut config = config_for(&cluster);
    config.metrics_listen = Some(metrics_addr);
    let proxy = TestProxy::start(config).await.unwrap();
    let client = connect(&db.url_via(proxy.addr())).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    for i in 0..5 {
        client.query_one("SELECT $1::int4", &[&i]).await.unwrap();
    }
    let err = client.simple_query("SELECT * FROM no_such_table").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"), "{err}");

    let text = dualwrite_tests::scrape_metrics(metrics_addr).await;
    assert_eq!(sample(&text, "dualwrite_client_connections"), 1.0, "{text}");
    assert_eq!(sample(&text, "dualwrite_upstream_connections"), 1.0);
    assert!(sample(&text, "dualwrite_queries_total{route=\"passthrough\"}") >= 7.0);
    assert!(sample(&text, "dualwrite_bytes_total{direction=\"to_upstream\"}") > 0.0);
    assert!(sample(&text, "dualwrite_bytes_total{direction=\"to_client\"}") > 0.0);
    assert!(sample(&text, "dualwrite_query_duration_seconds_count") >= 7.0);
    assert!(text.contains("dualwrite_query_duration_seconds_bucket{le=\""), "a histogram, not a summary");
    assert_eq!(sample(&text, "dualwrite_errors_total{sqlstate=\"42P01\"}"), 1.0);

    drop(client);
    eventually(Duration::from_secs(10), "the closed session leaves the connection gauges", || async {
        let text = dualwrite_tests::scrape_metrics(metrics_addr).await;
        sample(&text, "dualwrite_client_connections") == 0.0 && sample(&text, "dualwrite_upstream_connections") == 0.0
    })
    .await;
    proxy.stop().await.unwrap();
}
