//! Verify and repair follow the phase, on real Postgres: before cutover the old table is the source of
//! truth (divergences counted relative to it, REPAIR rewrites the shadow through the forward mapping and
//! leaves the old table byte for byte as it was); from cutover on the shadow is (REPAIR rewrites the old
//! table through the backward mapping and never touches the newer shadow rows); at `complete` VERIFY is
//! refused; the scheduled verify skips migrations at `complete` and `off`; a backfill copies only before
//! cutover and pauses when cutover lands while it runs.

mod jobs_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dualwrite_proxy::config::Config;
use dualwrite_proxy::jobs::throttle::Limits;
use dualwrite_proxy::jobs::verify::DivergenceKind;
use dualwrite_proxy::jobs::{
    run_backfill, run_verify, BackfillOptions, JobError, JobRunner, TableMapping, VerifyOptions,
};
use dualwrite_proxy::state::phase::SourceOfTruth;
use dualwrite_proxy::state::{Actor, StateHandle, StateOptions};
use dualwrite_rules::{Phase, RuleSet};
use dualwrite_tests::{eventually, TestProxy};
use jobs_support::*;
use tokio_postgres::Client;

fn keys(report: &dualwrite_proxy::jobs::VerifyReport, kind: DivergenceKind) -> BTreeSet<String> {
    report.divergent.iter().filter(|d| d.kind == kind).map(|d| d.key.clone()).collect()
}

