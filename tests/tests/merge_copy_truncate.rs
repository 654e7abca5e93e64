//! TRUNCATE and COPY FROM STDIN of a merge's sources through the proxy on real Postgres (`accounts` +
//! `profiles` -> `users`, rewrite-rules/examples/users_merge_tables.toml; README: Merging tables): a
//! TRUNCATE of one source nulls its columns in the shadow and drops the rows only it held, of every source
//! empties the shadow, VERIFY is clean after either, and a rolled-back one leaves every table as it was;
//! a TRUNCATE waiting on a concurrent DELETE of the other source's half of a key decides on the shadow
//! row that DELETE left; CASCADE and the extended protocol are refused, changing nothing; COPY into either
//! source merges each row by key as the merge INSERT does (a key the shadow holds gets only this source's
//! columns, a new one the whole row, the other source's columns as its table holds them), VERIFY clean;
//! and a COPY in a rolled-back transaction leaves nothing.

use dualwrite_tests::*;
use tokio_postgres::Client;

mod merge_support;
use merge_support::*;

struct Fixture {
    db: TestDb,
    direct: Client,
    proxy: TestProxy,
    admin: Client,
}

/// The schema, the proxy, and the shadow backfilled (the sources' join, 60 rows).
async fn backfilled() -> Fixture {
    let Merge { db, direct, proxy } = Merge::start(SCHEMA).await;
    let admin = proxy.connect(&db).await.unwrap();
    backfill_until_done(&admin, MIGRATION).await;
    assert_eq!(count(&direct, "SELECT count(*) FROM users").await, 60);
    Fixture { db, direct, proxy, admin }
}

