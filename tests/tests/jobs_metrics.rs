//! The migration metrics (README: Metrics) derived from the state tables, read back the way Prometheus
//! sees them: published into a Prometheus recorder and parsed from its text rendering.

mod jobs_support;

use std::collections::HashMap;
use std::time::Duration;

use dualwrite_proxy::jobs::metrics::{publish, MetricsRefresher};
use dualwrite_proxy::jobs::throttle::Limits;
use dualwrite_proxy::jobs::{run_backfill, run_verify, BackfillOptions, VerifyOptions};
use jobs_support::*;
use metrics_exporter_prometheus::PrometheusBuilder;

/// `name{label="v",...} value` lines of the exposition text, keyed by `name{labels}` as rendered.
fn scrape(refresher_figures: &[dualwrite_proxy::jobs::MigrationFigures]) -> HashMap<String, f64> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || publish(refresher_figures));
    let text = handle.render();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value = match value {
                "+Inf" => f64::INFINITY,
                other => other.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
            };
            (series.to_string(), value)
        })
        .collect()
}

fn get(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("{series} missing from {samples:#?}"))
}

const M: &str = r#"migration="users_split_name""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_backfill_and_verify() {
    const ROWS: i64 = 30_000;
    let f = fixture(ROWS).await;
    let mappings = vec![f.mapping.clone()];
    let mut refresher = MetricsRefresher::new();

    // Before anything ran: everything remains, estimated from the catalog.
    let before = scrape(&refresher.gather(&f.client, &mappings).await.unwrap());
    assert_eq!(get(&before, &format!("dualwrite_backfill_rows_done{{{M}}}")), 0.0);
    assert_eq!(get(&before, &format!("dualwrite_backfill_rows_remaining{{{M}}}")), ROWS as f64);
    assert_eq!(get(&before, &format!("dualwrite_backfill_progress_ratio{{{M}}}")), 0.0);
    assert_eq!(get(&before, &format!("dualwrite_backfill_eta_seconds{{{M}}}")), f64::INFINITY);
    assert!(get(&before, &format!("dualwrite_lag_seconds{{{M}}}")).is_nan(), "no change-data-capture watch runs");
    assert_eq!(get(&before, &format!("dualwrite_seconds_since_clean_verify{{{M}}}")), f64::INFINITY);
    assert_eq!(get(&before, &format!("dualwrite_table_rows{{{M},table=\"old\"}}")), ROWS as f64);
    assert_eq!(get(&before, &format!("dualwrite_table_rows{{{M},table=\"shadow\"}}")), 0.0);
    assert!(!before.keys().any(|k| k.starts_with("dualwrite_divergent_rows")), "no verify yet");

    // While a throttled backfill runs: progress between 0 and 1 and a positive rate.
    let options = BackfillOptions {
        batch_size: 1_000,
        limits: Limits { rate: Some(6_000), ..Limits::default() },
        ..BackfillOptions::default()
    };
    let (config, mapping, running_options) = (f.config.clone(), f.mapping.clone(), options.clone());
    let running = tokio::spawn(async move { run_backfill(&config, &mapping, &running_options, &|_| {}).await });
    let mut during = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let figures = refresher.gather(&f.client, &mappings).await.unwrap();
        let figure = &figures[0];
        if figure.rows_per_second > 0.0 && figure.rows_remaining > 0.0 {
            during = Some(scrape(&figures));
            break;
        }
    }
    let during = during.expect("a refresh while the backfill was copying");
    let ratio = get(&during, &format!("dualwrite_backfill_progress_ratio{{{M}}}"));
    assert!(ratio > 0.0 && ratio < 1.0, "ratio {ratio}");
    let done = get(&during, &format!("dualwrite_backfill_rows_done{{{M}}}"));
    let remaining = get(&during, &format!("dualwrite_backfill_rows_remaining{{{M}}}"));
    assert_eq!(done + remaining, ROWS as f64);
    let rate = get(&during, &format!("dualwrite_backfill_rows_per_second{{{M}}}"));
    let eta = get(&during, &format!("dualwrite_backfill_eta_seconds{{{M}}}"));
    assert!((eta - remaining / rate).abs() < 1e-6, "eta {eta} = remaining {remaining} / rate {rate}");
    running.await.unwrap().expect("backfill");

    // Done: nothing remains.
    let after = scrape(&refresher.gather(&f.client, &mappings).await.unwrap());
    assert_eq!(get(&after, &format!("dualwrite_backfill_rows_done{{{M}}}")), ROWS as f64);
    assert_eq!(get(&after, &format!("dualwrite_backfill_rows_remaining{{{M}}}")), 0.0);
    assert_eq!(get(&after, &format!("dualwrite_backfill_progress_ratio{{{M}}}")), 1.0);
    assert_eq!(get(&after, &format!("dualwrite_backfill_rows_per_second{{{M}}}")), 0.0);
    assert_eq!(get(&after, &format!("dualwrite_backfill_eta_seconds{{{M}}}")), 0.0);

    // A verify that finds divergence: the counts by kind; the inventory is exact (as of the verify).
    f.client
        .batch_execute(
            "DELETE FROM users_v2 WHERE id IN (1, 2, 3);
             INSERT INTO users_v2 (id) VALUES (-1);
             UPDATE users_v2 SET email = 'x' WHERE id = 10;",
        )
        .await
        .unwrap();
    run_verify(&f.config, &f.mapping, &VerifyOptions::default(), &|_, _| {}).await.unwrap();
    let diverged = scrape(&refresher.gather(&f.client, &mappings).await.unwrap());
    assert_eq!(get(&diverged, &format!("dualwrite_divergent_rows{{{M},kind=\"missing\"}}")), 3.0);
    assert_eq!(get(&diverged, &format!("dualwrite_divergent_rows{{{M},kind=\"extra\"}}")), 1.0);
    assert_eq!(get(&diverged, &format!("dualwrite_divergent_rows{{{M},kind=\"different\"}}")), 1.0);
    assert_eq!(get(&diverged, &format!("dualwrite_seconds_since_clean_verify{{{M}}}")), f64::INFINITY);
    assert_eq!(get(&diverged, &format!("dualwrite_table_rows{{{M},table=\"old\"}}")), ROWS as f64);
    assert_eq!(get(&diverged, &format!("dualwrite_table_rows{{{M},table=\"shadow\"}}")), (ROWS - 3 + 1) as f64);

    // Repaired, then a clean verify: zero divergence and a fresh clean-verify age.
    let repair = VerifyOptions { repair: true, ..VerifyOptions::default() };
    run_verify(&f.config, &f.mapping, &repair, &|_, _| {}).await.unwrap();
    run_verify(&f.config, &f.mapping, &VerifyOptions::default(), &|_, _| {}).await.unwrap();
    let clean = scrape(&refresher.gather(&f.client, &mappings).await.unwrap());
    for kind in ["missing", "extra", "different"] {
        assert_eq!(get(&clean, &format!("dualwrite_divergent_rows{{{M},kind=\"{kind}\"}}")), 0.0);
    }
    let age = get(&clean, &format!("dualwrite_seconds_since_clean_verify{{{M}}}"));
    assert!((0.0..120.0).contains(&age), "seconds since clean verify {age}");
    assert_eq!(get(&clean, &format!("dualwrite_table_rows{{{M},table=\"shadow\"}}")), ROWS as f64);
}

