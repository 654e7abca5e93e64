//! Merging two old tables into one shadow through the proxy on real Postgres (`accounts` + `profiles` ->
//! `users`, rewrite-rules/examples/users_merge_tables.toml): dual writes of each form on either source
//! (simple and extended protocol) write that source's columns of the merged row in the client's statement
//! (atomic with it: a rolled-back transaction leaves neither); a DELETE of one source nulls its columns
//! while the other holds the key and deletes the row when neither does; reads of a source routed to v2 are
//! served from the shadow; what a merge does not dual-write is refused; the backfill fills the shadow from
//! the sources FULL JOINed on the key; VERIFY compares that join with the shadow in both directions and
//! REPAIR fixes a planted divergence; `complete` is refused (cutover: merge_cutover.rs); rolling back to `off` leaves
//! the shadow alone; and two sessions writing the two sources of one key at once leave the row the join
//! says (the DELETE decides on the shadow row's latest version); writes and reads naming the shadow wait for the
//! backfill to finish, and fail (23514, changing nothing) where they would leave a row none of the sources
//! can hold, also for a role without privileges on the proxy's schema; `dualwrite check` checks every
//! source, and a merge whose `present` column may be NULL is never registered; and
//! a session in which one source's bare name means another table is refused bare source names.

use std::time::Duration;

use dualwrite_tests::*;

