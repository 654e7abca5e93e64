//! The change-data-capture watch finds every kind of write that bypasses the dual write, records it, and
//! with `on_bypass = "repair"` makes both tables equal again within 5 s; with `alert` it records and leaves
//! the tables as they are; a repair goes the way of the phase stored when it runs, also when the watch
//! still holds the phase it read before a change.

mod cdc_support;

use std::time::Duration;

use cdc_support::{bypasses, column, difference, fixture, proxy, rules, status, until_watching, MIGRATION};
use dualwrite_proxy::cdc::bypass::{handle, MappingCache, Seen, WatchedMigration};
use dualwrite_proxy::cdc::decoder::Lsn;
use dualwrite_proxy::cdc::pairing::{Candidate, Side};
use dualwrite_proxy::cdc::transaction::Op;
use dualwrite_rules::{Phase, RuleSet};
use dualwrite_tests::{control, eventually, TestProxy};

const REPAIRED_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bypass_is_found_and_repaired_within_5_seconds() {
    let f = fixture().await;
    let proxy = proxy(&f, "repair", None).await;
    let app = proxy.connect(&f.db).await.unwrap();
    until_watching(&f.direct).await;
    // Rows written through the proxy: both tables move together, nothing is a bypass.
    for id in 1..=6 {
        app.execute(
            "INSERT INTO users (id, name, email, account) \
             VALUES ($1::int8, 'first' || $1::int8 || ' last', 'U' || $1::int8 || '@X.ORG', 'a' || (1 + $1::int8 % 3))",
            &[&(id as i64)],
        )
        .await
        .unwrap();
    }
    assert_eq!(difference(&f.direct).await, 0);

    // (what bypasses, how, the kind the watch records, the side it hit)
    let cases: Vec<(&str, &str, bool, &str, &str)> = vec![
        ("direct INSERT", "INSERT INTO users VALUES (100, 'direct insert', 'D@X', 'a1')", true, "insert", "old"),
        ("direct UPDATE", "UPDATE users SET name = 'direct update' WHERE id = 1", true, "update", "old"),
        ("direct DELETE", "DELETE FROM users WHERE id = 2", true, "delete", "old"),
        (
            "direct write to the shadow",
            "UPDATE users_v2 SET email = 'shadow@only' WHERE id = 3",
            true,
            "update",
            "shadow",
        ),
        ("cascading FK update", "UPDATE accounts SET code = 'a9' WHERE code = 'a2'", false, "update", "old"),
        ("cascading FK delete", "DELETE FROM accounts WHERE code = 'a3'", false, "delete", "old"),
        ("trigger on another table", "INSERT INTO signups VALUES (200, 'by trigger')", false, "insert", "old"),
        ("function", "SELECT rename_user(1, 'by function')", false, "update", "old"),
        ("writable view", "INSERT INTO user_directory VALUES (300, 'through view', 'V@X')", false, "insert", "old"),
    ];
    for (what, sql, direct, kind, side) in cases {
        let before = bypasses(&f.direct).await.len();
        if direct {
            f.direct.batch_execute(sql).await.unwrap();
        } else {
            // Through the proxy: the statement names no migrated table, so it is relayed as written.
            app.batch_execute(sql).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        eventually(REPAIRED_WITHIN, what, || async {
            let found = bypasses(&f.direct).await;
            found.len() > before
                && found[before..].iter().all(|(_, _, _, repaired)| *repaired)
                && difference(&f.direct).await == 0
        })
        .await;
        let found = bypasses(&f.direct).await;
        assert!(
            found[before..].iter().any(|(k, s, key, _)| k == kind && s == side && key.is_some()),
            "{what}: recorded {:?}",
            &found[before..]
        );
    }

    // COPY straight into the old table.
    let before = bypasses(&f.direct).await.len();
    let sink = f.direct.copy_in::<_, bytes::Bytes>("COPY users (id, name, email) FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    futures::SinkExt::send(&mut sink, bytes::Bytes::from_static(b"400\tcopied one\tC@X\n401\tcopied two\tC@X\n"))
        .await
        .unwrap();
    sink.finish().await.unwrap();
    eventually(REPAIRED_WITHIN, "COPY", || async {
        bypasses(&f.direct).await.len() == before + 2 && difference(&f.direct).await == 0
    })
    .await;

    let status = status(&app).await;
    assert!(column(&status, "cdc_watch").is_some_and(|w| w.starts_with("watching")), "{status:?}");
    assert_eq!(column(&status, "cdc_bypasses_open").as_deref(), Some("0"), "{status:?}");
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_records_the_bypass_and_leaves_the_tables_until_a_verify_repairs_them() {
    let f = fixture().await;
    let proxy = proxy(&f, "alert", None).await;
    let app = proxy.connect(&f.db).await.unwrap();
    until_watching(&f.direct).await;
    app.batch_execute("INSERT INTO users VALUES (1, 'a b', 'E@X', 'a1'), (2, 'c d', 'F@X', 'a2')").await.unwrap();
    f.direct.batch_execute("UPDATE users SET email = 'changed@x' WHERE id = 2").await.unwrap();
    eventually(Duration::from_secs(10), "the bypass is recorded", || async {
        bypasses(&f.direct).await == vec![("update".into(), "old".into(), Some(r#"{"id": 2}"#.into()), false)]
    })
    .await;
    // One row differs, counted once each way.
    assert_eq!(difference(&f.direct).await, 2, "alert does not repair");
    let open = column(&status(&app).await, "cdc_bypasses_open");
    assert_eq!(open.as_deref(), Some("1"));
    app.simple_query("DUALWRITE VERIFY users_split_name REPAIR").await.unwrap();
    assert_eq!(difference(&f.direct).await, 0);
    // The watch notices the key agrees again; the verify's repair is its own (marked), not a bypass.
    eventually(Duration::from_secs(15), "the bypass is resolved", || async {
        column(&status(&app).await, "cdc_bypasses_open").as_deref() == Some("0")
    })
    .await;
    assert_eq!(bypasses(&f.direct).await.len(), 1);
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_through_the_proxy_pairs_and_a_one_sided_truncate_is_a_bypass() {
    let f = fixture().await;
    let proxy = proxy(&f, "alert", None).await;
    let app = proxy.connect(&f.db).await.unwrap();
    until_watching(&f.direct).await;
    app.batch_execute("INSERT INTO users VALUES (1, 'a b', 'E@X', 'a1'), (2, 'c d', NULL, 'a2')").await.unwrap();
    app.batch_execute("TRUNCATE users").await.unwrap();
    assert_eq!(difference(&f.direct).await, 0);
    app.batch_execute("INSERT INTO users VALUES (3, 'e f', NULL, 'a1')").await.unwrap();
    f.direct.batch_execute("TRUNCATE users_v2").await.unwrap();
    eventually(Duration::from_secs(10), "the one-sided TRUNCATE is recorded", || async {
        !bypasses(&f.direct).await.is_empty()
    })
    .await;
    assert_eq!(bypasses(&f.direct).await, vec![("truncate".into(), "shadow".into(), None, false)]);
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_right_after_a_phase_change_goes_the_way_of_the_stored_phase() {
    let f = fixture().await;
    // No watch of the proxy's own: the test hands the bypass to the watch's handling itself, with the
    // phase the watch would still hold just after the change.
    let proxy = TestProxy::with_rules_toml(&f.db, &rules("repair")).await.unwrap();
    let app = proxy.connect(&f.db).await.unwrap();
    app.batch_execute("INSERT INTO users (id, name, email, account) VALUES (1, 'Ada Lovelace', 'ada@x.org', 'a1')")
        .await
        .unwrap();
    control(&app, &format!("DUALWRITE PHASE {MIGRATION} cutover FORCE")).await;
    // In cutover the shadow is the source of truth: a direct write of the old table is undone from it.
    f.direct.batch_execute("UPDATE users SET name = 'Direct Write' WHERE id = 1").await.unwrap();
    assert_ne!(difference(&f.direct).await, 0);

    let rules = RuleSet::from_toml(&rules("repair"), "rules").unwrap();
    let stale = WatchedMigration::new(&rules.migrations[0], Phase::DualWrite);
    let update = Seen {
        candidate: Candidate { migration: 0, side: Side::Old, table: 0, op: Op::Update, key: Some(vec!["1".into()]) },
        xid: 1,
        commit_lsn: Lsn(1),
        committed_at: 0.0,
    };
    let mut client = f.db.connect().await.unwrap();
    let handled = handle(&mut client, &[stale], &mut MappingCache::default(), &[update], false).await.unwrap();
    assert_eq!(handled.found.len(), 1, "{handled:?}");
    let name: String = f.direct.query_one("SELECT name FROM users WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(name, "Ada Lovelace", "the old row is rebuilt from the shadow, as cutover says");
    assert_eq!(difference(&f.direct).await, 0);
    assert_eq!(bypasses(&f.direct).await, vec![("update".into(), "old".into(), Some(r#"{"id": 1}"#.into()), true)]);
    proxy.stop().await.unwrap();
}