fn set(ids: &[i64]) -> BTreeSet<String> {
    ids.iter().map(|id| format!(r#"{{"id": {id}}}"#)).collect()
}

fn admin() -> Actor {
    Actor { role: "ops".into(), client_addr: None }
}

/// Every row of `table` as text, in key order: what "left alone" is checked against.
async fn rows(client: &Client, table: &str) -> Vec<String> {
    let sql = format!("SELECT t::text FROM {table} t ORDER BY id");
    client.query(&sql, &[]).await.expect("rows").iter().map(|r| r.get(0)).collect()
}

async fn verify_runs(client: &Client) -> i64 {
    client.query_one("SELECT count(*) FROM dualwrite.verify_runs", &[]).await.unwrap().get(0)
}

async fn state(f: &Fixture) -> StateHandle {
    let rules = Arc::new(RuleSet::from_toml(RULES, "test rules").expect("rules"));
    StateHandle::connect(f.config.clone(), rules, StateOptions::default()).await.expect("state")
}

#[tokio::test]
async fn repair_rewrites_the_table_behind_the_source_of_truth_of_each_phase() {
    const ROWS: i64 = 2_000;
    let f = fixture(ROWS).await;
    let state = state(&f).await;
    run_backfill(&f.config, &f.mapping, &BackfillOptions::default(), &|_| {}).await.expect("backfill");
    let options = VerifyOptions { chunk_rows: 300, leaf_rows: 16, ..VerifyOptions::default() };
    let repair = VerifyOptions { repair: true, ..options.clone() };

    // dual_write: the old table is the truth. Rows changed behind the proxy in either table.
    f.client
        .batch_execute(
            "UPDATE users SET name = 'Newer Old' WHERE id = 1;
             UPDATE users_v2 SET first_name = 'Wrong' WHERE id = 2;
             DELETE FROM users WHERE id = 3;
             INSERT INTO users VALUES (5000, 'Only Old', 'o@x', 1);
             INSERT INTO users_v2 (id, first_name, last_name) VALUES (6000, 'Only', 'Shadow');",
        )
        .await
        .unwrap();
    let report = run_verify(&f.config, &f.mapping, &options, &|_, _| {}).await.expect("verify");
    assert_eq!(report.source, SourceOfTruth::Old);
    assert_eq!(keys(&report, DivergenceKind::Different), set(&[1, 2]));
    assert_eq!(keys(&report, DivergenceKind::Missing), set(&[5000]), "in the old table, not in the shadow");
    assert_eq!(keys(&report, DivergenceKind::Extra), set(&[3, 6000]), "in the shadow, not in the old table");
    assert_eq!((report.rows_checked, report.target_rows), (ROWS, ROWS + 1));
    let first = report.divergent.iter().find(|d| d.key == r#"{"id": 1}"#).unwrap();
    assert!(first.expected.as_deref().unwrap().contains("\"Newer\""), "expected = the old row mapped: {first:?}");

    let old_before = rows(&f.client, "users").await;
    let repaired = run_verify(&f.config, &f.mapping, &repair, &|_, _| {}).await.expect("repair");
    assert_eq!(repaired.repaired, 5);
    assert_eq!(rows(&f.client, "users").await, old_before, "a repair in dual_write never writes the old table");
    assert_eq!(independent_difference(&f.client).await, 0);
    let shadow_1: String =
        f.client.query_one("SELECT first_name FROM users_v2 WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(shadow_1, "Newer", "the shadow follows the old table");
    assert!(run_verify(&f.config, &f.mapping, &options, &|_, _| {}).await.unwrap().clean());

    // cutover (allowed: backfill done, last verify clean): the shadow is the truth now.
    let change = state.change_phase(MIGRATION, Phase::Cutover, false, &admin()).await.expect("cutover");
    assert_eq!(change.after, Phase::Cutover);
    f.client
        .batch_execute(
            "UPDATE users_v2 SET first_name = 'Newer', last_name = 'Shadow', email = 'new@shadow' WHERE id = 10;
             UPDATE users SET name = 'Stale Old' WHERE id = 11;
             INSERT INTO users_v2 (id, first_name, last_name, email, score) VALUES (7000, 'Written', 'Shadow', 'w@s', 2.5);
             INSERT INTO users VALUES (8000, 'Only Old', 'o@x', 1);
             DELETE FROM users_v2 WHERE id = 12;",
        )
        .await
        .unwrap();
    let report = run_verify(&f.config, &f.mapping, &options, &|_, _| {}).await.expect("verify in cutover");
    assert_eq!(report.source, SourceOfTruth::Shadow);
    assert_eq!(keys(&report, DivergenceKind::Different), set(&[10, 11]));
    assert_eq!(keys(&report, DivergenceKind::Missing), set(&[7000]), "in the shadow, not in the old table");
    assert_eq!(keys(&report, DivergenceKind::Extra), set(&[12, 8000]), "in the old table, not in the shadow");
    let ten = report.divergent.iter().find(|d| d.key == r#"{"id": 10}"#).unwrap();
    assert!(ten.expected.as_deref().unwrap().contains("new@shadow"), "expected = the shadow row: {ten:?}");
    let shadow_rows: i64 = f.client.query_one("SELECT count(*) FROM users_v2", &[]).await.unwrap().get(0);
    assert_eq!(report.rows_checked, shadow_rows);
    let recorded: (String, i64, i64) = f
        .client
        .query_one("SELECT source, missing, extra FROM dualwrite.verify_runs WHERE id = $1", &[&report.run_id])
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(recorded, ("shadow".to_string(), 1, 2), "the run says what its counts are relative to");

    let shadow_before = rows(&f.client, "users_v2").await;
    // A repair that may only rewrite the shadow (the backfill's, of rows a forced return from off kept) is
    // refused here, before it reads anything.
    let shadow_only = VerifyOptions { required_source: Some(SourceOfTruth::Old), ..repair.clone() };
    let runs = verify_runs(&f.client).await;
    match run_verify(&f.config, &f.mapping, &shadow_only, &|_, _| {}).await {
        Err(JobError::Phase { reason, .. }) => assert!(reason.contains("shadow table is now the source"), "{reason}"),
        other => panic!("a repair requiring the old table as the source in cutover: {other:?}"),
    }
    assert_eq!(verify_runs(&f.client).await, runs, "no run recorded");
    let repaired = run_verify(&f.config, &f.mapping, &repair, &|_, _| {}).await.expect("repair in cutover");
    assert_eq!(repaired.repaired, 5);
    assert_eq!(rows(&f.client, "users_v2").await, shadow_before, "a repair in cutover never writes the shadow");
    let old = |id: i32| {
        let client = &f.client;
        async move {
            client
                .query_opt("SELECT name, email, score::text FROM users WHERE id = $1", &[&(id as i64)])
                .await
                .unwrap()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1), r.get::<_, Option<String>>(2)))
        }
    };
    assert_eq!(old(10).await, Some(("Newer Shadow".into(), Some("new@shadow".into()), Some("1.43".into()))));
    assert_eq!(old(11).await.unwrap().0, "first11 last11", "the stale old row is rewritten from the shadow");
    assert_eq!(old(7000).await, Some(("Written Shadow".into(), Some("w@s".into()), Some("2.50".into()))));
    assert_eq!((old(12).await, old(8000).await), (None, None));
    assert_eq!(independent_difference(&f.client).await, 0);
    assert!(run_verify(&f.config, &f.mapping, &options, &|_, _| {}).await.unwrap().clean());

    // complete: the old table is retired; VERIFY is refused and records no run.
    state.change_phase(MIGRATION, Phase::Complete, false, &admin()).await.expect("complete");
    let before = verify_runs(&f.client).await;
    match run_verify(&f.config, &f.mapping, &repair, &|_, _| {}).await {
        Err(JobError::Phase { reason, .. }) => assert!(reason.contains("complete"), "{reason}"),
        other => panic!("verify at complete: {other:?}"),
    }
    assert_eq!(verify_runs(&f.client).await, before);
}

#[tokio::test]
async fn a_repair_stops_when_the_phase_changed_since_the_scan() {
    let f = fixture(500).await;
    let state = state(&f).await;
    run_backfill(&f.config, &f.mapping, &BackfillOptions::default(), &|_| {}).await.expect("backfill");
    // A divergence the old table (the truth in dual_write) would overwrite into the shadow...
    f.client.batch_execute("UPDATE users_v2 SET first_name = 'Newer' WHERE id = 7").await.unwrap();
    // ... but cutover lands between the scan and the repair: the repair must not write the shadow.
    let mut locker = f.db.connect().await.unwrap();
    let tx = locker.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM dualwrite.migrations WHERE name = $1 FOR UPDATE", &[&MIGRATION]).await.unwrap();
    let verify = tokio::spawn({
        let (config, mapping) = (f.config.clone(), f.mapping.clone());
        async move {
            let repair = VerifyOptions { repair: true, ..VerifyOptions::default() };
            run_verify(&config, &mapping, &repair, &|_, _| {}).await
        }
    });
    // The repair batch waits for the state row's lock: the scan is done once it does.
    eventually(Duration::from_secs(30), "the repair waits for the state row", || async {
        f.client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dualwrite verify' \
                 AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    tx.execute("UPDATE dualwrite.migrations SET phase = 'cutover' WHERE name = $1", &[&MIGRATION]).await.unwrap();
    tx.commit().await.unwrap();
    match verify.await.unwrap() {
        Err(JobError::Phase { reason, .. }) => assert!(reason.contains("changed"), "{reason}"),
        other => panic!("repair across a phase change: {other:?}"),
    }
    let first: String = f.client.query_one("SELECT first_name FROM users_v2 WHERE id = 7", &[]).await.unwrap().get(0);
    assert_eq!(first, "Newer", "the shadow, now the source of truth, was not overwritten");
    // The run is recorded as finished, divergent, with nothing repaired: not left looking as if it runs.
    let run: (bool, bool, i64, i64) = f
        .client
        .query_one(
            "SELECT finished_at IS NOT NULL, clean, different, repaired FROM dualwrite.verify_runs              ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .unwrap();
    assert_eq!(run, (true, false, 1, 0));
    drop(state);
}

async fn shadow_count(client: &Client) -> i64 {
    client.query_one("SELECT count(*) FROM users_v2", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_copies_only_while_the_old_table_is_the_source_of_truth() {
    let f = fixture(3_000).await;
    let state = state(&f).await;
    // In cutover (forced, no backfill yet) a backfill is refused and copies nothing.
    state.change_phase(MIGRATION, Phase::Cutover, true, &admin()).await.unwrap();
    match run_backfill(&f.config, &f.mapping, &BackfillOptions::default(), &|_| {}).await {
        Err(JobError::Phase { reason, .. }) => assert!(reason.contains("cutover"), "{reason}"),
        other => panic!("backfill in cutover: {other:?}"),
    }
    assert_eq!(shadow_count(&f.client).await, 0);
    // The refused run gave its lock back before returning, not whenever the server notices its closed
    // connection: a start right after must not find the backfill busy.
    let advisory: i64 =
        f.client.query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", &[]).await.unwrap().get(0);
    assert_eq!(advisory, 0, "a refused backfill still holds its advisory lock");

    // Back in dual_write it copies; a cutover landing meanwhile pauses it before its next batch.
    state.rollback(MIGRATION, &admin()).await.unwrap();
    let runner = JobRunner::new(f.config.clone());
    let options = BackfillOptions {
        batch_size: 100,
        limits: Limits { rate: Some(1_000), ..Limits::default() },
        ..BackfillOptions::default()
    };
    runner.start(&f.mapping, options).await.unwrap();
    eventually(Duration::from_secs(30), "some batches copied", || async { shadow_count(&f.client).await >= 300 }).await;
    state.change_phase(MIGRATION, Phase::Cutover, true, &admin()).await.unwrap();
    // The change waited for any batch in flight; nothing is copied after it.
    let at_cutover = shadow_count(&f.client).await;
    assert!(at_cutover < 3_000, "the backfill finished before the cutover: pick a lower rate");
    eventually(Duration::from_secs(30), "the backfill paused itself", || async {
        backfill_row(&f.client).await.is_some_and(|(state, _, _, _)| state == "paused")
    })
    .await;
    eventually(Duration::from_secs(30), "the backfill task ended", || async { !runner.running_here(MIGRATION) }).await;
    assert_eq!(shadow_count(&f.client).await, at_cutover);
    let (_, rows_done, _, _) = backfill_row(&f.client).await.unwrap();
    assert_eq!(rows_done, at_cutover, "the checkpoint holds exactly what was copied");
}

const THREE_MIGRATIONS: &str = r#"
[[migration]]
name   = "users_split_name"
table  = "public.users"
shadow = "public.users_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }
[migration.forward]
id = "id"
first_name = "split_part(name, ' ', 1)"
last_name  = "split_part(name, ' ', 2)"
[migration.backward]
id   = "id"
name = "first_name || ' ' || last_name"

[[migration]]
name   = "items_done"
table  = "items"
shadow = "items_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }
[migration.forward]
id = "id"
label = "label"
[migration.backward]
id = "id"
label = "label"

[[migration]]
name   = "tags_off"
table  = "tags"
shadow = "tags_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }
[migration.forward]
id = "id"
label = "label"
[migration.backward]
id = "id"
label = "label"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_verify_skips_migrations_at_complete_and_off() {
    let f = fixture(300).await;
    f.client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, label text); CREATE TABLE items_v2 (id int PRIMARY KEY, label text);
             CREATE TABLE tags (id int PRIMARY KEY, label text); CREATE TABLE tags_v2 (id int PRIMARY KEY, label text);
             INSERT INTO items SELECT g, 'item' || g FROM generate_series(1, 50) g;
             INSERT INTO tags SELECT g, 'tag' || g FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let rules = RuleSet::from_toml(THREE_MIGRATIONS, "three").unwrap();
    // Every backfill is done, so only the phase can keep a migration out of the schedule.
    for name in ["users_split_name", "items_done", "tags_off"] {
        let mapping = TableMapping::from_rules(&rules, name).unwrap();
        run_backfill(&f.config, &mapping, &BackfillOptions::default(), &|_| {}).await.expect("backfill");
    }
    let state = StateHandle::connect(f.config.clone(), Arc::new(rules), StateOptions::default()).await.unwrap();
    state.change_phase("items_done", Phase::Cutover, true, &admin()).await.unwrap();
    state.change_phase("items_done", Phase::Complete, false, &admin()).await.unwrap();
    state.change_phase("tags_off", Phase::Off, true, &admin()).await.unwrap();

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), THREE_MIGRATIONS).unwrap();
    let mut config = Config::relay("127.0.0.1:0".parse().unwrap(), f.db.url());
    config.rules = Some(file.path().to_owned());
    config.control.verify_every_secs = Some(1);
    let proxy = TestProxy::start(config).await.expect("proxy");
    let runs = |name: &'static str| {
        let client = &f.client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM dualwrite.verify_runs WHERE migration = $1 AND finished_at IS NOT NULL",
                    &[&name],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    // The schedule walks the migrations in rules order each round: two finished runs of the first one
    // mean a whole round has passed over the other two.
    eventually(Duration::from_secs(60), "two scheduled verifies of users_split_name", || async {
        runs("users_split_name").await >= 2
    })
    .await;
    assert_eq!(runs("items_done").await, 0, "complete: not verified");
    assert_eq!(runs("tags_off").await, 0, "off: not verified");
    proxy.stop().await.unwrap();
}
