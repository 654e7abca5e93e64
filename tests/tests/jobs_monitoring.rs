//! The monitoring files: the Grafana dashboard parses and charts every per-migration metric of the
//! contract, the change-data-capture watch's and the cancel requests', and monitoring/check.sh (promtool check config / check
//! rules / test rules) passes.

use std::collections::HashSet;
use std::path::PathBuf;

fn monitoring() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

#[test]
fn dashboard_parses_and_charts_every_migration_metric() {
    let text = std::fs::read_to_string(monitoring().join("grafana/dashboards/dualwrite.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    assert_eq!(dashboard["uid"], "dualwrite");
    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: HashSet<u64> = panels.iter().map(|p| p["id"].as_u64().expect("panel id")).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .map(|t| t["expr"].as_str().expect("expr"))
        .collect();
    for metric in [
        "dualwrite_phase",
        "dualwrite_backfill_rows_done",
        "dualwrite_backfill_rows_remaining",
        "dualwrite_backfill_progress_ratio",
        "dualwrite_backfill_rows_per_second",
        "dualwrite_backfill_eta_seconds",
        "dualwrite_lag_seconds",
        "dualwrite_shadow_rows_written_total",
        "dualwrite_bypassed_writes_total",
        "dualwrite_cdc_lag_seconds",
        "dualwrite_cdc_lag_bytes",
        "dualwrite_seconds_since_clean_verify",
        "dualwrite_divergent_rows",
        "dualwrite_shadow_reads_total",
        "dualwrite_rejected_statements_total",
        "dualwrite_dual_write_duration_seconds_bucket",
        "dualwrite_table_rows",
        "dualwrite_queries_total",
        "dualwrite_cancel_requests_total",
    ] {
        assert!(exprs.iter().any(|e| e.contains(metric)), "no panel charts {metric}");
    }
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    let output = std::process::Command::new(monitoring().join("check.sh")).output().expect("running check.sh");
    assert!(
        output.status.success(),
        "monitoring/check.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("SUCCESS: 11 rules found"), "{stdout}");
    assert!(stdout.contains("monitoring: ok"), "{stdout}");
}
