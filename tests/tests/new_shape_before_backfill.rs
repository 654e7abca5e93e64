//! Writes and reads in the new version's shape before the backfill has finished, on a real proxy. Their primary is the
//! shadow, which does not yet hold the rows the backfill has not copied: without the refusal a v2 INSERT of
//! such a key replaced the old table's row (the old side upserts on the key), and a v2 UPDATE or DELETE of
//! such a row answered 0 rows and changed nothing. In `dual_write` they are refused (0A000,
//! `backfill_pending`) and change nothing; old-shaped writes go on; reads in the new shape are served by the
//! old table through the forward mapping (the shadow would answer with the rows copied so far); once the
//! backfill is done the same statements run as Postgres would run them on one table. `DUALWRITE STATUS`
//! shows the wait (`reads_wait_for_backfill`) and a `ROUTE` made meanwhile says when it takes effect.

use dualwrite_tests::*;
use tokio_postgres::Client;

const RULES: &str = include_str!("../../rewrite-rules/examples/users_split_name.toml");

const SCHEMA: &str = "
    CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
    CREATE TABLE public.users_v2 (id int PRIMARY KEY DEFAULT nextval('public.users_id_seq'), first_name text,
                                  last_name text, email text);
    INSERT INTO public.users (name, email) VALUES ('Ada Lovelace', 'ada@example.org'),
                                                  ('Alan Turing', 'alan@example.org');
";

