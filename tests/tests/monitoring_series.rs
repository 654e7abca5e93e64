//! Every series the Grafana dashboard charts and the alert rules evaluate is emitted by a running proxy:
//! the metric names are taken from the PromQL of `monitoring/grafana/dashboards/dualwrite.json` and
//! `monitoring/alerts.yml` (parsed, not pattern-matched), then a proxy is driven through what each series
//! reports (dual writes, a backfill, a verify, a bypass seen by the change-data-capture watch, a sampled
//! shadow read, a refused statement, a failing one, a cancel request) and its /metrics is scraped until every
//! name is there.
//! Its own test binary: the Prometheus recorder is process-global.

mod cdc_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cdc_support::{column, fixture, rules, status, until_watching, watch_on};
use dualwrite_tests::TestProxy;
use promql_parser::parser::Expr;
use promql_parser::util::{walk_expr, ExprVisitor};

fn monitoring() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

/// The metric names a PromQL expression selects.
fn selected_metrics(promql: &str) -> BTreeSet<String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = std::convert::Infallible;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
            let selector = match expr {
                Expr::VectorSelector(vs) => Some(vs),
                Expr::MatrixSelector(ms) => Some(&ms.vs),
                _ => None,
            };
            if let Some(name) = selector.and_then(|vs| vs.name.clone()) {
                self.0.insert(name);
            }
            Ok(true)
        }
    }
    let expr = promql_parser::parser::parse(promql).unwrap_or_else(|e| panic!("PromQL {promql:?}: {e}"));
    let mut names = Names(BTreeSet::new());
    let Ok(_) = walk_expr(&mut names, &expr);
    names.0
}

/// The PromQL of every dashboard panel target and every alert rule.
fn monitoring_expressions() -> Vec<(String, String)> {
    let mut all = Vec::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring().join("grafana/dashboards/dualwrite.json")).unwrap())
            .unwrap();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            all.push((format!("panel {title:?}"), target["expr"].as_str().expect("expr").to_owned()));
        }
    }
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap()).unwrap();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or("?");
            all.push((format!("rule {name}"), rule["expr"].as_str().expect("expr").to_owned()));
        }
    }
    all
}

/// The series names of an exposition text (`name{labels} value` and `name value` lines).
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn selected_metrics_reads_names_through_functions_aggregations_and_ranges() {
    let names = selected_metrics(
        r#"histogram_quantile(0.99, sum by (le) (rate(a_bucket{m=~"$x"}[5m]))) / on() group_left b > 0 unless c"#,
    );
    assert_eq!(names, BTreeSet::from(["a_bucket".to_owned(), "b".to_owned(), "c".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_and_alerts_use_is_emitted() {
    let expressions = monitoring_expressions();
    assert!(expressions.len() > 20, "{expressions:?}");
    let wanted: BTreeSet<String> = expressions.iter().flat_map(|(_, promql)| selected_metrics(promql)).collect();
    assert!(wanted.iter().all(|name| name.starts_with("dualwrite_")), "{wanted:?}");

    let f = fixture().await;
    f.direct
        .batch_execute("INSERT INTO users SELECT g, 'old' || g || ' x', NULL, 'a1' FROM generate_series(1, 20) g")
        .await
        .unwrap();
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // Every read of the migrated table is compared in both shapes.
    let rules = rules("repair").replace("on_bypass =", "shadow_read_sample = 1.0\non_bypass =");
    let proxy = TestProxy::with_rules_toml_and(&f.db, &rules, |config| {
        watch_on(None)(config);
        config.metrics_listen = Some(metrics_addr);
    })
    .await
    .unwrap();
    let app = proxy.connect(&f.db).await.unwrap();
    until_watching(&f.direct).await;

    app.simple_query("DUALWRITE BACKFILL users_split_name START").await.unwrap();
    dualwrite_tests::eventually(Duration::from_secs(30), "the backfill is done", || async {
        column(&status(&app).await, "backfill_state").as_deref() == Some("done")
    })
    .await;
    for id in 100..105_i64 {
        app.execute("INSERT INTO users VALUES ($1, 'new x', NULL, 'a2')", &[&id]).await.unwrap();
    }
    app.query("SELECT id, name FROM users WHERE id = 100", &[]).await.unwrap();
    let refused = app.execute("UPDATE users SET id = id + 1000 WHERE id = 101", &[]).await.unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("0A000"), "{refused:?}");
    let failed = app.simple_query("SELECT * FROM no_such_table").await.unwrap_err();
    assert_eq!(failed.code().map(|c| c.code()), Some("42P01"), "{failed:?}");
    f.direct.batch_execute("UPDATE users SET name = 'direct y' WHERE id = 1").await.unwrap();
    app.simple_query("DUALWRITE VERIFY users_split_name").await.unwrap();
    // A cancel request, from a session of its own that runs nothing (a late cancel could hit a statement).
    let idle = proxy.connect(&f.db).await.unwrap();
    idle.cancel_token().cancel_query(tokio_postgres::NoTls).await.unwrap();

    // The migration gauges come from a refresher that runs every few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let exposed = exposed_names(&dualwrite_tests::scrape_metrics(metrics_addr).await);
        let missing: Vec<&String> = wanted.iter().filter(|name| !exposed.contains(*name)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let users: Vec<&(String, String)> =
        expressions.iter().filter(|(_, promql)| missing.iter().any(|name| promql.contains(name.as_str()))).collect();
    assert!(missing.is_empty(), "never emitted: {missing:?}, used by {users:#?}");
    proxy.stop().await.unwrap();
}