impl Fixture {
    /// VERIFY's `clean` column (and the whole answer, for the failure message).
    async fn verify_clean(&self) -> bool {
        let verify = control(&self.admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
        assert_eq!(value(&verify, "source"), Some("old"), "{verify:?}");
        value(&verify, "clean") == Some("t")
    }

    /// `\copy <target> from pstdin csv` through the proxy: psql's output.
    async fn copy_csv(&self, target: &str, rows: &str) -> String {
        let command = format!("\\copy {target} from pstdin csv");
        let out = psql(&self.proxy.url(&self.db), &["-c", &command], Some(rows)).await.unwrap();
        out.assert_success().stdout.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncating_one_source_nulls_its_columns_drops_the_rows_only_it_held_and_verify_is_clean() {
    let f = backfilled().await;
    let v1 = f.proxy.connect(&f.db).await.unwrap();
    v1.simple_query("TRUNCATE profiles").await.unwrap();
    assert_eq!(count(&f.direct, "SELECT count(*) FROM profiles").await, 0);
    assert_eq!(count(&f.direct, "SELECT count(*) FROM accounts").await, 40);
    assert_eq!(count(&f.direct, "SELECT count(*) FROM users").await, 40, "keys 41-60 only profiles held are gone");
    assert_eq!(shadow(&f.direct, 7).await, row(Some("user7@x.org"), None, None));
    assert_eq!(shadow(&f.direct, 30).await, row(Some("user30@x.org"), None, None), "the profile half nulled");
    assert_eq!(shadow(&f.direct, 50).await, None);
    assert_eq!(differences(&f.direct).await, (0, 0));
    assert!(f.verify_clean().await);

    // Every source in one statement: the shadow is truncated with them.
    v1.simple_query("INSERT INTO profiles VALUES (5, 'Five', NULL)").await.unwrap();
    v1.simple_query("TRUNCATE accounts, profiles").await.unwrap();
    assert_eq!(count(&f.direct, "SELECT count(*) FROM users").await, 0);
    assert_eq!(count(&f.direct, "SELECT count(*) FROM accounts").await, 0);
    assert!(f.verify_clean().await);
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_truncate_of_a_source_leaves_every_table_as_it_was() {
    let f = backfilled().await;
    let v1 = f.proxy.connect(&f.db).await.unwrap();
    let before = contents(&f.direct).await;
    v1.simple_query("BEGIN").await.unwrap();
    v1.simple_query("TRUNCATE accounts").await.unwrap();
    // Inside the transaction the shadow already lost the accounts half (read through the proxy: `users`
    // is no source's name, so it passes through).
    let with_email = count(&v1, "SELECT count(*) FROM users WHERE email IS NOT NULL").await;
    let rows = count(&v1, "SELECT count(*) FROM users").await;
    assert_eq!((with_email, rows), (0, 40), "keys 1-20 only accounts held are gone, the rest lost their email");
    v1.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(contents(&f.direct).await, before);
    assert!(f.verify_clean().await);
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_forms_the_proxy_cannot_mirror_are_refused_and_change_nothing() {
    let f = backfilled().await;
    let v1 = f.proxy.connect(&f.db).await.unwrap();
    let before = contents(&f.direct).await;
    let e = v1.simple_query("TRUNCATE profiles CASCADE").await.unwrap_err();
    let (code, message) = db_error(&e);
    assert_eq!(code, "0A000");
    assert!(message.contains(&format!("migration \"{MIGRATION}\"")), "{message}");
    assert!(message.contains("TRUNCATE ... CASCADE of a source"), "{message}");
    // The extended protocol carries one statement; the TRUNCATE and the shadow's sync are two.
    let e = v1.execute("TRUNCATE profiles", &[]).await.unwrap_err();
    let (code, message) = db_error(&e);
    assert_eq!(code, "0A000");
    assert!(message.contains("send the TRUNCATE as a simple Query"), "{message}");
    assert_eq!(contents(&f.direct).await, before);
    // Every source at once is one statement: the extended protocol carries it.
    v1.execute("TRUNCATE accounts, profiles", &[]).await.unwrap();
    assert_eq!(count(&f.direct, "SELECT count(*) FROM users").await, 0);
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_racing_a_delete_of_the_other_source_decides_on_the_latest_shadow_row() {
    let f = backfilled().await;
    let deleter = f.proxy.connect(&f.db).await.unwrap();
    let truncater = f.proxy.connect(&f.db).await.unwrap();
    assert_eq!(shadow(&f.direct, 30).await, row(Some("user30@x.org"), Some("Name 30"), None));
    // The DELETE of key 30's accounts half holds the shadow row; the TRUNCATE of profiles waits for it,
    // then sees no account left for key 30 and drops the row (deciding on its own snapshot would leave an
    // empty row behind).
    deleter.batch_execute("BEGIN; DELETE FROM accounts WHERE id = 30").await.unwrap();
    let truncating = tokio::spawn(async move { truncater.simple_query("TRUNCATE profiles").await.map(|_| ()) });
    until_blocked(&f.direct, "TRUNCATE profiles", "the TRUNCATE waits on the DELETE").await;
    deleter.batch_execute("COMMIT").await.unwrap();
    truncating.await.unwrap().unwrap();
    assert_eq!(shadow(&f.direct, 30).await, None);
    assert_eq!(shadow(&f.direct, 31).await, row(Some("user31@x.org"), None, None));
    assert_eq!(differences(&f.direct).await, (0, 0));
    assert!(f.verify_clean().await);
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_into_a_source_merges_each_row_by_key_and_verify_is_clean() {
    let f = backfilled().await;
    // A key one source holds that the shadow lacks, as before the backfill reaches it.
    f.direct.batch_execute("INSERT INTO profiles VALUES (600, 'Direct', 'd')").await.unwrap();

    // Keys new to the shadow: the whole row, the profile's columns read from `profiles` as it is.
    assert_eq!(f.copy_csv("accounts (id, email)", "500,Five@X.org\n600,Six@X.org\n").await, "COPY 2\n");
    assert_eq!(shadow(&f.direct, 500).await, row(Some("five@x.org"), None, None));
    assert_eq!(shadow(&f.direct, 600).await, row(Some("six@x.org"), Some("Direct"), Some("d")));

    // Keys 1 and 2 are in the shadow from accounts: only the profile's columns are set; 700 is new.
    assert_eq!(f.copy_csv("profiles (id, name, bio)", "1,Name 1,b1\n2,Name 2,\n700,Seven,b7\n").await, "COPY 3\n");
    assert_eq!(shadow(&f.direct, 1).await, row(Some("user1@x.org"), Some("Name 1"), Some("b1")));
    assert_eq!(shadow(&f.direct, 2).await, row(Some("user2@x.org"), Some("Name 2"), None));
    assert_eq!(shadow(&f.direct, 700).await, row(None, Some("Seven"), Some("b7")));
    assert_eq!(count(&f.direct, "SELECT count(*) FROM users").await, 63);
    assert_eq!(differences(&f.direct).await, (0, 0));
    assert!(f.verify_clean().await);
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_into_a_source_in_a_rolled_back_transaction_leaves_nothing() {
    let f = backfilled().await;
    let before = contents(&f.direct).await;
    // Key 3 is in the shadow (its profile columns would be set), 800 is new.
    let script = "BEGIN;
\\copy profiles (id, name, bio) from stdin (format csv)
3,Name 3,b3
800,Eight,b8
\\.
SELECT count(*) FROM users WHERE display_name IS NOT NULL;
ROLLBACK;
";
    let out = psql(&f.proxy.url(&f.db), &["-At"], Some(script)).await.unwrap();
    assert_eq!(out.assert_success().stdout, "BEGIN\nCOPY 2\n42\nROLLBACK\n", "{}", out.stderr);
    assert_eq!(contents(&f.direct).await, before);
    assert!(f.verify_clean().await);
    f.proxy.stop().await.unwrap();
}