mod merge_support;
use merge_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_either_source_keep_the_merged_row_and_deletes_null_or_drop_it() {
    let Merge { db, direct, proxy } = Merge::start(SCHEMA).await;
    let v1 = proxy.connect(&db).await.unwrap();

    // INSERT into one source (simple), then the other (extended, with parameters): one merged row.
    v1.simple_query("INSERT INTO accounts (id, email) VALUES (100, 'Ann@X.org')").await.unwrap();
    assert_eq!(shadow(&direct, 100).await, row(Some("ann@x.org"), None, None));
    let n = v1
        .execute("INSERT INTO profiles (id, name, bio) VALUES ($1, $2, $3)", &[&100i32, &"Ann", &"hi"])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(shadow(&direct, 100).await, row(Some("ann@x.org"), Some("Ann"), Some("hi")));

    // A write of one source whose key the shadow does not hold yet (before any backfill) fills the other
    // source's columns from its table: key 25 is in both sources.
    assert_eq!(shadow(&direct, 25).await, None);
    v1.execute("UPDATE accounts SET email = $1 WHERE id = $2", &[&"New25@X.org", &25i32]).await.unwrap();
    assert_eq!(shadow(&direct, 25).await, row(Some("new25@x.org"), Some("Name 25"), Some("bio 25")));

    // UPDATE re-derives only the assigned source's columns; an upsert that updates, with RETURNING.
    v1.simple_query("UPDATE profiles SET bio = 'updated' WHERE id = 100").await.unwrap();
    assert_eq!(shadow(&direct, 100).await, row(Some("ann@x.org"), Some("Ann"), Some("updated")));
    let email: String = v1
        .query_one(
            "INSERT INTO accounts (id, email) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email \
             RETURNING email",
            &[&100i32, &"ANN@Y.org"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(email, "ANN@Y.org");
    assert_eq!(shadow(&direct, 100).await, row(Some("ann@y.org"), Some("Ann"), Some("updated")));

    // DELETE of one source while the other holds the key nulls its columns; of the last one, drops the row.
    assert_eq!(v1.execute("DELETE FROM accounts WHERE id = $1", &[&100i32]).await.unwrap(), 1);
    assert_eq!(shadow(&direct, 100).await, row(None, Some("Ann"), Some("updated")));
    v1.simple_query("DELETE FROM profiles WHERE id = 100").await.unwrap();
    assert_eq!(shadow(&direct, 100).await, None);
    v1.simple_query(
        "INSERT INTO profiles (id, name) VALUES (101, 'Bob'); INSERT INTO accounts VALUES (101, 'b@x.org')",
    )
    .await
    .unwrap();
    assert_eq!(shadow(&direct, 101).await, row(Some("b@x.org"), Some("Bob"), None));
    v1.execute("DELETE FROM profiles WHERE id = $1", &[&101i32]).await.unwrap();
    assert_eq!(shadow(&direct, 101).await, row(Some("b@x.org"), None, None));

    // The sync is the client's statement: a rolled-back transaction leaves neither table written.
    v1.batch_execute(
        "BEGIN; INSERT INTO accounts VALUES (102, 'c@x.org'); DELETE FROM accounts WHERE id = 101; ROLLBACK",
    )
    .await
    .unwrap();
    assert_eq!(shadow(&direct, 102).await, None);
    assert_eq!(shadow(&direct, 101).await, row(Some("b@x.org"), None, None));
    assert_eq!(count(&direct, "SELECT count(*) FROM accounts WHERE id IN (101, 102)").await, 1);

    // What a merge does not dual-write is refused, naming the migration; nothing is written (TRUNCATE and
    // COPY themselves: merge_copy_truncate.rs).
    let e = v1.simple_query("TRUNCATE profiles CASCADE").await.unwrap_err();
    let (code, message) = db_error(&e);
    assert_eq!(code, "0A000");
    assert!(
        message
            .starts_with(&format!("dualwrite: statement refused for migration \"{MIGRATION}\": the migration merges")),
        "{message}"
    );
    assert!(message.contains("(TRUNCATE ... CASCADE of a source"), "{message}");
    assert_eq!(count(&direct, "SELECT count(*) FROM profiles").await, 40);
    let v2 = v2_session(&proxy, &db).await;
    let e = v2.query("SELECT * FROM accounts", &[]).await.unwrap_err();
    assert_eq!(db_error(&e).0, "0A000");
    let e = v2.execute("INSERT INTO accounts VALUES (103, 'd@x.org')", &[]).await.unwrap_err();
    assert_eq!(db_error(&e).0, "0A000");
    assert_eq!(count(&direct, "SELECT count(*) FROM accounts WHERE id = 103").await, 0);
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_a_source_routed_to_v2_are_served_from_the_shadow() {
    let Merge { db, direct, proxy } = Merge::start(SCHEMA).await;
    let admin = proxy.connect(&db).await.unwrap();
    let v1 = proxy.connect(&db).await.unwrap();
    v1.simple_query("INSERT INTO accounts VALUES (200, 'e@x.org'); INSERT INTO profiles VALUES (200, 'Eve', 'old')")
        .await
        .unwrap();
    // Reads are routed once the backfill is done (before, the sources answer whatever the routing says).
    backfill_until_done(&admin, MIGRATION).await;
    // A value only the shadow holds tells which table answered.
    direct.batch_execute("UPDATE users SET bio = 'from the shadow' WHERE id = 200").await.unwrap();
    let bio = |sql: &'static str| {
        let v1 = &v1;
        async move { v1.query_one(sql, &[]).await.unwrap().get::<_, Option<String>>(0) }
    };
    assert_eq!(bio("SELECT bio FROM profiles WHERE id = 200").await.as_deref(), Some("old"));

    control(&admin, &format!("DUALWRITE ROUTE {MIGRATION} READS TO v2")).await;
    eventually(Duration::from_secs(10), "reads routed to the shadow", || async {
        bio("SELECT bio FROM profiles WHERE id = 200").await.as_deref() == Some("from the shadow")
    })
    .await;
    // Only the keys the source holds: the shadow rows of accounts-only keys are not profiles.
    let names: i64 = v1.query_one("SELECT count(*) FROM profiles", &[]).await.unwrap().get(0);
    assert_eq!(names, 41, "keys 21-60 and 200 hold a profile; the accounts-only keys 1-20 do not");
    let email: String = v1.query_one("SELECT email FROM accounts WHERE id = 200", &[]).await.unwrap().get(0);
    assert_eq!(email, "e@x.org");

    control(&admin, &format!("DUALWRITE ROUTE {MIGRATION} READS TO DEFAULT")).await;
    eventually(Duration::from_secs(10), "reads back on the old tables", || async {
        bio("SELECT bio FROM profiles WHERE id = 200").await.as_deref() == Some("old")
    })
    .await;
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_fills_the_join_and_verify_repairs_a_planted_divergence() {
    let Merge { db, direct, proxy } = Merge::start(SCHEMA).await;
    let admin = proxy.connect(&db).await.unwrap();

    backfill_until_done(&admin, MIGRATION).await;
    assert_eq!(count(&direct, "SELECT count(*) FROM users").await, 60);
    assert_eq!(shadow(&direct, 7).await, row(Some("user7@x.org"), None, None));
    assert_eq!(shadow(&direct, 30).await, row(Some("user30@x.org"), Some("Name 30"), None));
    assert_eq!(shadow(&direct, 50).await, row(None, Some("Name 50"), Some("bio 50")));
    assert_eq!(differences(&direct).await, (0, 0));
    let verify = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!((value(&verify, "source"), value(&verify, "clean")), (Some("old"), Some("t")), "{verify:?}");
    assert_eq!(value(&verify, "rows_checked"), Some("60"));

    // Divergences written past the proxy: a changed value, a value a missing source cannot have, a lost
    // row, an orphan.
    direct
        .batch_execute(
            "UPDATE users SET bio = 'wrong' WHERE id = 31; UPDATE users SET email = 'stale' WHERE id = 50;
             DELETE FROM users WHERE id = 5; INSERT INTO users VALUES (999, 'x@x.org', NULL, NULL)",
        )
        .await
        .unwrap();
    let verify = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!(value(&verify, "clean"), Some("f"), "{verify:?}");
    assert_eq!(
        (value(&verify, "missing"), value(&verify, "extra"), value(&verify, "different")),
        (Some("1"), Some("1"), Some("2")),
        "{verify:?}"
    );
    let repair = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION} REPAIR")).await;
    assert_eq!(value(&repair, "repaired"), Some("4"), "{repair:?}");
    assert_eq!(shadow(&direct, 31).await, row(Some("user31@x.org"), Some("Name 31"), Some("bio 31")));
    assert_eq!(shadow(&direct, 50).await, row(None, Some("Name 50"), Some("bio 50")));
    assert_eq!(shadow(&direct, 5).await, row(Some("user5@x.org"), None, None));
    assert_eq!(shadow(&direct, 999).await, None);
    assert_eq!(differences(&direct).await, (0, 0));
    let verify = control(&admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    assert_eq!(value(&verify, "clean"), Some("t"), "{verify:?}");
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_is_written_and_read_by_name_only_once_the_backfill_has_finished() {
    let Merge { db, direct, proxy } = Merge::start(SCHEMA).await;
    let admin = proxy.connect(&db).await.unwrap();
    let v2 = v2_session(&proxy, &db).await;
    let insert = "INSERT INTO users (id, email, display_name, bio) VALUES (30, 'new@x.org', 'New', NULL)";
    // Key 30 is in both sources but not in the shadow yet: an INSERT of it would succeed there and its
    // mirror overwrite both sources' rows; an UPDATE or DELETE would find no row. All refused.
    for sql in [insert, "UPDATE users SET bio = 'x' WHERE id = 30", "DELETE FROM users WHERE id = 30"] {
        let (code, message) = db_error(&v2.batch_execute(sql).await.unwrap_err());
        assert_eq!(code, "0A000", "{sql}: {message}");
        assert!(message.contains(MIGRATION) && message.contains("backfill"), "{sql}: {message}");
    }
    let sources = "SELECT count(*) FROM accounts a JOIN profiles p USING (id) \
                   WHERE id = 30 AND a.email = 'User30@X.org' AND p.name = 'Name 30'";
    assert_eq!(count(&direct, sources).await, 1, "the sources' rows of key 30 are untouched");
    assert_eq!(count(&direct, "SELECT count(*) FROM users").await, 0);
    // A read of the shadow, the new shape's only name, would answer with the rows copied so far (none):
    // refused too, and the sources answer as always.
    for session in [&v2, &admin] {
        let (code, message) = db_error(&session.query_one("SELECT count(*) FROM users", &[]).await.unwrap_err());
        assert_eq!(code, "0A000", "{message}");
        assert!(message.contains("would see only the rows copied so far"), "{message}");
    }
    let accounts: i64 = admin.query_one("SELECT count(*) FROM accounts", &[]).await.unwrap().get(0);
    assert_eq!(accounts, 40);

    backfill_until_done(&admin, MIGRATION).await;
    let merged: i64 = v2.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(merged, 60, "every key of either source");
    // The shadow holds key 30 now: inserting it again is the duplicate it is, and the sources keep their
    // rows; an UPDATE is mirrored into them.
    assert_eq!(db_error(&v2.batch_execute(insert).await.unwrap_err()).0, "23505");
    assert_eq!(count(&direct, sources).await, 1);
    v2.batch_execute("UPDATE users SET bio = 'edited' WHERE id = 30").await.unwrap();
    assert_eq!(shadow(&direct, 30).await, row(Some("user30@x.org"), Some("Name 30"), Some("edited")));
    assert_eq!(count(&direct, "SELECT count(*) FROM profiles WHERE id = 30 AND bio = 'edited'").await, 1);
    assert_eq!(differences(&direct).await, (0, 0));
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_naming_the_shadow_that_leaves_a_row_no_source_can_hold_fails_and_changes_nothing() {
    let Merge { db, direct, proxy } = Merge::start(SCHEMA).await;
    direct
        .batch_execute("CREATE ROLE merge_app LOGIN; GRANT ALL ON accounts, profiles, users TO merge_app")
        .await
        .unwrap();
    let admin = proxy.connect(&db).await.unwrap();
    backfill_until_done(&admin, MIGRATION).await;
    // A role without privileges on the proxy's own schema, as applications run: the check runs for it too.
    let v2_url = format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url_as(&db, "merge_app", None));
    let v2 = connect(&v2_url).await.unwrap();
    let before = contents(&direct).await;

    // Key 100 with none of any source's columns (a row no FULL JOIN of the sources can show); key 5 is only
    // in accounts and key 45 only in profiles, so emptying their one source's columns leaves such a row.
    for sql in [
        "INSERT INTO users (id) VALUES (100)",
        "INSERT INTO users (id, email) VALUES (101, 'kept@x.org'), (102, NULL)",
        "UPDATE users SET email = NULL WHERE id = 5",
        "UPDATE users SET display_name = NULL, bio = NULL WHERE id = 45",
        "INSERT INTO users (id, email) VALUES (5, 'x@x.org') ON CONFLICT (id) DO UPDATE SET email = NULL",
    ] {
        let error = v2.batch_execute(sql).await.unwrap_err();
        let db_error = error.as_db_error().unwrap_or_else(|| panic!("{sql}: not a server error: {error}"));
        assert_eq!(db_error.code().code(), "23514", "{sql}: {db_error:?}");
        assert!(
            db_error.message().contains(&format!("migration \"{MIGRATION}\""))
                && db_error.message().contains("public.accounts, public.profiles"),
            "{sql}: {}",
            db_error.message()
        );
        let detail = db_error.detail().unwrap_or_default();
        assert!(detail.starts_with("Key (id)=(") && detail.contains("held by none"), "{sql}: {detail}");
        assert_eq!(contents(&direct).await, before, "{sql} changed nothing");
    }

    // The session goes on: a key another source still holds loses only the account, as mirrored.
    v2.batch_execute("UPDATE users SET email = NULL WHERE id = 25").await.unwrap();
    assert_eq!(count(&direct, "SELECT count(*) FROM accounts WHERE id = 25").await, 0);
    assert_eq!(count(&direct, "SELECT count(*) FROM profiles WHERE id = 25").await, 1);
    v2.batch_execute("INSERT INTO users (id, email) VALUES (101, 'kept@x.org')").await.unwrap();
    assert_eq!(shadow(&direct, 101).await, row(Some("kept@x.org"), None, None));
    assert_eq!(count(&direct, "SELECT count(*) FROM accounts WHERE id = 101").await, 1);
    assert_eq!(differences(&direct).await, (0, 0));
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_is_refused_off_leaves_the_shadow_alone_and_a_forced_return_repairs_it() {
    let Merge { db, direct, proxy } = Merge::start(SCHEMA).await;
    let admin = proxy.connect(&db).await.unwrap();
    let v1 = proxy.connect(&db).await.unwrap();

    // (Cutover is allowed: tests/tests/merge_cutover.rs.)
    complete_is_refused(&admin).await;
    let status = control(&admin, "DUALWRITE STATUS").await;
    assert_eq!(value(&status, "phase"), Some("dual_write"));

    // Back to `off`: the old tables only, the shadow as it was; then dual writes again (with FORCE).
    v1.simple_query("INSERT INTO accounts VALUES (300, 'f@x.org')").await.unwrap();
    control(&admin, &format!("DUALWRITE PHASE {MIGRATION} off FORCE")).await;
    // Each try writes a new key: the first one the shadow does not get shows the session on `off`.
    let key = std::sync::atomic::AtomicI32::new(400);
    eventually(Duration::from_secs(10), "writes pass through", || async {
        let id = key.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        v1.execute("INSERT INTO accounts VALUES ($1, 'g@x.org')", &[&id]).await.unwrap();
        shadow(&direct, id).await.is_none()
    })
    .await;
    v1.simple_query("DELETE FROM accounts WHERE id = 300").await.unwrap();
    v1.simple_query("UPDATE accounts SET email = 'changed@x.org' WHERE id = 30").await.unwrap();
    assert_eq!(count(&direct, "SELECT count(*) FROM accounts WHERE id = 300").await, 0);
    assert_eq!(shadow(&direct, 300).await, row(Some("f@x.org"), None, None));

    // The shadow still holds key 300, which the old tables no longer do: it is not put back in service
    // as it is without FORCE, and with FORCE the backfill starts over.
    let e = admin.simple_query(&format!("DUALWRITE PHASE {MIGRATION} dual_write")).await.unwrap_err();
    let (code, message) = db_error(&e);
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("its shadow public.users holds rows"), "{message}");
    control(&admin, &format!("DUALWRITE PHASE {MIGRATION} dual_write FORCE")).await;
    assert_eq!(value(&control(&admin, "DUALWRITE STATUS").await, "backfill_state"), Some("idle"));
    let key = std::sync::atomic::AtomicI32::new(500);
    eventually(Duration::from_secs(10), "writes dual-written again", || async {
        let id = key.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        v1.execute("INSERT INTO accounts VALUES ($1, 'H@x.org')", &[&id]).await.unwrap();
        shadow(&direct, id).await == row(Some("h@x.org"), None, None)
    })
    .await;
    // No row kept by FORCE is stale once the backfill counts as done (a merge's batches update rows the
    // shadow holds, and its repair runs after them): key 300 left the old tables while the migration was
    // off, so its shadow row goes, and key 30's email changed meanwhile.
    backfill_until_done(&admin, MIGRATION).await;
    assert_eq!(shadow(&direct, 300).await, None);
    assert_eq!(shadow(&direct, 30).await.and_then(|r| r.0), Some("changed@x.org".to_owned()), "stale no more");
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_the_two_sources_of_one_key_decide_on_the_latest_shadow_row() {
    let Merge { db, direct, proxy } = Merge::start(SCHEMA).await;
    let first = proxy.connect(&db).await.unwrap();
    let second = std::sync::Arc::new(proxy.connect(&db).await.unwrap());

    // Both halves of key 30 deleted at once: the second DELETE waits for the first, then sees its nulls
    // and drops the row (each deciding on its own snapshot would leave an empty row behind).
    first.simple_query("UPDATE accounts SET email = email WHERE id = 30").await.unwrap();
    assert_eq!(shadow(&direct, 30).await, row(Some("user30@x.org"), Some("Name 30"), None));
    first.batch_execute("BEGIN; DELETE FROM accounts WHERE id = 30").await.unwrap();
    let deleting = {
        let second = second.clone();
        tokio::spawn(async move { second.execute("DELETE FROM profiles WHERE id = 30", &[]).await })
    };
    until_blocked(&direct, "DELETE FROM profiles WHERE id = 30", "the second writer waits on the first").await;
    first.batch_execute("COMMIT").await.unwrap();
    assert_eq!(deleting.await.unwrap().unwrap(), 1);
    assert_eq!(shadow(&direct, 30).await, None);

    // One source inserted while the other's row is deleted: the DELETE waits for the insert, sees the
    // other source present and only nulls its own columns (deciding on its snapshot would drop the row).
    first.simple_query("UPDATE profiles SET bio = 'b' WHERE id = 50").await.unwrap();
    assert_eq!(shadow(&direct, 50).await, row(None, Some("Name 50"), Some("b")));
    first.batch_execute("BEGIN; INSERT INTO accounts VALUES (50, 'Late@X.org')").await.unwrap();
    let deleting = {
        let second = second.clone();
        tokio::spawn(async move { second.execute("DELETE FROM profiles WHERE id = 50", &[]).await })
    };
    until_blocked(&direct, "DELETE FROM profiles WHERE id = 50", "the second writer waits on the first").await;
    first.batch_execute("COMMIT").await.unwrap();
    assert_eq!(deleting.await.unwrap().unwrap(), 1);
    assert_eq!(shadow(&direct, 50).await, row(Some("late@x.org"), None, None));
    proxy.stop().await.unwrap();
}

/// `dualwrite check` of the merge example against `schema`: (errors, report).
async fn check(schema: &str) -> (usize, String) {
    let db = TestCluster::shared().create_database().await.unwrap();
    db.connect().await.unwrap().batch_execute(schema).await.unwrap();
    let args = dualwrite_proxy::check::CheckArgs::new(rules_path(), db.url());
    let mut out = Vec::new();
    let findings = dualwrite_proxy::check::run(&args, &mut out).await.expect("check runs");
    (findings.errors, String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_every_source_and_the_mappings_over_their_join() {
    let (errors, report) = check(SCHEMA).await;
    assert_eq!(errors, 0, "{report}");
    for line in [
        "migration users_merge_tables: public.accounts + public.profiles -> public.users",
        "ok       key (id) is unique in public.accounts",
        "ok       key (id) is unique in public.profiles",
        "ok       forward.email = lower(email) (text -> text)",
        "ok       forward.display_name = name (text -> text)",
        "ok       backward.name = display_name (text -> text)",
        "ok       no writers of public.accounts, public.profiles that the proxy cannot see",
        "ok       present = display_name (from name of public.profiles): NOT NULL",
        "ok       present = email (from lower(email) of public.accounts): NULL only when email is, and NOT NULL",
    ] {
        assert!(report.contains(line), "missing `{line}` in:\n{report}");
    }
    let (errors, report) = check(&SCHEMA.replace("name text NOT NULL, bio", "name text, bio")).await;
    assert_eq!(errors, 1, "{report}");
    assert!(
        report.contains("ERROR    present = display_name (from name of public.profiles): name may be NULL"),
        "{report}"
    );
    // lower() is NULL exactly when its argument is: a nullable email makes the present column nullable.
    let (errors, report) = check(&SCHEMA.replace("email text NOT NULL", "email text")).await;
    assert_eq!(errors, 1, "{report}");
    assert!(
        report.contains(
            "ERROR    present = email (from lower(email) of public.accounts): NULL when email is, which may be NULL"
        ),
        "{report}"
    );
    let (errors, report) = check(&SCHEMA.replace("display_name text, bio text", "display_name text")).await;
    assert!(errors >= 1, "{report}");
    assert!(report.contains("ERROR    forward.bio: column \"bio\" does not exist in public.users"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_whose_present_column_may_be_null_is_not_registered_and_the_proxy_does_not_start() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(&SCHEMA.replace("name text NOT NULL, bio", "name text, bio")).await.unwrap();
    let error = match TestProxy::with_rules_file(&db, rules_path()).await {
        Ok(_) => panic!("a proxy started on a merge whose present column may be NULL"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains(&format!(
            "migration `{MIGRATION}` cannot be registered: its present column display_name is name of \
             public.profiles, which may be NULL"
        )),
        "{error}"
    );
    let registered = "SELECT count(*) FROM dualwrite.migrations WHERE name = 'users_merge_tables'";
    assert_eq!(count(&direct, registered).await, 0);

    // The same through an expression: accounts' present column is lower(email).
    direct
        .batch_execute("ALTER TABLE profiles ALTER COLUMN name SET NOT NULL; ALTER TABLE accounts ALTER COLUMN email DROP NOT NULL")
        .await
        .unwrap();
    let error = match TestProxy::with_rules_file(&db, rules_path()).await {
        Ok(_) => panic!("a proxy started on a merge whose present column may be NULL"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains(&format!(
            "migration `{MIGRATION}` cannot be registered: its present column email is lower(email) of \
             public.accounts, NULL when email is, which may be NULL"
        )),
        "{error}"
    );
    assert_eq!(count(&direct, registered).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_where_one_source_name_means_another_table_is_refused_unqualified_names() {
    let tenant = "CREATE SCHEMA tenant; CREATE TABLE tenant.profiles (id int PRIMARY KEY, name text)";
    let Merge { db, direct, proxy } = Merge::start(&format!("{SCHEMA}{tenant}")).await;
    let v1 = proxy.connect(&db).await.unwrap();
    v1.simple_query("SET search_path = tenant, public").await.unwrap();

    // Bare `accounts` is the migrated table, bare `profiles` the tenant's: either plan would be wrong for
    // one of them (no dual write, or the tenant's rows in the shadow), so both are refused.
    for sql in ["INSERT INTO accounts VALUES (700, 'a@x.org')", "INSERT INTO profiles VALUES (700, 'Tenant')"] {
        let e = v1.execute(sql, &[]).await.unwrap_err();
        let (code, message) = db_error(&e);
        assert_eq!(code, "0A000", "{sql}: {message}");
        assert!(message.contains("qualify the name"), "{sql}: {message}");
    }
    assert_eq!(count(&direct, "SELECT count(*) FROM accounts WHERE id = 700").await, 0);
    assert_eq!(count(&direct, "SELECT count(*) FROM tenant.profiles").await, 0);

    // Qualified names say which table they mean: dual-written as usual.
    v1.execute("INSERT INTO public.accounts VALUES (700, 'A@x.org')", &[]).await.unwrap();
    assert_eq!(shadow(&direct, 700).await, row(Some("a@x.org"), None, None));
    v1.execute("INSERT INTO tenant.profiles VALUES (700, 'Tenant')", &[]).await.unwrap();
    assert_eq!(shadow(&direct, 700).await, row(Some("a@x.org"), None, None));
    proxy.stop().await.unwrap();
}
