//! `JobRunner`, the entry points of `DUALWRITE BACKFILL ... START|PAUSE|RESUME` and `DUALWRITE VERIFY`:
//! a backfill paused from another instance stops between batches and resumes where it stopped; a second
//! instance cannot start a backfill that one already runs.

mod jobs_support;

use std::time::Duration;

use dualwrite_proxy::jobs::throttle::Limits;
use dualwrite_proxy::jobs::{BackfillOptions, JobError, JobRunner, Started};
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
    loop {
        if backfill_row(&f.client).await.is_some_and(|(_, done, _, _)| done >= 5_000) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // PAUSE from the other instance: the state row is locked by each batch, so once PAUSE returned no
    // further batch commits.
    let paused = elsewhere.pause(&f.mapping.migration).await.unwrap();
    assert_eq!(paused.state, "paused");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
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
