//! The change-data-capture watch on a merge migration in cutover (`accounts` + `profiles` -> `users`, the
//! shadow the source of truth): writes through the proxy, v1 writes of either source (synced into the
//! shadow) and v2 writes of the shadow (mirrored into the sources), are never bypasses; a direct write of a
//! source is found, counted in `dualwrite_bypassed_writes_total` and undone, that key's source rows
//! rebuilt from the shadow, which stays as it was; a direct write of the shadow is found, counted and
//! kept, the sources rebuilt to match it. Each test first waits for the watch to restart its stream for
//! the migration in cutover (it used to drop a merge in cutover from what it watches).

mod cdc_support;

use std::time::Duration;

use cdc_support::merge::{
    bypass_repaired, bypassed, differences, fixture, metrics_addr, recorded, sample, shadow_row, shadow_rows, Fixture,
    REPAIRED_WITHIN, TWO_SOURCES,
};
use cdc_support::{bypasses, slot_walsender};
use dualwrite_tests::{backfill_until_done, connect, control, eventually, scrape_metrics, value};
use tokio_postgres::Client;

/// Backfills the fixture's migration, verifies it and moves it to cutover, as an operator would, then waits
/// until the watch streams for the migration in cutover: it restarts its stream when the phase of a watched
/// migration changes, so a new walsender streams the slot (had it stopped watching the merge, it would
/// drop the slot instead). Writes before that would be read by the stream of the dual_write phase.
async fn cut_over(f: &Fixture, migration: &str) {
    backfill_until_done(&f.app, migration).await;
    let verify = control(&f.app, &format!("DUALWRITE VERIFY {migration}")).await;
    assert_eq!(value(&verify, "clean"), Some("t"), "{verify:?}");
    // The fixture waited until the watch streams, and nothing since changed what it watches.
    let before = slot_walsender(&f.direct).await;
    assert!(before.is_some(), "the slot is streamed");
    let cut = control(&f.app, &format!("DUALWRITE PHASE {migration} cutover")).await;
    assert_eq!(value(&cut, "phase"), Some("cutover"), "{cut:?}");
    eventually(Duration::from_secs(10), "the watch streams the migration in cutover", || async {
        slot_walsender(&f.direct).await.is_some_and(|pid| Some(pid) != before)
    })
    .await;
}

/// Every row of `table`, as text in key order.
async fn rows(direct: &Client, table: &str) -> String {
    let sql = format!("SELECT coalesce(string_agg(t::text, ';' ORDER BY t.id), '') FROM {table} t");
    direct.query_one(&sql, &[]).await.expect("rows").get(0)
}