async fn old_rows(direct: &Client) -> Vec<String> {
    let rows =
        direct.query("SELECT id || ' ' || name || ' ' || email FROM public.users ORDER BY id", &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// A fresh database holding `SCHEMA`, a proxy on the example rules, and sessions: direct, admin, v1, v2.
struct Sessions {
    _db: TestDb,
    direct: Client,
    proxy: TestProxy,
    admin: Client,
    v1: Client,
    v2: Client,
}

async fn sessions() -> Sessions {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = TestProxy::with_rules_toml(&db, RULES).await.unwrap();
    let admin = proxy.connect(&db).await.unwrap();
    let v1 = proxy.connect(&db).await.unwrap();
    let v2 = connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url(&db))).await.unwrap();
    Sessions { _db: db, direct, proxy, admin, v1, v2 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_shape_writes_wait_for_the_backfill_and_new_shape_reads_are_served_by_the_old_table_meanwhile() {
    let Sessions { _db, direct, proxy: _proxy, admin, v1, v2 } = sessions().await;
    let before = old_rows(&direct).await;

    // Rows 1 and 2 are not in the shadow yet: each of these would have lost or overwritten one.
    for sql in [
        "INSERT INTO users (id, first_name, last_name, email) VALUES (1, 'Grace', 'Hopper', 'grace@example.org')",
        "UPDATE users SET last_name = 'Byron' WHERE id = 1",
        "DELETE FROM users WHERE id = 2",
    ] {
        let error = v2.simple_query(sql).await.unwrap_err();
        let (code, message) = db_error(&error);
        assert_eq!(code, "0A000", "{sql}: {message}");
        assert!(message.contains("users_split_name") && message.contains("backfill has not finished"), "{message}");
    }
    // The extended protocol is refused the same way.
    let error = v2.execute("UPDATE users SET email = $1 WHERE id = $2", &[&"x@example.org", &2i32]).await.unwrap_err();
    assert_eq!(db_error(&error).0, "0A000");
    assert_eq!(old_rows(&direct).await, before, "a refused write changed the old table");
    let shadow: i64 = direct.query_one("SELECT count(*) FROM public.users_v2", &[]).await.unwrap().get(0);
    assert_eq!(shadow, 0, "a refused write changed the shadow");

    // Old-shaped writes go on while the backfill is pending.
    v1.execute("UPDATE users SET email = $1 WHERE id = $2", &[&"ada@lovelace.org", &1i32]).await.unwrap();
    // Reads in the new shape are served by the old table meanwhile: the shadow holds only row 1, which the
    // UPDATE above wrote, and would have answered with it alone.
    let names: Vec<String> = v2
        .query("SELECT first_name || ' ' || last_name FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["Ada Lovelace", "Alan Turing"]);

    // Operators see the wait: STATUS says so, and a ROUTE made meanwhile says when it takes effect.
    let status = control(&admin, "DUALWRITE STATUS").await;
    assert_eq!(value(&status, "reads_wait_for_backfill"), Some("t"), "{status:?}");
    let route = control(&admin, "DUALWRITE ROUTE users_split_name READS TO v1").await;
    assert_eq!(value(&route, "takes_effect"), Some("when the backfill is done"), "{route:?}");

    backfill_until_done(&admin, "users_split_name").await;
    let status = control(&admin, "DUALWRITE STATUS").await;
    assert_eq!(value(&status, "reads_wait_for_backfill"), Some("f"), "{status:?}");
    let route = control(&admin, "DUALWRITE ROUTE users_split_name READS TO DEFAULT").await;
    assert_eq!(value(&route, "takes_effect"), Some("now"), "{route:?}");
    // Now the shadow holds every row: an INSERT of an existing key fails as on one table, and the UPDATE
    // and DELETE find their rows in both tables.
    let error = v2
        .simple_query("INSERT INTO users (id, first_name, last_name, email) VALUES (1, 'Grace', 'Hopper', 'g@x.org')")
        .await
        .unwrap_err();
    assert_eq!(db_error(&error).0, "23505");
    assert_eq!(v2.execute("UPDATE users SET last_name = 'Byron' WHERE id = $1", &[&1i32]).await.unwrap(), 1);
    assert_eq!(v2.execute("DELETE FROM users WHERE id = $1", &[&2i32]).await.unwrap(), 1);
    assert_eq!(old_rows(&direct).await, ["1 Ada Byron ada@lovelace.org"]);
    let verify = control(&admin, "DUALWRITE VERIFY users_split_name").await;
    assert_eq!((value(&verify, "clean"), value(&verify, "rows_checked")), (Some("t"), Some("1")), "{verify:?}");
}

/// The sync of a write into the phase's source of truth (the old table in `dual_write`, the shadow from
/// `cutover` on) never replaces a row there nor brings one back: a key the truth holds that the table
/// written first lacks (a write the proxy did not see) fails an INSERT as on one table, `ON CONFLICT DO
/// NOTHING` leaves the truth's row alone, `DO UPDATE` sets there only the columns its assignments feed, and
/// an UPDATE of a row the truth lost changes nothing there. Before, the syncs upserted the whole row on the
/// key: the INSERT overwrote the truth's row, the upsert its other columns, the UPDATE re-inserted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_never_replaces_or_brings_back_a_row_of_the_source_of_truth() {
    let Sessions { _db, direct, proxy: _proxy, admin, v1, v2 } = sessions().await;
    backfill_until_done(&admin, "users_split_name").await;
    let shadow_row = |id: i32| {
        let direct = &direct;
        async move {
            let sql = "SELECT first_name || ' ' || last_name FROM public.users_v2 WHERE id = $1";
            direct.query_opt(sql, &[&id]).await.unwrap().map(|r| r.get::<_, String>(0))
        }
    };

    // dual_write: row 50 written to the old table behind the proxy's back.
    direct.batch_execute("INSERT INTO public.users VALUES (50, 'Direct Row', 'direct@example.org')").await.unwrap();
    let insert = "INSERT INTO users (id, first_name, last_name, email) VALUES (50, 'Grace', 'Hopper', 'g@x.org')";
    let error = v2.simple_query(insert).await.unwrap_err();
    let (code, message) = db_error(&error);
    assert_eq!(code, "23505", "{message}");
    assert!(message.contains("\"users_pkey\""), "{message}");
    assert_eq!(shadow_row(50).await, None, "the failed INSERT left nothing in the shadow");
    v2.simple_query(&format!("{insert} ON CONFLICT (id) DO NOTHING")).await.unwrap();
    let expected_old =
        ["1 Ada Lovelace ada@example.org", "2 Alan Turing alan@example.org", "50 Direct Row direct@example.org"];
    assert_eq!(old_rows(&direct).await, expected_old, "the old table's row 50 is kept");
    // The client's own upsert: the shadow's row 50 (the client's, from the DO NOTHING above) is updated,
    // and the old table's row gets only the column the assignment feeds, not the shadow's whole row.
    let upsert = "INSERT INTO users (id, first_name, last_name, email) VALUES (50, 'Grace', 'Hopper', 'new@x.org') \
                  ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email";
    v2.simple_query(upsert).await.unwrap();
    let expected_old = ["1 Ada Lovelace ada@example.org", "2 Alan Turing alan@example.org", "50 Direct Row new@x.org"];
    assert_eq!(old_rows(&direct).await, expected_old, "the old table's row 50 keeps its name");
    // Row 2 deleted from the old table behind the proxy's back: a v2 UPDATE finds it in the shadow only.
    direct.batch_execute("DELETE FROM public.users WHERE id = 2").await.unwrap();
    assert_eq!(v2.execute("UPDATE users SET last_name = 'Byron' WHERE id = $1", &[&2i32]).await.unwrap(), 1);
    let expected_old = ["1 Ada Lovelace ada@example.org", "50 Direct Row new@x.org"];
    assert_eq!(old_rows(&direct).await, expected_old, "the old table's row 2 stays deleted");
    // The shadow holds rows the old table does not (50 as the client gave it, 2): divergences VERIFY
    // reports, repaired from the truth.
    let verify = control(&admin, "DUALWRITE VERIFY users_split_name REPAIR").await;
    assert_eq!(value(&verify, "clean"), Some("f"), "{verify:?}");
    assert_eq!((shadow_row(50).await.as_deref(), shadow_row(2).await), (Some("Direct Row"), None));

    let verify = control(&admin, "DUALWRITE VERIFY users_split_name").await;
    assert_eq!(value(&verify, "clean"), Some("t"), "{verify:?}");

    // cutover: row 60 written to the shadow, now the source of truth, behind the proxy's back.
    control(&admin, "DUALWRITE PHASE users_split_name cutover").await;
    direct
        .batch_execute("INSERT INTO public.users_v2 VALUES (60, 'Shadow', 'Row', 'shadow@example.org')")
        .await
        .unwrap();
    let error = v1.simple_query("INSERT INTO users VALUES (60, 'Vee One', 'v1@example.org')").await.unwrap_err();
    let (code, message) = db_error(&error);
    assert_eq!(code, "23505", "{message}");
    assert!(message.contains("\"users_v2_pkey\""), "{message}");
    assert_eq!(shadow_row(60).await.as_deref(), Some("Shadow Row"), "the shadow's row 60 is kept");
    assert_eq!(old_rows(&direct).await, expected_old, "the failed INSERT left nothing in the old table");
    // Row 1 deleted from the shadow behind the proxy's back: a v1 UPDATE finds it in the old table only.
    direct.batch_execute("DELETE FROM public.users_v2 WHERE id = 1").await.unwrap();
    assert_eq!(v1.execute("UPDATE users SET name = 'Ada Byron' WHERE id = $1", &[&1i32]).await.unwrap(), 1);
    assert_eq!(shadow_row(1).await, None, "the shadow's row 1 stays deleted");
}
