//! The change-data-capture watch's metrics on /metrics (its own test binary: the Prometheus recorder is
//! process-global): shadow rows by source, bypassed writes by kind, the watch's lag, and
//! `dualwrite_lag_seconds` per migration.

mod cdc_support;

use std::time::Duration;

use cdc_support::{column, fixture, rules, status, until_watching, watch_on};
use dualwrite_tests::{eventually, TestProxy};

/// The value of the sample line starting with `prefix`, if any.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

const M: &str = r#"migration="users_split_name""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rows_by_source_bypasses_by_kind_and_lag_are_exported() {
    let f = fixture().await;
    f.direct
        .batch_execute("INSERT INTO users SELECT g, 'old' || g || ' x', NULL, 'a1' FROM generate_series(1, 50) g")
        .await
        .unwrap();
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = TestProxy::with_rules_toml_and(&f.db, &rules("repair"), |config| {
        watch_on(None)(config);
        config.metrics_listen = Some(metrics_addr);
    })
    .await
    .unwrap();
    let app = proxy.connect(&f.db).await.unwrap();
    until_watching(&f.direct).await;
    app.simple_query("DUALWRITE BACKFILL users_split_name START").await.unwrap();
    eventually(Duration::from_secs(30), "the backfill is done", || async {
        column(&status(&app).await, "backfill_state").as_deref() == Some("done")
    })
    .await;
    for id in 100..110 {
        app.execute("INSERT INTO users VALUES ($1, 'new x', NULL, 'a2')", &[&(id as i64)]).await.unwrap();
    }
    f.direct.batch_execute("UPDATE users SET name = 'direct y' WHERE id = 1").await.unwrap();

    let source = |s: &str| format!("dualwrite_shadow_rows_written_total{{{M},source=\"{s}\"}}");
    eventually(Duration::from_secs(20), "the watch's counters", || async {
        let text = dualwrite_tests::scrape_metrics(metrics_addr).await;
        sample(&text, &source("backfill")) == Some(50.0)
            && sample(&text, &source("dual_write")) == Some(10.0)
            && sample(&text, &source("repair")) == Some(1.0)
            && sample(&text, &format!("dualwrite_bypassed_writes_total{{{M},kind=\"update\"}}")) == Some(1.0)
    })
    .await;
    let text = dualwrite_tests::scrape_metrics(metrics_addr).await;
    assert_eq!(sample(&text, "dualwrite_cdc_leader"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "dualwrite_cdc_fallback"), Some(0.0), "{text}");
    assert!(sample(&text, "dualwrite_cdc_lag_bytes").is_some_and(|b| b >= 0.0), "{text}");
    assert!(sample(&text, "dualwrite_cdc_lag_seconds").is_some_and(|s| (0.0..60.0).contains(&s)), "{text}");
    assert_eq!(sample(&text, &source("bypass")), None, "the bypass hit the old table, not the shadow");
    // The per-migration figure comes from the state tables (refreshed every few seconds).
    eventually(Duration::from_secs(20), "dualwrite_lag_seconds", || async {
        let text = dualwrite_tests::scrape_metrics(metrics_addr).await;
        sample(&text, &format!("dualwrite_lag_seconds{{{M}}}")).is_some_and(|s| (0.0..60.0).contains(&s))
            && sample(&text, &format!("dualwrite_backfill_eta_seconds{{{M}}}")) == Some(0.0)
    })
    .await;
    proxy.stop().await.unwrap();
}
