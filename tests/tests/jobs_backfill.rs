//! Backfill against real Postgres: a 1,000,000-row table copied while writers update, insert and delete
//! through the rewriter's dual-write statements (then verify and an independent EXCEPT comparison find no
//! difference); a dual-write DELETE and a dual-write UPDATE held open across the batch that copies their
//! row (the cases the module comment of `jobs::backfill` argues); and a backfill killed midway resuming
//! from its checkpoint.

mod jobs_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dualwrite_proxy::jobs::{run_backfill, run_verify, BackfillOptions, BackfillOutcome, VerifyOptions};
use dualwrite_tests::eventually;
use jobs_support::*;

/// Which ids a writer aims at.
#[derive(Clone, Copy)]
enum Aim {
    /// Anywhere in the original table.
    Anywhere,
    /// Just ahead of the backfill's checkpoint: rows of the batch in flight or the next ones.
    AtTheBackfill,
    /// Its own freshly inserted rows.
    OwnInserts,
}

async fn writer(
    url: String,
    aim: Aim,
    seed: u64,
    rows: i64,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let client = dualwrite_tests::connect(&url).await?;
    let update = client.prepare(&dual_write(CLIENT_UPDATE)).await?;
    let insert = client.prepare(&dual_write(CLIENT_INSERT)).await?;
    let delete = client.prepare(&dual_write(CLIENT_DELETE)).await?;
    let mut rng = Rng(seed);
    let mut next_insert = 2_000_000 + seed as i64 * 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        let id = match aim {
            Aim::Anywhere => 1 + rng.below(rows as u64) as i64,
            Aim::AtTheBackfill => {
                let done: i64 = client
                    .query_opt("SELECT rows_done FROM dualwrite.backfill WHERE migration = $1", &[&MIGRATION])
                    .await?
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                (done + 1 + rng.below(25_000) as i64).min(rows)
            }
            Aim::OwnInserts => {
                if rng.below(2) == 0 {
                    next_insert += 1;
                    let name = format!("New{next_insert} Person");
                    client.execute(&insert, &[&next_insert, &name, &"NEW@Example.com"]).await?;
                    ops.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                next_insert - rng.below(50) as i64
            }
        };
        let result = match rng.below(3) {
            0 => client.execute(&delete, &[&id]).await,
            _ => client.execute(&update, &[&format!("Changed{} Name{}", rng.below(1000), id), &id]).await,
        };
        result?;
        ops.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_of_a_million_rows_races_safely_with_dual_writes() {
    const ROWS: i64 = 1_000_000;
    let f = fixture(ROWS).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (seed, aim) in [(1, Aim::Anywhere), (2, Aim::AtTheBackfill), (3, Aim::AtTheBackfill), (4, Aim::OwnInserts)] {
        writers.push(tokio::spawn(writer(f.db.url(), aim, seed, ROWS, stop.clone(), ops.clone())));
    }

    let options = BackfillOptions { batch_size: 10_000, ..BackfillOptions::default() };
    let outcome = run_backfill(&f.config, &f.mapping, &options, &|_| {}).await.expect("backfill");
    let ops_during_backfill = ops.load(Ordering::Relaxed);
    // Writes after the last batch too: the verify below must see them in both tables.
    eventually(Duration::from_secs(60), "writers go on writing after the backfill", || {
        let ops = ops.clone();
        async move { ops.load(Ordering::Relaxed) >= ops_during_backfill + 100 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer task").expect("writer");
    }
    assert!(ops_during_backfill >= 100, "writers overlapped the backfill with only {ops_during_backfill} writes");

    let BackfillOutcome::Done { rows_done } = outcome else { panic!("backfill not done: {outcome:?}") };
    let (state, done_in_table, total, _) = backfill_row(&f.client).await.expect("state row");
    assert_eq!(state, "done");
    assert_eq!(done_in_table, rows_done);
    assert_eq!(total, Some(rows_done));

    let report = run_verify(&f.config, &f.mapping, &VerifyOptions::default(), &|_, _| {}).await.expect("verify");
    let old_rows: i64 = f.client.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(report.rows_checked, old_rows);
    assert_eq!(report.target_rows, old_rows);
    assert!(report.clean(), "divergence after backfill: {:?}", &report.divergent[..report.divergent.len().min(10)]);
    assert_eq!(independent_difference(&f.client).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_killed_midway_resumes_from_its_checkpoint() {
    const ROWS: i64 = 200_000;
    const BATCH: u32 = 2_000;
    let f = fixture(ROWS).await;
    let options = BackfillOptions { batch_size: BATCH, ..BackfillOptions::default() };

    let (config, mapping, first_options) = (f.config.clone(), f.mapping.clone(), options.clone());
    let first = tokio::spawn(async move { run_backfill(&config, &mapping, &first_options, &|_| {}).await });
    eventually(Duration::from_secs(120), "the first run checkpoints 40,000 rows", || async {
        backfill_row(&f.client).await.is_some_and(|(_, done, _, _)| done >= 40_000)
    })
    .await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled(), "the first run ended before it was killed");

    // The killed run's connection (and its advisory lock) goes away shortly after: wait for the lock.
    eventually(Duration::from_secs(60), "the killed run's backfill lock is released", || async {
        f.client
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                     WHERE l.locktype = 'advisory' AND d.datname = current_database())",
                &[],
            )
            .await
            .expect("pg_locks")
            .get(0)
    })
    .await;
    let checkpoints = std::sync::Mutex::new(Vec::new());
    let outcome = run_backfill(&f.config, &f.mapping, &options, &|p| checkpoints.lock().unwrap().push(p.rows_done))
        .await
        .expect("resumed backfill");
    // The checkpoint as the killed run left it: the resumed run starts from it.
    let checkpoints = checkpoints.into_inner().unwrap();
    let first_seen = checkpoints[0];
    assert!(first_seen > 40_000 && first_seen < ROWS, "resumed run restarted: first checkpoint {first_seen}");
    assert_eq!(first_seen % i64::from(BATCH), 0, "checkpoints advance by whole batches");
    assert_eq!(outcome, BackfillOutcome::Done { rows_done: ROWS });
    let (state, rows_done, _, last_key) = backfill_row(&f.client).await.unwrap();
    assert_eq!((state.as_str(), rows_done), ("done", ROWS));
    assert_eq!(last_key.as_deref(), Some(r#"{"id": 200000}"#));
    let shadow: i64 = f.client.query_one("SELECT count(*) FROM users_v2", &[]).await.unwrap().get(0);
    assert_eq!(shadow, ROWS);
    assert_eq!(independent_difference(&f.client).await, 0);

    // A finished backfill started again does nothing.
    let again = run_backfill(&f.config, &f.mapping, &options, &|_| {}).await.unwrap();
    assert_eq!(again, BackfillOutcome::Done { rows_done: ROWS });
}

async fn shadow_row(client: &tokio_postgres::Client, id: i64) -> Option<(String, String)> {
    client
        .query_opt("SELECT first_name, last_name::text FROM users_v2 WHERE id = $1", &[&id])
        .await
        .expect("shadow row")
        .map(|row| (row.get(0), row.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_left_open_across_its_batch_does_not_leave_the_copy_behind() {
    const ROWS: i64 = 50_000;
    const ID: i64 = 30_000;
    let f = fixture(ROWS).await;
    let mut writer = f.db.connect().await.expect("writer");
    let tx = writer.transaction().await.expect("begin");
    // Not committed yet: the batch copying ID still sees the old row, and the DELETE's shadow half found
    // nothing to delete (the copy did not exist in its snapshot). Sent as a simple query, as psql does:
    // then the open transaction holds no snapshot (`backend_xmin` is NULL), only its uncommitted DELETE.
    // (An extended-protocol statement would keep its snapshot in the unnamed portal until the next one.)
    let delete = dual_write(&format!("DELETE FROM users WHERE id = {ID}"));
    let messages = tx.simple_query(&delete).await.expect("dual-write delete");
    assert!(
        messages.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(1))),
        "the dual-write DELETE did not delete the old row"
    );

    let options = BackfillOptions { batch_size: 5_000, ..BackfillOptions::default() };
    let (config, mapping) = (f.config.clone(), f.mapping.clone());
    let backfill = tokio::spawn(async move { run_backfill(&config, &mapping, &options, &|_| {}).await });
    eventually(Duration::from_secs(120), "every batch committed", || async {
        backfill_row(&f.client).await.is_some_and(|(_, done, _, _)| done == ROWS)
    })
    .await;
    // Every batch committed, the copy of the deleted row with them: the race happened.
    assert!(shadow_row(&f.client, ID).await.is_some(), "the batch did not copy the row being deleted");
    tx.commit().await.expect("commit the delete");

    let outcome = backfill.await.expect("backfill task").expect("backfill");
    assert_eq!(outcome, BackfillOutcome::Done { rows_done: ROWS });
    assert_eq!(shadow_row(&f.client, ID).await, None, "the deleted row's copy stayed in the shadow");
    assert_eq!(independent_difference(&f.client).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_left_open_across_its_batch_wins_over_the_copy() {
    const ROWS: i64 = 50_000;
    const ID: i64 = 40_000;
    let f = fixture(ROWS).await;
    let mut writer = f.db.connect().await.expect("writer");
    let tx = writer.transaction().await.expect("begin");
    // Not committed yet: its shadow upsert inserted ID's shadow row, which the batch copying ID (still
    // seeing the pre-update old row) runs into.
    assert_eq!(tx.execute(&dual_write(CLIENT_UPDATE), &[&"Held Open", &ID]).await.expect("dual-write update"), 1);

    let options = BackfillOptions { batch_size: 5_000, ..BackfillOptions::default() };
    let (config, mapping) = (f.config.clone(), f.mapping.clone());
    let backfill = tokio::spawn(async move { run_backfill(&config, &mapping, &options, &|_| {}).await });
    eventually(Duration::from_secs(120), "the backfill waits on the open update's row lock", || async {
        f.client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
                     AND application_name = 'dualwrite backfill' AND wait_event_type = 'Lock')",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0)
    })
    .await;
    tx.commit().await.expect("commit the update");

    let outcome = backfill.await.expect("backfill task").expect("backfill");
    assert_eq!(outcome, BackfillOutcome::Done { rows_done: ROWS });
    assert_eq!(shadow_row(&f.client, ID).await, Some(("Held".into(), "Open".into())));
    assert_eq!(independent_difference(&f.client).await, 0);
}