/// From cutover on a verify counts the shadow (its source of truth) and the divergence relative to it: the
/// old table's rows are the shadow's less the keys only the shadow holds plus those only the old one holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_rows_after_a_verify_in_cutover_are_each_tables_own() {
    const ROWS: i64 = 100;
    let f = fixture(ROWS).await;
    run_backfill(&f.config, &f.mapping, &BackfillOptions::default(), &|_| {}).await.unwrap();
    f.client
        .batch_execute(&format!(
            "INSERT INTO dualwrite.migrations (name, phase) VALUES ('{MIGRATION}', 'cutover');
             DELETE FROM users WHERE id IN (1, 2, 3);
             INSERT INTO users (id, name) VALUES (-1, 'only old');
             ANALYZE users, users_v2;"
        ))
        .await
        .unwrap();
    let report = run_verify(&f.config, &f.mapping, &VerifyOptions::default(), &|_, _| {}).await.unwrap();
    assert_eq!(report.source.as_str(), "shadow");
    assert_eq!((report.rows_checked, report.missing, report.extra), (ROWS, 3, 1));
    let figures = scrape(&MetricsRefresher::new().gather(&f.client, std::slice::from_ref(&f.mapping)).await.unwrap());
    assert_eq!(get(&figures, &format!("dualwrite_table_rows{{{M},table=\"old\"}}")), (ROWS - 3 + 1) as f64);
    assert_eq!(get(&figures, &format!("dualwrite_table_rows{{{M},table=\"shadow\"}}")), ROWS as f64);
}
