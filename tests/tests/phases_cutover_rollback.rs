//! Cutover and rollback through the proxy on real Postgres: v1 and v2 sessions insert, update and delete
//! in `cutover` (simple and extended protocol), VERIFY counts against the shadow and finds the tables
//! equal, ROLLBACK returns to `dual_write` keeping every row written in cutover in both tables, and VERIFY
//! counts against the old table and finds them equal again; the tables themselves are compared row by row
//! under the mapping in both directions, and each session reads the other version's rows in its shape.

use std::path::PathBuf;

use dualwrite_tests::*;
use tokio_postgres::Client;

const MIGRATION: &str = "users_split_name";

fn rules_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rewrite-rules/examples/users_split_name.toml")
}

const SCHEMA: &str = "
    CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text);
    CREATE TABLE users_v2 (id int PRIMARY KEY DEFAULT nextval('users_id_seq'), first_name text, last_name text, email text);
    INSERT INTO users (name, email) SELECT 'Old User' || g, 'OLD' || g || '@Example.org' FROM generate_series(1, 100) g;
";

/// (old rows mapped forward that the shadow lacks or holds differently, shadow rows that no old row maps
/// to): the two tables compared under the mapping, each direction on its own.
async fn differences(direct: &Client) -> (i64, i64) {
    let mapped = "SELECT id, split_part(name, ' ', 1) AS first_name, split_part(name, ' ', 2) AS last_name, \
                  lower(email) AS email FROM users";
    let shadow = "SELECT id, first_name, last_name, email FROM users_v2";
    let count = |sql: String| async move { direct.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) };
    (
        count(format!("SELECT count(*) FROM (({mapped}) EXCEPT ({shadow})) d")).await,
        count(format!("SELECT count(*) FROM (({shadow}) EXCEPT ({mapped})) d")).await,
    )
}

/// (name, email) of an old row and (first_name, last_name, email) of its shadow row, read directly.
type Both = (Option<(String, String)>, Option<(String, String, String)>);

