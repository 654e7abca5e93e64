//! `JobRunner`, the entry points of `DUALWRITE BACKFILL ... START|PAUSE|RESUME` and `DUALWRITE VERIFY`:
//! a backfill paused from another instance stops between batches and resumes where it stopped; a second
//! instance cannot start a backfill that one already runs. `dualwrite serve` with
//! `control.verify_every_secs` verifies on its own once the backfill is done.

mod jobs_support;

use std::time::Duration;

use dualwrite_proxy::config::Config;
use dualwrite_proxy::jobs::throttle::Limits;
use dualwrite_proxy::jobs::{run_backfill, BackfillOutcome};
use dualwrite_proxy::jobs::{BackfillOptions, JobError, JobRunner, Started};
use dualwrite_tests::{eventually, TestProxy};
use jobs_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_pauses_and_resumes_across_instances() {
    const ROWS: i64 = 60_000;
    let f = fixture(ROWS).await;
    let options = BackfillOptions {
        batch_size: 1_000,
        limits: Limits { rate: Some(10_000), ..Limits::default() },
        ..BackfillOptions::default()
    };
    let here = JobRunner::new(f.config.clone());
    let elsewhere = JobRunner::new(f.config.clone());

    assert_eq!(here.start(&f.mapping, options.clone()).await.unwrap(), Started::Here);
    assert_eq!(here.start(&f.mapping, options.clone()).await.unwrap(), Started::Here, "already running here");
    match elsewhere.start(&f.mapping, options.clone()).await {
        Err(JobError::Busy { kind: "backfill", .. }) => {}
        other => panic!("a second instance started the same backfill: {other:?}"),
    }
    eventually(Duration::from_secs(60), "5,000 rows copied", || async {
        backfill_row(&f.client).await.is_some_and(|(_, done, _, _)| done >= 5_000)
    })
    .await;

    // PAUSE from the other instance: the state row is locked by each batch, so once PAUSE returned no
    // further batch commits.
    let paused = elsewhere.pause(&f.mapping.migration).await.unwrap();
    assert_eq!(paused.state, "paused");
    // Wait until the runner has looked at the state row after the pause, twice: each look that finds
    // it paused ends its transaction with ROLLBACK and sleeps (it polls), so the second ROLLBACK after
    // the pause proves the runner went round once more without copying.
    let paused_at: String = f.client.query_one("SELECT clock_timestamp()::text", &[]).await.unwrap().get(0);
    let client = &f.client;
    let looks_after_pause = |since: String| async move {
        client
            .query_opt(
                "SELECT state_change::text FROM pg_stat_activity WHERE application_name = 'dualwrite backfill' \
                 AND datname = current_database() AND query = 'ROLLBACK' AND state_change > $1::text::timestamptz",
                &[&since],
            )
            .await
            .expect("pg_stat_activity")
            .map(|r| r.get::<_, String>(0))
    };
    eventually(Duration::from_secs(30), "the paused runner looks at its state row", || async {
        looks_after_pause(paused_at.clone()).await.is_some()
    })
    .await;
    let first_look = looks_after_pause(paused_at).await.expect("the look seen above");
    eventually(Duration::from_secs(30), "the paused runner looks at its state row again", || async {
        looks_after_pause(first_look.clone()).await.is_some()
    })
    .await;
    let (state, still, _, _) = backfill_row(&f.client).await.unwrap();
    assert_eq!((state.as_str(), still), ("paused", paused.rows_done));
    assert!(still < ROWS);
    assert!(here.running_here(&f.mapping.migration), "a paused backfill keeps its runner and lock");

    // RESUME from the other instance: the holder of the lock picks it up.
    assert_eq!(elsewhere.resume(&f.mapping, options.clone()).await.unwrap(), Started::Elsewhere);
    let mut finished = None;
    for _ in 0..600 {
        let status = here.status(&f.mapping.migration).await.unwrap().unwrap();
        if status.state == "done" {
            finished = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let finished = finished.expect("backfill finished after resume");
    assert_eq!((finished.rows_done, finished.rows_total), (ROWS, Some(ROWS)));
    assert_eq!(independent_difference(&f.client).await, 0);

    let report = elsewhere.verify(&f.mapping, false).await.unwrap();
    assert!(report.clean() && report.rows_checked == ROWS, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_verifies_on_its_schedule_once_the_backfill_is_done() {
    const ROWS: i64 = 5_000;
    let f = fixture(ROWS).await;
    let rules = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rules.path(), RULES).unwrap();
    let mut config = Config::relay("127.0.0.1:0".parse().unwrap(), f.db.url());
    config.rules = Some(rules.path().to_owned());
    config.control.verify_every_secs = Some(1);
    let proxy = TestProxy::start(config).await.expect("proxy");

    let outcome = run_backfill(&f.config, &f.mapping, &BackfillOptions::default(), &|_| {}).await.unwrap();
    assert_eq!(outcome, BackfillOutcome::Done { rows_done: ROWS });
    // No verify was asked for: a finished run can only come from the schedule.
    let first_run = || async {
        f.client
            .query_opt(
                "SELECT rows_checked, clean FROM dualwrite.verify_runs WHERE migration = $1 \
                 AND finished_at IS NOT NULL ORDER BY id LIMIT 1",
                &[&MIGRATION],
            )
            .await
            .unwrap()
            .map(|row| (row.get::<_, i64>(0), row.get::<_, bool>(1)))
    };
    eventually(Duration::from_secs(60), "a scheduled verify finishes", || async { first_run().await.is_some() }).await;
    let run = first_run().await.unwrap();
    assert_eq!(run, (ROWS, true));
    proxy.stop().await.unwrap();
}
