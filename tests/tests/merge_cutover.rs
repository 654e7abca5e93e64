//! A merge (`accounts` + `profiles` -> `users`, rewrite-rules/examples/users_merge_tables.toml) through
//! cutover and back on real Postgres: writes naming the merged shadow, from sessions of either version, are
//! mirrored into every source (a source's row upserted while the shadow row holds any of its columns,
//! deleted when it holds none; a DELETE takes the key from every source), atomically with the client's
//! statement; what cannot be mirrored is refused. `cutover` is allowed and moves the key sequence (one for
//! every table) past the largest key of all; in cutover v1 writes of the sources and v2 writes of the shadow land in
//! every table, VERIFY counts against the shadow and finds no divergence, REPAIR rebuilds the sources from
//! the shadow; `complete` is refused; ROLLBACK to dual_write keeps every row.

use dualwrite_tests::*;
use tokio_postgres::Client;

mod merge_support;
use merge_support::*;

/// One key in the three tables, read directly: `accounts' email | profiles' name, bio | the shadow's email,
/// display_name, bio`, `-` for a missing row and `null` for a NULL.
async fn key(direct: &Client, id: i32) -> String {
    let sql = "SELECT coalesce((SELECT email FROM accounts WHERE id = $1), '-') || ' | ' \
               || coalesce((SELECT name || ', ' || coalesce(bio, 'null') FROM profiles WHERE id = $1), '-') || ' | ' \
               || coalesce((SELECT concat_ws(', ', coalesce(email, 'null'), coalesce(display_name, 'null'), \
                                             coalesce(bio, 'null')) FROM users WHERE id = $1), '-')";
    direct.query_one(sql, &[&id]).await.unwrap().get(0)
}

