//! The change-data-capture watch on a merge migration (`accounts` + `profiles` -> `users`, joined on `id`):
//! the proxy's own writes of either source (INSERT, UPDATE, upsert, a DELETE of one source while the other
//! holds the key, TRUNCATE of one source or of both) are never reported as bypasses; a direct INSERT,
//! UPDATE or DELETE of a source is found, counted in `dualwrite_bypassed_writes_total` and repaired until
//! the shadow is the sources FULL JOINed on the key again; a direct write to the shadow is found and its
//! row rebuilt from the sources; a direct TRUNCATE of a source is recorded (without a key, left to a
//! verify) where the proxy's is not; and a DELETE of one source through the proxy whose key the shadow
//! does not hold yet (before the backfill) is not a bypass, though the key then differs until the backfill;
//! nor are writes naming the shadow, which the proxy mirrors into the sources.

mod cdc_support;

use std::time::Duration;

use cdc_support::merge::{
    bypass_repaired, bypassed, differences, fixture, metrics_addr, recorded, sample, shadow_row, shadow_rows,
    REPAIRED_WITHIN, TWO_SOURCES,
};
use cdc_support::{bypasses, column, status};
use dualwrite_tests::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_either_source_through_the_proxy_truncates_included_are_never_bypasses() {
    const M: &str = "cdc_merge_proxy_writes";
    let metrics = metrics_addr();
    let f = fixture(M, "alert", Some(metrics), "").await;
    let app = &f.app;
    for sql in [
        "INSERT INTO accounts (id, email) VALUES (1, 'A1@X'), (2, 'A2@X'), (3, 'A3@X'), (4, 'A4@X')",
        "INSERT INTO profiles (id, name, bio) VALUES (3, 'P3', 'b3'), (4, 'P4', NULL), (5, 'P5', 'b5'), (6, 'P6', 'b6')",
        "UPDATE accounts SET email = 'New3@X' WHERE id = 3",
        "UPDATE profiles SET bio = 'new bio' WHERE id = 3",
        "INSERT INTO profiles (id, name) VALUES (2, 'P2') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
        "INSERT INTO profiles (id, name) VALUES (2, 'P2 again') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
        // One source's row deleted while the other holds the key: the shadow row's columns are nulled.
        "DELETE FROM profiles WHERE id = 3",
        "DELETE FROM accounts WHERE id = 4",
        // The last source of a key: the shadow row goes.
        "DELETE FROM accounts WHERE id = 1",
        "BEGIN; INSERT INTO accounts (id, email) VALUES (8, 'A8@X'); UPDATE profiles SET bio = NULL WHERE id = 5; COMMIT",
        // A TRUNCATE of one source: its sync nulls that source's columns and drops rows only it held.
        "TRUNCATE profiles",
        // Again, when the shadow holds none of its rows: the sync changes nothing.
        "TRUNCATE profiles",
        "INSERT INTO profiles (id, name) VALUES (2, 'P2 back'), (9, 'P9')",
        // Both sources: the shadow is truncated with them.
        "TRUNCATE accounts, profiles",
        "INSERT INTO accounts (id, email) VALUES (7, 'A7@X')",
        "INSERT INTO profiles (id, name, bio) VALUES (7, 'P7', 'b7')",
    ] {
        app.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(differences(&f.direct).await, 0);
    assert_eq!(shadow_row(&f.direct, 7).await, Some((Some("a7@x".into()), Some("P7".into()), Some("b7".into()))));

    // A bypass committed after all of the above: the watch reads transactions in commit order, so once it
    // is recorded every write before it has been paired, and it must be the only one recorded.
    f.direct.batch_execute("UPDATE accounts SET email = 'Direct@X' WHERE id = 7").await.unwrap();
    eventually(REPAIRED_WITHIN, "the later direct UPDATE is recorded", || async {
        !bypasses(&f.direct).await.is_empty()
    })
    .await;
    assert_eq!(bypasses(&f.direct).await, vec![recorded("update", "old", Some(r#"{"id": 7}"#), false)]);
    // Paired by the pairing itself, not only found equal afterwards: every shadow row written (25, the
    // TRUNCATE syncs' included) is counted as a dual write, none as a bypass of the shadow.
    eventually(Duration::from_secs(5), "the shadow rows are counted", || async {
        sample(&dualwrite_tests::scrape_metrics(metrics).await, &shadow_rows(M, "dual_write")) == Some(25.0)
    })
    .await;
    let text = dualwrite_tests::scrape_metrics(metrics).await;
    assert_eq!(sample(&text, &shadow_rows(M, "bypass")), None, "{text}");
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_writes_of_the_shadow_through_the_proxy_are_never_bypasses() {
    const M: &str = "cdc_merge_mirrored_writes";
    let metrics = metrics_addr();
    let f = fixture(M, "alert", Some(metrics), "").await;
    // The shadow is written by name once the backfill has finished (before, such writes are refused).
    dualwrite_tests::backfill_until_done(&f.app, M).await;
    for sql in [
        "INSERT INTO users (id, email, display_name, bio) VALUES (1, 'a1@x', 'P1', 'b1'), (2, 'a2@x', NULL, NULL)",
        "UPDATE users SET bio = 'edited' WHERE id = 1",
        // A source's columns all NULL: its row is deleted, the other source's kept.
        "UPDATE users SET email = NULL WHERE id = 1",
        "UPDATE users SET display_name = 'P2' WHERE id = 2",
        "DELETE FROM users WHERE id = 2",
    ] {
        f.app.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(differences(&f.direct).await, 0);
    assert_eq!(shadow_row(&f.direct, 1).await, Some((None, Some("P1".into()), Some("edited".into()))));

    // The sentinel bypass, as above: once it is recorded, every write before it has been paired.
    f.direct.batch_execute("UPDATE profiles SET bio = 'direct' WHERE id = 1").await.unwrap();
    eventually(REPAIRED_WITHIN, "the later direct UPDATE is recorded", || async {
        !bypasses(&f.direct).await.is_empty()
    })
    .await;
    assert_eq!(bypasses(&f.direct).await, vec![recorded("update", "old", Some(r#"{"id": 1}"#), false)]);
    let text = dualwrite_tests::scrape_metrics(metrics).await;
    assert_eq!(sample(&text, &shadow_rows(M, "bypass")), None, "{text}");
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_of_a_source_are_found_counted_and_repaired_into_the_merged_row() {
    const M: &str = "cdc_merge_source_bypass";
    let metrics = metrics_addr();
    let f = fixture(M, "repair", Some(metrics), "").await;
    f.app
        .batch_execute(
            "INSERT INTO accounts (id, email) VALUES (1, 'A1@X'), (2, 'A2@X'), (3, 'A3@X');
             INSERT INTO profiles (id, name, bio) VALUES (2, 'P2', 'b2'), (3, 'P3', 'b3'), (4, 'P4', 'b4')",
        )
        .await
        .unwrap();
    assert_eq!(differences(&f.direct).await, 0);

    // (the direct write, the kind and key recorded, the shadow row of the key once repaired)
    type Shadow = Option<(Option<String>, Option<String>, Option<String>)>;
    let some = |e: Option<&str>, n: Option<&str>, b: Option<&str>| -> Shadow {
        Some((e.map(str::to_string), n.map(str::to_string), b.map(str::to_string)))
    };
    let cases: Vec<(&str, &str, i32, Shadow)> = vec![
        ("INSERT INTO accounts VALUES (10, 'Direct10@X')", "insert", 10, some(Some("direct10@x"), None, None)),
        (
            "INSERT INTO profiles VALUES (1, 'P1 direct', NULL)",
            "insert",
            1,
            some(Some("a1@x"), Some("P1 direct"), None),
        ),
        (
            "UPDATE profiles SET bio = 'direct bio' WHERE id = 3",
            "update",
            3,
            some(Some("a3@x"), Some("P3"), Some("direct bio")),
        ),
        // One source deleted while the other holds the key: its columns nulled in the shadow row.
        ("DELETE FROM profiles WHERE id = 2", "delete", 2, some(Some("a2@x"), None, None)),
        // The only source of the key: the shadow row goes.
        ("DELETE FROM profiles WHERE id = 4", "delete", 4, None),
    ];
    for (sql, kind, id, expected) in cases {
        bypass_repaired(&f, sql, kind, "old", id).await;
        assert_eq!(shadow_row(&f.direct, id).await, expected, "{sql}");
    }

    let counted = |kind: &str| bypassed(M, kind);
    eventually(Duration::from_secs(5), "the bypass counters", || async {
        let text = dualwrite_tests::scrape_metrics(metrics).await;
        sample(&text, &counted("insert")) == Some(2.0)
            && sample(&text, &counted("update")) == Some(1.0)
            && sample(&text, &counted("delete")) == Some(2.0)
    })
    .await;
    // The repairs wrote the shadow (marked as the watch's own), and the proxy's dual writes were seen.
    eventually(Duration::from_secs(5), "the shadow-row counters", || async {
        let text = dualwrite_tests::scrape_metrics(metrics).await;
        sample(&text, &shadow_rows(M, "repair")) == Some(5.0)
            && sample(&text, &shadow_rows(M, "dual_write")) == Some(6.0)
    })
    .await;
    let status = status(&f.app).await;
    assert!(column(&status, "cdc_watch").is_some_and(|w| w.starts_with("watching")), "{status:?}");
    assert_eq!(column(&status, "cdc_bypasses").as_deref(), Some("5"), "{status:?}");
    assert_eq!(column(&status, "cdc_bypasses_open").as_deref(), Some("0"), "{status:?}");
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_of_the_shadow_are_found_and_the_row_rebuilt_from_the_sources() {
    let f = fixture("cdc_merge_shadow_bypass", "repair", None, "").await;
    f.app.batch_execute(TWO_SOURCES).await.unwrap();
    assert_eq!(differences(&f.direct).await, 0);
    let merged_2 = Some((Some("a2@x".to_string()), Some("P2".to_string()), Some("b2".to_string())));
    let cases: Vec<(&str, &str, i32)> = vec![
        ("UPDATE users SET bio = 'shadow only', email = NULL WHERE id = 2", "update", 2),
        ("DELETE FROM users WHERE id = 3", "delete", 3),
        ("INSERT INTO users (id, email) VALUES (50, 'nobody@x')", "insert", 50),
    ];
    for (sql, kind, id) in cases {
        bypass_repaired(&f, sql, kind, "shadow", id).await;
    }
    assert_eq!(shadow_row(&f.direct, 2).await, merged_2);
    assert_eq!(shadow_row(&f.direct, 3).await, Some((None, Some("P3".into()), Some("b3".into()))));
    assert_eq!(shadow_row(&f.direct, 50).await, None);
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_truncate_of_a_source_is_recorded_where_the_proxys_is_not() {
    let f = fixture("cdc_merge_truncate", "repair", None, "").await;
    f.app.batch_execute(TWO_SOURCES).await.unwrap();
    f.app.batch_execute("TRUNCATE profiles").await.unwrap();
    assert_eq!(differences(&f.direct).await, 0);
    // Straight to the source: the shadow still holds the accounts' columns.
    f.direct.batch_execute("TRUNCATE accounts").await.unwrap();
    eventually(REPAIRED_WITHIN, "the direct TRUNCATE is recorded", || async { !bypasses(&f.direct).await.is_empty() })
        .await;
    // Only the direct one (read after the proxy's, in commit order), without a key: not repaired by the
    // watch, but by a verify.
    assert_eq!(bypasses(&f.direct).await, vec![recorded("truncate", "old", None, false)]);
    assert_ne!(differences(&f.direct).await, 0);
    f.app.simple_query("DUALWRITE VERIFY cdc_merge_truncate REPAIR").await.unwrap();
    assert_eq!(differences(&f.direct).await, 0);
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_of_one_source_whose_key_the_shadow_lacks_yet_is_not_a_bypass() {
    // Key 40 is held by both sources and not copied to the shadow yet (no backfill ran).
    let seed = "INSERT INTO accounts VALUES (40, 'A40@X'); INSERT INTO profiles VALUES (40, 'P40', NULL)";
    let f = fixture("cdc_merge_delete_before_backfill", "alert", None, seed).await;
    // The dual write finds no shadow row to change, so only the source changes: a candidate, which the
    // tables then show as the key missing from the shadow, the backfill's to copy, not as a bypass.
    f.app.batch_execute("DELETE FROM profiles WHERE id = 40").await.unwrap();
    assert_eq!(shadow_row(&f.direct, 40).await, None);
    // A bypass committed after it: once it is recorded, the DELETE has been judged (commit order).
    f.direct.batch_execute("INSERT INTO accounts VALUES (99, 'Direct@X')").await.unwrap();
    eventually(REPAIRED_WITHIN, "the later direct INSERT is recorded", || async {
        !bypasses(&f.direct).await.is_empty()
    })
    .await;
    assert_eq!(bypasses(&f.direct).await, vec![recorded("insert", "old", Some(r#"{"id": 99}"#), false)]);
    // Keys 40 and 99 differ (alert leaves them): the backfill copies 40, the verify repairs 99.
    assert_eq!(differences(&f.direct).await, 2);
    f.proxy.stop().await.unwrap();
}
