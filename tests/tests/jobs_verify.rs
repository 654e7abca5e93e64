//! Verify against real Postgres: rows changed behind the proxy's back (directly in either table) are found
//! by chunk checksums and bisection, exactly those keys and kinds, recorded with samples; REPAIR rewrites
//! them from the old table and the next verify is clean. Also the `dualwrite verify` exit codes.

mod jobs_support;

use std::collections::BTreeSet;

use dualwrite_proxy::jobs::verify::DivergenceKind;
use dualwrite_proxy::jobs::{run_backfill, run_verify, BackfillOptions, VerifyOptions};
use jobs_support::*;

fn keys(report: &dualwrite_proxy::jobs::VerifyReport, kind: DivergenceKind) -> BTreeSet<String> {
    report.divergent.iter().filter(|d| d.kind == kind).map(|d| d.key.clone()).collect()
}

fn set(ids: &[i64]) -> BTreeSet<String> {
    ids.iter().map(|id| format!(r#"{{"id": {id}}}"#)).collect()
}

#[tokio::test]
async fn verify_finds_exactly_the_rows_changed_behind_the_proxy_and_repair_fixes_them() {
    const ROWS: i64 = 50_000;
    let f = fixture(ROWS).await;
    run_backfill(&f.config, &f.mapping, &BackfillOptions::default(), &|_| {}).await.expect("backfill");
    // Small chunks and leaves so the scan spans many chunks and bisects several levels.
    let options = VerifyOptions { chunk_rows: 8_000, leaf_rows: 16, ..VerifyOptions::default() };
    let clean = run_verify(&f.config, &f.mapping, &options, &|_, _| {}).await.expect("verify");
    assert!(clean.clean(), "{:?}", clean.divergent);
    assert_eq!((clean.rows_checked, clean.target_rows), (ROWS, ROWS));

    f.client
        .batch_execute(
            "UPDATE users SET name = 'Changed Behind' WHERE id IN (1, 7777, 30001);
             UPDATE users SET score = score + 0.01 WHERE id = 49999;
             DELETE FROM users WHERE id IN (42, 8000);
             INSERT INTO users VALUES (60000, 'Direct Insert', 'x@y', 1), (0, 'Before First', 'a@b', 2);
             UPDATE users_v2 SET email = 'tampered' WHERE id = 123;
             UPDATE users_v2 SET last_name = NULL WHERE id = 40000;
             INSERT INTO users_v2 (id, first_name) VALUES (70000, 'Only'), (-5, 'Shadow');",
        )
        .await
        .expect("changes behind the proxy");

    let report = run_verify(&f.config, &f.mapping, &options, &|_, _| {}).await.expect("verify");
    assert_eq!(keys(&report, DivergenceKind::Different), set(&[1, 123, 7777, 30001, 40000, 49999]));
    assert_eq!(keys(&report, DivergenceKind::Extra), set(&[-5, 42, 8000, 70000]));
    assert_eq!(keys(&report, DivergenceKind::Missing), set(&[0, 60000]));
    assert_eq!((report.different, report.extra, report.missing), (6, 4, 2));
    assert_eq!(report.rows_checked, ROWS - 2 + 2);
    assert_eq!(report.repaired, 0);

    // Recorded in the state tables, with samples of both sides.
    let row = f
        .client
        .query_one(
            "SELECT rows_checked, missing, extra, different, clean, finished_at IS NOT NULL
             FROM dualwrite.verify_runs WHERE id = $1",
            &[&report.run_id],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2), row.get::<_, i64>(3)),
        (ROWS, 2, 4, 6)
    );
    assert!(!row.get::<_, bool>(4) && row.get::<_, bool>(5));
    let sample = f
        .client
        .query_one(
            "SELECT kind, sample->'expected'->>'email', sample->'actual'->>'email'
             FROM dualwrite.divergent_keys WHERE run_id = $1 AND key = '{\"id\": 123}'",
            &[&report.run_id],
        )
        .await
        .unwrap();
    assert_eq!(sample.get::<_, &str>(0), "different");
    assert_eq!(sample.get::<_, &str>(1), "e123@example.com");
    assert_eq!(sample.get::<_, &str>(2), "tampered");
    let recorded: i64 = f
        .client
        .query_one("SELECT count(*) FROM dualwrite.divergent_keys WHERE run_id = $1", &[&report.run_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 12);

    let repair = VerifyOptions { repair: true, ..options.clone() };
    let repaired = run_verify(&f.config, &f.mapping, &repair, &|_, _| {}).await.expect("verify repair");
    assert_eq!(repaired.divergent_rows(), 12);
    assert_eq!(repaired.repaired, 12);
    assert_eq!(independent_difference(&f.client).await, 0);

    let after = run_verify(&f.config, &f.mapping, &options, &|_, _| {}).await.expect("verify after repair");
    assert!(after.clean(), "{:?}", after.divergent);
    assert_eq!(after.target_rows, after.rows_checked);
}

#[tokio::test]
async fn verify_of_an_empty_shadow_reports_every_row_missing() {
    let f = fixture(3_000).await;
    let options = VerifyOptions { chunk_rows: 1_000, max_recorded: 10, ..VerifyOptions::default() };
    let report = run_verify(&f.config, &f.mapping, &options, &|_, _| {}).await.expect("verify");
    assert_eq!((report.missing, report.extra, report.different), (3_000, 0, 0));
    assert_eq!(report.divergent.len(), 10, "samples are capped, counts are not");
}

/// Parses a `dualwrite verify ...` command line with the real CLI and runs it in-process.
async fn verify_command(args: &[&str]) -> u8 {
    use clap::Parser;
    use dualwrite_proxy::cli::{Cli, Command};
    let cli = Cli::try_parse_from(std::iter::once("dualwrite").chain(args.iter().copied())).expect("command line");
    let Command::Verify(args) = cli.command else { panic!("not a verify command") };
    dualwrite_proxy::jobs::cli::verify_status(args).await
}

#[tokio::test]
async fn verify_command_exits_one_on_divergence_and_zero_when_clean() {
    let f = fixture(2_000).await;
    let rules = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rules.path(), RULES).unwrap();
    let (path, url) = (rules.path().to_str().unwrap().to_string(), f.db.url());
    let verify = ["verify", MIGRATION, "--rules", &path, "--upstream", &url];
    assert_eq!(verify_command(&verify).await, 1, "an empty shadow diverges");
    let with_repair: Vec<&str> = verify.iter().copied().chain(["--repair"]).collect();
    assert_eq!(verify_command(&with_repair).await, 1, "divergence found (and repaired) still exits 1");
    assert_eq!(verify_command(&verify).await, 0, "clean after repair");
    assert_eq!(independent_difference(&f.client).await, 0);
    let unknown = ["verify", "no_such_migration", "--rules", &path, "--upstream", &url];
    assert_eq!(verify_command(&unknown).await, 2);
}