/// VERIFY, asserting it counted against `source` and found no divergence.
async fn verify_clean(admin: &Client, source: &str) {
    let verify = control(admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!((value(&verify, "source"), value(&verify, "clean")), (Some(source), Some("t")), "{verify:?}");
}

/// A database with `serial_schema()`, backfilled through a proxy, and its sessions: direct, admin, v1 and v2.
struct Setup {
    direct: Client,
    proxy: TestProxy,
    admin: Client,
    v1: Client,
    v2: Client,
}

async fn backfilled() -> Setup {
    let Merge { db, direct, proxy } = Merge::start(&serial_schema()).await;
    let admin = proxy.connect(&db).await.unwrap();
    let v1 = proxy.connect(&db).await.unwrap();
    let v2 = v2_session(&proxy, &db).await;
    backfill_until_done(&admin, MIGRATION).await;
    Setup { direct, proxy, admin, v1, v2 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_writes_in_dual_write_are_mirrored_into_every_source_and_the_unmirrorable_refused() {
    let Setup { direct, proxy, admin, v1, v2 } = backfilled().await;

    // A v2 INSERT of a whole row (simple protocol) writes both sources.
    v2.simple_query("INSERT INTO users (id, email, display_name, bio) VALUES (100, 'a@x.org', 'Ann', 'hi')")
        .await
        .unwrap();
    assert_eq!(key(&direct, 100).await, "a@x.org | Ann, hi | a@x.org, Ann, hi");
    // A v1 session names the shadow the same way (extended protocol): one source's columns, one source.
    let n = v1.execute("INSERT INTO users (id, email) VALUES ($1, $2)", &[&101i32, &"b@x.org"]).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(key(&direct, 101).await, "b@x.org | - | b@x.org, null, null");
    // An UPDATE giving the key a profile column creates its profile; one nulling every account column
    // deletes the account.
    v2.execute("UPDATE users SET display_name = $1 WHERE id = $2", &[&"Bee", &101i32]).await.unwrap();
    assert_eq!(key(&direct, 101).await, "b@x.org | Bee, null | b@x.org, Bee, null");
    v2.simple_query("UPDATE users SET email = NULL WHERE id = 100").await.unwrap();
    assert_eq!(key(&direct, 100).await, "- | Ann, hi | null, Ann, hi");
    // A DELETE takes the key from every source, with the client's RETURNING.
    let gone = v2.query("DELETE FROM users WHERE id IN (100, 101) RETURNING id", &[]).await.unwrap();
    assert_eq!(gone.len(), 2);
    for id in [100, 101] {
        assert_eq!(key(&direct, id).await, "- | - | -");
    }
    // Rows the backfill copied are mirrored the same way.
    v2.simple_query("UPDATE users SET bio = 'edited' WHERE id = 30").await.unwrap();
    assert_eq!(key(&direct, 30).await, "User30@X.org | Name 30, edited | user30@x.org, Name 30, edited");

    // One statement: a rolled-back transaction leaves no table written.
    v2.batch_execute("BEGIN; INSERT INTO users (id, email, display_name) VALUES (102, 'r@x.org', 'R')").await.unwrap();
    v2.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(key(&direct, 102).await, "- | - | -");

    // What has no mirror is refused, naming why, and changes nothing.
    let before = contents(&direct).await;
    for sql in [
        "UPDATE users SET id = 200 WHERE id = 30",
        "TRUNCATE users",
        "WITH d AS (DELETE FROM users WHERE id = 30 RETURNING id) SELECT count(*) FROM d",
    ] {
        let (code, message) = db_error(&v2.simple_query(sql).await.unwrap_err());
        assert_eq!(code, "0A000", "{sql}");
        assert!(message.contains("merged shadow"), "{sql}: {message}");
    }
    assert_eq!(contents(&direct).await, before);

    verify_clean(&admin, "old").await;
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_moves_the_sequences_and_takes_writes_of_both_versions_into_every_table_until_rollback() {
    let Setup { direct, proxy, admin, v1, v2 } = backfilled().await;
    verify_clean(&admin, "old").await;

    let cut = control(&admin, &format!("DUALWRITE PHASE {MIGRATION} cutover")).await;
    assert_eq!(value(&cut, "phase"), Some("cutover"), "{cut:?}");
    assert_eq!(value(&cut, "sequences_moved"), Some("public.accounts_id_seq=60"), "{cut:?}");

    // v1 writes of the sources: a new key from the moved sequence, both halves of it, an UPDATE, and a
    // DELETE of one source of a key both hold (its columns nulled) and of the only source of another.
    let a: i32 =
        v1.query_one("INSERT INTO accounts (email) VALUES ($1) RETURNING id", &[&"New@X.org"]).await.unwrap().get(0);
    assert_eq!(a, 61, "accounts_id_seq moved past the largest key of every table");
    v1.simple_query("INSERT INTO profiles (id, name) VALUES (61, 'Newbie')").await.unwrap();
    v1.execute("UPDATE profiles SET bio = $1 WHERE id = $2", &[&"cut", &30i32]).await.unwrap();
    v1.simple_query("DELETE FROM accounts WHERE id = 25").await.unwrap();
    v1.execute("DELETE FROM profiles WHERE id = $1", &[&45i32]).await.unwrap();
    // v2 writes of the shadow: a new key, a row v1 wrote, a key losing its account, a key gaining a profile,
    // a key deleted.
    // (Every table's key draws from accounts' sequence, which registration requires: the shadow's INSERT
    // without a key takes the next value, never one a source's INSERT took.)
    let c: i32 = v2
        .query_one("INSERT INTO users (email, display_name) VALUES ('c@x.org', 'Cee') RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(c, 62, "the shadow's default draws from the moved sequence too");
    v2.simple_query("UPDATE users SET bio = 'from v2' WHERE id = 61").await.unwrap();
    v2.execute("UPDATE users SET email = NULL WHERE id = $1", &[&23i32]).await.unwrap();
    v2.simple_query("UPDATE users SET display_name = 'Only' WHERE id = 7").await.unwrap();
    assert_eq!(v2.execute("DELETE FROM users WHERE id = $1", &[&22i32]).await.unwrap(), 1);

    assert_eq!(key(&direct, 61).await, "New@X.org | Newbie, from v2 | new@x.org, Newbie, from v2");
    assert_eq!(key(&direct, 30).await, "User30@X.org | Name 30, cut | user30@x.org, Name 30, cut");
    assert_eq!(key(&direct, 25).await, "- | Name 25, bio 25 | null, Name 25, bio 25");
    assert_eq!(key(&direct, 45).await, "- | - | -");
    assert_eq!(key(&direct, 62).await, "c@x.org | Cee, null | c@x.org, Cee, null");
    assert_eq!(key(&direct, 23).await, "- | Name 23, bio 23 | null, Name 23, bio 23");
    assert_eq!(key(&direct, 7).await, "User7@X.org | Only, null | user7@x.org, Only, null");
    assert_eq!(key(&direct, 22).await, "- | - | -");
    let verify = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!((value(&verify, "source"), value(&verify, "clean")), (Some("shadow"), Some("t")), "{verify:?}");
    assert_eq!(value(&verify, "rows_checked"), Some("60"), "the shadow's rows: 60, 2 inserted, 2 deleted");

    // Divergences written past the proxy into the sources: REPAIR rebuilds them from the shadow.
    direct
        .batch_execute(
            "UPDATE accounts SET email = 'Planted' WHERE id = 10; DELETE FROM profiles WHERE id = 50;
             INSERT INTO accounts VALUES (999, 'orphan@x.org')",
        )
        .await
        .unwrap();
    let verify = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!(
        (value(&verify, "missing"), value(&verify, "extra"), value(&verify, "different")),
        (Some("1"), Some("1"), Some("1")),
        "{verify:?}"
    );
    let repair = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION} REPAIR")).await;
    assert_eq!(value(&repair, "repaired"), Some("3"), "{repair:?}");
    assert_eq!(key(&direct, 10).await, "user10@x.org | - | user10@x.org, null, null");
    assert_eq!(key(&direct, 50).await, "- | Name 50, bio 50 | null, Name 50, bio 50");
    assert_eq!(key(&direct, 999).await, "- | - | -");
    verify_clean(&admin, "shadow").await;

    // `complete` would retire the sources: refused.
    complete_is_refused(&admin).await;

    // ROLLBACK keeps every row written in cutover, in every table; dual_write verifies clean from the sources.
    let before = contents(&direct).await;
    let rolled = control(&admin, &format!("DUALWRITE ROLLBACK {MIGRATION}")).await;
    assert_eq!((value(&rolled, "phase_before"), value(&rolled, "phase")), (Some("cutover"), Some("dual_write")));
    assert_eq!(contents(&direct).await, before);
    verify_clean(&admin, "old").await;
    // And both versions' writes go on landing everywhere.
    v1.simple_query("UPDATE accounts SET email = 'Back@X.org' WHERE id = 61").await.unwrap();
    v2.simple_query("UPDATE users SET display_name = 'Back' WHERE id = 61").await.unwrap();
    assert_eq!(key(&direct, 61).await, "Back@X.org | Back, from v2 | back@x.org, Back, from v2");
    proxy.stop().await.unwrap();
}