/// Waits until the bypass counters of `migration` read `expected` ((kind, count); a kind left out must
/// have no sample).
async fn until_counted(metrics: std::net::SocketAddr, migration: &str, expected: &[(&str, f64)]) {
    eventually(Duration::from_secs(5), "the bypass counters", || async {
        let text = scrape_metrics(metrics).await;
        ["insert", "update", "delete", "truncate"].iter().all(|kind| {
            let want = expected.iter().find(|(k, _)| k == kind).map(|(_, n)| *n);
            sample(&text, &bypassed(migration, kind)) == want
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_the_sources_and_of_the_shadow_through_the_proxy_in_cutover_are_never_bypasses() {
    const M: &str = "cdc_merge_cutover_proxy_writes";
    let metrics = metrics_addr();
    let f = fixture(M, "alert", Some(metrics), TWO_SOURCES).await;
    cut_over(&f, M).await;
    let v2 = connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", f.proxy.url(&f.db))).await.unwrap();
    let v1 = &f.app;
    for (session, sql) in [
        // v1 writes of the sources, synced into the shadow.
        (v1, "INSERT INTO accounts (id, email) VALUES (10, 'A10@X'), (11, 'A11@X')"),
        (v1, "INSERT INTO profiles (id, name, bio) VALUES (10, 'P10', 'b10'), (12, 'P12', NULL)"),
        (v1, "UPDATE accounts SET email = 'New2@X' WHERE id = 2"),
        (v1, "UPDATE profiles SET bio = 'new bio' WHERE id = 2"),
        (v1, "INSERT INTO profiles (id, name) VALUES (11, 'P11') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name"),
        // One source's row deleted while the other holds the key, then the last source of a key.
        (v1, "DELETE FROM profiles WHERE id = 10"),
        (v1, "DELETE FROM accounts WHERE id = 1"),
        // v2 writes of the shadow, mirrored into the sources.
        (&v2, "INSERT INTO users (id, email, display_name, bio) VALUES (20, 'a20@x', 'P20', 'b20')"),
        (&v2, "INSERT INTO users (id, email) VALUES (21, 'a21@x')"),
        (&v2, "UPDATE users SET bio = 'edited' WHERE id = 20"),
        // A source's columns all NULL: its row is deleted, the other source's kept.
        (&v2, "UPDATE users SET email = NULL WHERE id = 20"),
        // A column of a source that lacks the key: its row is created.
        (&v2, "UPDATE users SET display_name = 'P21' WHERE id = 21"),
        (&v2, "DELETE FROM users WHERE id = 21"),
        (&v2, "DELETE FROM users WHERE id = 3"),
    ] {
        session.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(differences(&f.direct).await, 0);
    assert_eq!(shadow_row(&f.direct, 20).await, Some((None, Some("P20".into()), Some("edited".into()))));
    assert_eq!(rows(&f.direct, "profiles").await, "(2,P2,\"new bio\");(11,P11,);(12,P12,);(20,P20,edited)");

    // A bypass committed after all of the above: the watch reads transactions in commit order, so once it
    // is recorded every write before it has been paired, and it must be the only one recorded and counted.
    f.direct.batch_execute("UPDATE accounts SET email = 'Direct@X' WHERE id = 2").await.unwrap();
    eventually(REPAIRED_WITHIN, "the later direct UPDATE is recorded", || async {
        !bypasses(&f.direct).await.is_empty()
    })
    .await;
    assert_eq!(bypasses(&f.direct).await, vec![recorded("update", "old", Some(r#"{"id": 2}"#), false)]);
    until_counted(metrics, M, &[("update", 1.0)]).await;
    let text = scrape_metrics(metrics).await;
    assert_eq!(sample(&text, &shadow_rows(M, "bypass")), None, "{text}");
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_write_of_a_source_in_cutover_is_found_counted_and_undone_from_the_shadow() {
    const M: &str = "cdc_merge_cutover_source_bypass";
    let metrics = metrics_addr();
    let f = fixture(M, "repair", Some(metrics), TWO_SOURCES).await;
    cut_over(&f, M).await;
    let shadow = rows(&f.direct, "users").await;
    for (sql, kind, id) in [
        // A row of a source for a key the shadow holds without that source's columns: deleted.
        ("INSERT INTO accounts VALUES (3, 'Direct3@X')", "insert", 3),
        ("UPDATE profiles SET bio = 'direct bio' WHERE id = 2", "update", 2),
        // The only source of a key, and one of two: each restored from the shadow row.
        ("DELETE FROM accounts WHERE id = 1", "delete", 1),
        ("DELETE FROM profiles WHERE id = 2", "delete", 2),
        // A key the shadow lacks: deleted.
        ("INSERT INTO profiles VALUES (30, 'P30', NULL)", "insert", 30),
    ] {
        bypass_repaired(&f, sql, kind, "old", id).await;
        assert_eq!(rows(&f.direct, "users").await, shadow, "the shadow is not written: {sql}");
    }
    // Rebuilt from the shadow through the backward mapping: account 1 came back, and account 2 (a repair
    // rebuilds every source of its key) was rewritten, both with the shadow's lowered email.
    assert_eq!(rows(&f.direct, "accounts").await, "(1,a1@x);(2,a2@x)");
    assert_eq!(rows(&f.direct, "profiles").await, "(2,P2,b2);(3,P3,b3)");
    until_counted(metrics, M, &[("insert", 2.0), ("update", 1.0), ("delete", 2.0)]).await;
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_write_of_the_shadow_in_cutover_is_found_counted_and_the_sources_rebuilt_from_it() {
    const M: &str = "cdc_merge_cutover_shadow_bypass";
    let metrics = metrics_addr();
    let f = fixture(M, "repair", Some(metrics), TWO_SOURCES).await;
    cut_over(&f, M).await;
    for (sql, kind, id) in [
        // The account's columns NULL: its row goes; the profile takes the new bio.
        ("UPDATE users SET bio = 'shadow only', email = NULL WHERE id = 2", "update", 2),
        ("DELETE FROM users WHERE id = 3", "delete", 3),
        ("INSERT INTO users (id, email, display_name) VALUES (50, 'new@x', 'P50')", "insert", 50),
    ] {
        bypass_repaired(&f, sql, kind, "shadow", id).await;
    }
    // The shadow's rows stand as written directly; the sources follow them.
    assert_eq!(shadow_row(&f.direct, 2).await, Some((None, Some("P2".into()), Some("shadow only".into()))));
    assert_eq!(shadow_row(&f.direct, 3).await, None);
    assert_eq!(shadow_row(&f.direct, 50).await, Some((Some("new@x".into()), Some("P50".into()), None)));
    assert_eq!(rows(&f.direct, "accounts").await, "(1,A1@X);(50,new@x)");
    assert_eq!(rows(&f.direct, "profiles").await, "(2,P2,\"shadow only\");(50,P50,)");
    until_counted(metrics, M, &[("insert", 1.0), ("update", 1.0), ("delete", 1.0)]).await;
    eventually(Duration::from_secs(5), "the shadow rows the bypasses wrote are counted", || async {
        sample(&scrape_metrics(metrics).await, &shadow_rows(M, "bypass")) == Some(3.0)
    })
    .await;
    f.proxy.stop().await.unwrap();
}