async fn both(direct: &Client, id: i32) -> Both {
    let old = direct
        .query_opt("SELECT name, email FROM users WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)));
    let shadow = direct
        .query_opt("SELECT first_name, last_name, email FROM users_v2 WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2)));
    (old, shadow)
}

fn row(name: &str, email: &str, first: &str, last: &str, lower: &str) -> Both {
    let s = |v: &str| v.to_string();
    (Some((s(name), s(email))), Some((s(first), s(last), s(lower))))
}

/// A fresh database holding `SCHEMA`, a direct session to it, a proxy on the example rules and an admin
/// session through the proxy.
async fn started() -> (TestDb, Client, TestProxy, Client) {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = TestProxy::with_rules_file(&db, rules_path()).await.unwrap();
    let admin = proxy.connect(&db).await.unwrap();
    (db, direct, proxy, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_writes_by_both_versions_survive_rollback_and_verify_clean_both_ways() {
    let (db, direct, proxy, admin) = started().await;
    let v1 = proxy.connect(&db).await.unwrap();
    let v2 = connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url(&db))).await.unwrap();

    backfill_until_done(&admin, MIGRATION).await;
    let verify = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!((value(&verify, "source"), value(&verify, "clean")), (Some("old"), Some("t")), "{verify:?}");
    let cut = control(&admin, &format!("DUALWRITE PHASE {MIGRATION} cutover")).await;
    assert_eq!(value(&cut, "phase"), Some("cutover"));

    // Writes in cutover by a v1 session ...
    let a: i32 = v1
        .query_one("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id", &[&"Cut One", &"C1@X.org"])
        .await
        .unwrap()
        .get(0);
    v1.simple_query("UPDATE users SET email = 'Five@X.org' WHERE id = 5").await.unwrap();
    assert_eq!(v1.execute("DELETE FROM users WHERE id = $1", &[&6i32]).await.unwrap(), 1);
    // ... and by a v2 session, in the new shape, including a row the v1 session wrote.
    let b: i32 = v2
        .query_one(
            "INSERT INTO users (first_name, last_name, email) VALUES ('Cut', 'Two', 'c2@x.org') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    v2.simple_query("UPDATE users SET last_name = 'Changed' WHERE id = 7").await.unwrap();
    assert_eq!(v2.execute("UPDATE users SET first_name = $1 WHERE id = $2", &[&"Cutx", &a]).await.unwrap(), 1);
    v2.simple_query("DELETE FROM users WHERE id = 8").await.unwrap();

    let verify = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!((value(&verify, "source"), value(&verify, "clean")), (Some("shadow"), Some("t")), "{verify:?}");
    assert_eq!(value(&verify, "rows_checked"), Some("100"), "the shadow's rows: 100, 2 inserted, 2 deleted");

    let rolled = control(&admin, &format!("DUALWRITE ROLLBACK {MIGRATION}")).await;
    assert_eq!((value(&rolled, "phase_before"), value(&rolled, "phase")), (Some("cutover"), Some("dual_write")));

    // Every row written in cutover is in both tables, as its writer left it.
    assert_eq!(both(&direct, a).await, row("Cutx One", "C1@X.org", "Cutx", "One", "c1@x.org"));
    assert_eq!(both(&direct, b).await, row("Cut Two", "c2@x.org", "Cut", "Two", "c2@x.org"));
    assert_eq!(both(&direct, 5).await, row("Old User5", "Five@X.org", "Old", "User5", "five@x.org"));
    assert_eq!(both(&direct, 7).await, row("Old Changed", "OLD7@Example.org", "Old", "Changed", "old7@example.org"));
    assert_eq!(both(&direct, 6).await, (None, None));
    assert_eq!(both(&direct, 8).await, (None, None));
    assert_eq!(differences(&direct).await, (0, 0), "old mapped forward vs shadow, both directions");

    let verify = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!((value(&verify, "source"), value(&verify, "clean")), (Some("old"), Some("t")), "{verify:?}");
    assert_eq!(value(&verify, "rows_checked"), Some("100"), "the old table's rows");

    // Back in dual_write each session reads its own version's table, the other version's rows included.
    let name: String = v1.query_one("SELECT name FROM users WHERE id = $1", &[&b]).await.unwrap().get(0);
    assert_eq!(name, "Cut Two");
    let first: String = v2.query_one("SELECT first_name FROM users WHERE id = $1", &[&a]).await.unwrap().get(0);
    assert_eq!(first, "Cutx");
    // And writes go on keeping both tables equal.
    v1.execute("UPDATE users SET name = 'Rolled Back' WHERE id = $1", &[&b]).await.unwrap();
    assert_eq!(differences(&direct).await, (0, 0));
    proxy.stop().await.unwrap();
}

/// A migration turned `off` and back to `dual_write`: writes made while it was off reached the old table
/// alone (Ada renamed, a row deleted), so the shadow's rows from before are stale, and a backfill copies
/// only the keys the shadow lacks. Entering `dual_write` again is refused while the shadow holds rows
/// (55000, naming it and the remedy), and after `TRUNCATE` the backfill starts over: new-shape writes wait
/// for it, the shadow is rebuilt from the old table, and a verify from before no longer counts for cutover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_turned_off_and_on_again_rebuilds_its_shadow_before_the_new_version_uses_it() {
    let (db, direct, proxy, admin) = started().await;
    backfill_until_done(&admin, MIGRATION).await;
    let verify = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!(value(&verify, "clean"), Some("t"), "{verify:?}");

    control(&admin, &format!("DUALWRITE PHASE {MIGRATION} off FORCE")).await;
    let v1 = proxy.connect(&db).await.unwrap();
    v1.batch_execute("UPDATE users SET name = 'Ada King' WHERE id = 1; DELETE FROM users WHERE id = 2").await.unwrap();
    assert_eq!(both(&direct, 1).await.1, Some(("Old".into(), "User1".into(), "old1@example.org".into())));

    let e = admin
        .simple_query(&format!("DUALWRITE PHASE {MIGRATION} dual_write"))
        .await
        .expect_err("a stale shadow is not put back in service");
    let (code, message) = db_error(&e);
    assert_eq!(code, "55000", "{message}");
    assert!(
        message.contains("its shadow public.users_v2 holds rows") && message.contains("TRUNCATE public.users_v2"),
        "{message}"
    );
    assert_eq!(value(&status_of(&admin, MIGRATION).await, "phase"), Some("off"));

    direct.batch_execute("TRUNCATE users_v2").await.unwrap();
    control(&admin, &format!("DUALWRITE PHASE {MIGRATION} dual_write")).await;
    let status = status_of(&admin, MIGRATION).await;
    assert_eq!(
        (
            value(&status, "backfill_state"),
            value(&status, "backfill_rows_done"),
            value(&status, "reads_wait_for_backfill")
        ),
        (Some("idle"), Some("0"), Some("t")),
        "the backfill starts over: {status:?}"
    );
    let e = admin
        .simple_query(&format!("DUALWRITE PHASE {MIGRATION} cutover"))
        .await
        .expect_err("the verify from before does not count");
    assert!(db_error(&e).1.contains("the backfill is not done"), "{:?}", db_error(&e));
    let v2 = connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url(&db))).await.unwrap();
    let e = v2.batch_execute("UPDATE users SET email = 'ada@king.org' WHERE id = 1").await.expect_err("waits");
    assert_eq!(db_error(&e).0, "0A000", "{:?}", db_error(&e));

    backfill_until_done(&admin, MIGRATION).await;
    let e = admin
        .simple_query(&format!("DUALWRITE PHASE {MIGRATION} cutover"))
        .await
        .expect_err("a verify after the backfill is needed");
    assert!(db_error(&e).1.contains("no verify since the backfill finished"), "{:?}", db_error(&e));
    v2.batch_execute("UPDATE users SET email = 'ada@king.org' WHERE id = 1").await.unwrap();
    assert_eq!(both(&direct, 1).await, row("Ada King", "ada@king.org", "Ada", "King", "ada@king.org"));
    assert_eq!(differences(&direct).await, (0, 0), "the shadow is the old table mapped forward");
    let verify = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!(value(&verify, "clean"), Some("t"), "{verify:?}");
    let cut = control(&admin, &format!("DUALWRITE PHASE {MIGRATION} cutover")).await;
    assert_eq!(value(&cut, "phase"), Some("cutover"), "{cut:?}");
    proxy.stop().await.unwrap();
}

