//! The watch's safety: its slot exists only while a migration is in dual_write or cutover, a slot that
//! holds back more WAL than allowed is dropped (verify-only until re-armed), a watch that was away resumes
//! from the slot's confirmed position without losing a transaction, another instance takes over when the
//! leader goes, and `wal_level` other than `logical` is an error naming the setting.

mod cdc_support;

use std::time::Duration;

use cdc_support::{
    bypasses, column, difference, fixture, fixture_on, proxy, slot_exists, status, until_the_leader_has_looped,
    until_watching, watch_state,
};
use dualwrite_tests::{default_options, eventually, TestCluster};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_is_dropped_at_complete_and_at_off() {
    for end in ["complete", "off"] {
        let f = fixture().await;
        let proxy = proxy(&f, "alert", None).await;
        let admin = proxy.connect(&f.db).await.unwrap();
        until_watching(&f.direct).await;
        assert!(slot_exists(&f.direct).await);
        if end == "complete" {
            admin.simple_query("DUALWRITE PHASE users_split_name cutover FORCE").await.unwrap();
            admin.simple_query("DUALWRITE PHASE users_split_name complete").await.unwrap();
        } else {
            admin.simple_query("DUALWRITE PHASE users_split_name off FORCE").await.unwrap();
        }
        eventually(WAIT, "the slot is dropped", || async { !slot_exists(&f.direct).await }).await;
        eventually(WAIT, "the watch is idle", || async {
            watch_state(&f.direct).await.is_some_and(|(state, _)| state == "idle")
        })
        .await;
        assert_eq!(column(&status(&admin).await, "cdc_watch").as_deref(), Some("not watched"), "{end}");
        proxy.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_was_away_resumes_from_the_confirmed_position_and_a_standby_takes_over() {
    let f = fixture().await;
    let first = proxy(&f, "repair", None).await;
    until_watching(&f.direct).await;
    first
        .connect(&f.db)
        .await
        .unwrap()
        .batch_execute("INSERT INTO users VALUES (1, 'a b', 'E@X', 'a1')")
        .await
        .unwrap();
    first.stop().await.unwrap();
    // No watch runs: the slot keeps the changes.
    f.direct.batch_execute("UPDATE users SET name = 'while away' WHERE id = 1").await.unwrap();
    let leader = proxy(&f, "repair", None).await;
    eventually(WAIT, "the bypass made while no watch ran is found and repaired", || async {
        bypasses(&f.direct).await.len() == 1 && difference(&f.direct).await == 0
    })
    .await;
    // A standby; the leader goes away; the standby takes over and finds the next bypass.
    let standby = proxy(&f, "repair", None).await;
    leader.stop().await.unwrap();
    f.direct.batch_execute("DELETE FROM users WHERE id = 1").await.unwrap();
    eventually(WAIT, "the standby finds the bypass after the leader left", || async {
        bypasses(&f.direct).await.len() == 2 && difference(&f.direct).await == 0
    })
    .await;
    let kinds: Vec<String> = bypasses(&f.direct).await.into_iter().map(|b| b.0).collect();
    assert_eq!(kinds, vec!["update", "delete"]);
    standby.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_over_its_wal_limit_is_dropped_verify_only_until_re_armed_and_an_operator_can_pause_it() {
    let f = fixture().await;
    let proxy = proxy(&f, "alert", Some(1)).await;
    let admin = proxy.connect(&f.db).await.unwrap();
    until_watching(&f.direct).await;
    // Several MiB of WAL on an unwatched table: the slot's restart position trails them.
    f.direct
        .batch_execute(
            "CREATE TABLE filler (x text);
             INSERT INTO filler SELECT repeat(md5(g::text), 40) FROM generate_series(1, 4000) g;",
        )
        .await
        .unwrap();
    eventually(WAIT, "the watch falls back", || async {
        watch_state(&f.direct).await.is_some_and(|(state, _)| state == "fallback")
    })
    .await;
    eventually(WAIT, "the slot is dropped", || async { !slot_exists(&f.direct).await }).await;
    let (_, detail) = watch_state(&f.direct).await.unwrap();
    assert!(detail.as_deref().is_some_and(|d| d.contains("max_retained_wal_mb")), "{detail:?}");
    let shown = column(&status(&admin).await, "cdc_watch").unwrap_or_default();
    assert!(shown.starts_with("fallback: "), "{shown}");
    // It stays off (no slot filling the disk) until an operator re-arms it: the leader goes round its
    // loop, re-reading the state, and creates no slot.
    until_the_leader_has_looped(&f.direct, 2).await;
    assert!(!slot_exists(&f.direct).await);
    f.direct.batch_execute("UPDATE dualwrite.cdc_watch SET state = 'idle'").await.unwrap();
    until_watching(&f.direct).await;
    assert!(slot_exists(&f.direct).await);
    // Paused by an operator while it streams: the slot goes, and the leader does not overwrite the state.
    f.direct.batch_execute("UPDATE dualwrite.cdc_watch SET state = 'fallback'").await.unwrap();
    eventually(WAIT, "a paused watch drops its slot", || async { !slot_exists(&f.direct).await }).await;
    // It stays paused while the leader goes round its loop.
    until_the_leader_has_looped(&f.direct, 2).await;
    assert!(!slot_exists(&f.direct).await);
    assert_eq!(watch_state(&f.direct).await.map(|(state, _)| state).as_deref(), Some("fallback"));
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_other_than_logical_is_an_error_naming_the_setting() {
    let cluster = TestCluster::start_with(default_options().setting("wal_level", "replica")).await.unwrap();
    let f = fixture_on(&cluster).await;
    let proxy = proxy(&f, "alert", None).await;
    let admin = proxy.connect(&f.db).await.unwrap();
    eventually(WAIT, "the watch reports the setting", || async {
        watch_state(&f.direct).await.is_some_and(|(state, detail)| {
            state == "error"
                && detail.is_some_and(|d| d.contains("wal_level is replica") && d.contains("wal_level = logical"))
        })
    })
    .await;
    let shown = column(&status(&admin).await, "cdc_watch").unwrap_or_default();
    assert!(shown.contains("wal_level = logical"), "{shown}");
    assert!(!slot_exists(&f.direct).await);
    proxy.stop().await.unwrap();
}