/// The same return with FORCE: the shadow's rows are kept, and the backfill repairs the stale ones (as
/// VERIFY REPAIR does) before it counts as done, so the new version never uses them. Until then its writes
/// wait, as for any backfill; after it, the shadow is the old table mapped forward, with the row renamed
/// while off renamed and the row deleted meanwhile gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_return_from_off_keeps_the_shadow_and_its_backfill_repairs_the_stale_rows_before_it_is_done() {
    let (db, direct, proxy, admin) = started().await;
    backfill_until_done(&admin, MIGRATION).await;
    control(&admin, &format!("DUALWRITE PHASE {MIGRATION} off FORCE")).await;
    let v1 = proxy.connect(&db).await.unwrap();
    v1.batch_execute("UPDATE users SET name = 'Ada King' WHERE id = 1; DELETE FROM users WHERE id = 2").await.unwrap();
    assert_eq!(differences(&direct).await, (1, 2), "row 1 stale and row 2 left behind in the shadow");

    control(&admin, &format!("DUALWRITE PHASE {MIGRATION} dual_write FORCE")).await;
    let status = status_of(&admin, MIGRATION).await;
    assert_eq!(value(&status, "backfill_state"), Some("idle"), "the backfill starts over: {status:?}");
    let v2 = connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url(&db))).await.unwrap();
    let e = v2.batch_execute("UPDATE users SET email = 'ada@king.org' WHERE id = 1").await.expect_err("waits");
    assert_eq!(db_error(&e).0, "0A000", "{:?}", db_error(&e));
    assert_eq!(differences(&direct).await, (1, 2), "nothing repaired before the backfill runs");

    backfill_until_done(&admin, MIGRATION).await;
    assert_eq!(differences(&direct).await, (0, 0), "the kept rows are repaired by the time the backfill is done");
    assert_eq!(both(&direct, 2).await, (None, None));
    v2.batch_execute("UPDATE users SET email = 'ada@king.org' WHERE id = 1").await.unwrap();
    assert_eq!(both(&direct, 1).await, row("Ada King", "ada@king.org", "Ada", "King", "ada@king.org"));
    // The repair's verify ran before the backfill finished: cutover still asks for one after it.
    let e = admin
        .simple_query(&format!("DUALWRITE PHASE {MIGRATION} cutover"))
        .await
        .expect_err("a verify after the backfill is needed");
    assert!(db_error(&e).1.contains("no verify since the backfill finished"), "{:?}", db_error(&e));

    // A later return without rows kept (the shadow emptied) does not repair again.
    control(&admin, &format!("DUALWRITE PHASE {MIGRATION} off FORCE")).await;
    direct.batch_execute("TRUNCATE users_v2").await.unwrap();
    control(&admin, &format!("DUALWRITE PHASE {MIGRATION} dual_write")).await;
    let runs = "SELECT count(*) FROM dualwrite.verify_runs WHERE migration = $1";
    let before: i64 = direct.query_one(runs, &[&MIGRATION]).await.unwrap().get(0);
    backfill_until_done(&admin, MIGRATION).await;
    assert_eq!(differences(&direct).await, (0, 0));
    let after: i64 = direct.query_one(runs, &[&MIGRATION]).await.unwrap().get(0);
    assert_eq!(after, before, "no repair ran");
    proxy.stop().await.unwrap();
}
