//! The users split-name migration of the README's Rules files section, end to end through two proxy instances on one
//! database: dual writes of every supported form in both protocols, reads as v1 and v2, backfill and
//! verify through control SQL, a read flip through instance A seen through instance B, percentage
//! routing, cutover, rollback and complete — with the two tables compared under the mapping after each
//! step — plus refusals (non-admin control, unsupported writes) that change nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

mod proxy_support;

use dualwrite_tests::*;
use proxy_support::{command_tags, first_error, RawClient};
use tokio_postgres::{Client, SimpleQueryMessage};

const MIGRATION: &str = "users_split_name";

fn rules_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rewrite-rules/examples/users_split_name.toml")
}

/// The old table and the shadow; the shadow shares the old table's sequence so v2 inserts get ids too.
const SCHEMA: &str = "
    CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text);
    CREATE TABLE users_v2 (id int PRIMARY KEY DEFAULT nextval('users_id_seq'), first_name text, last_name text, email text);
    INSERT INTO users (name, email) SELECT 'Old User' || g, 'OLD' || g || '@Example.org' FROM generate_series(1, 200) g;
";

async fn setup() -> anyhow::Result<(TestDb, Client)> {
    let db = TestCluster::shared().create_database().await?;
    let direct = db.connect().await?;
    direct.batch_execute(SCHEMA).await?;
    Ok((db, direct))
}

/// Rows of the old table mapped forward that the shadow lacks or holds differently, and shadow rows
/// without their old row. `complete_only`: only check shadow rows (before the backfill, old rows that
/// were never written through the proxy are not in the shadow yet).
async fn differences(direct: &Client, shadow_rows_only: bool) -> anyhow::Result<i64> {
    let mapped = "SELECT id, split_part(name, ' ', 1) AS first_name, split_part(name, ' ', 2) AS last_name, lower(email) AS email FROM users";
    let shadow = "SELECT id, first_name, last_name, email FROM users_v2";
    let missing_or_different = format!("SELECT count(*) FROM (({mapped}) EXCEPT ({shadow})) d");
    let extra_or_different = format!("SELECT count(*) FROM (({shadow}) EXCEPT ({mapped})) d");
    let b: i64 = direct.query_one(&extra_or_different, &[]).await?.get(0);
    if shadow_rows_only {
        return Ok(b);
    }
    let a: i64 = direct.query_one(&missing_or_different, &[]).await?.get(0);
    Ok(a + b)
}

async fn assert_in_sync(direct: &Client, step: &str) {
    let d = differences(direct, false).await.unwrap();
    assert_eq!(d, 0, "old and shadow differ under the mapping after: {step}");
}

fn tag(messages: &[SimpleQueryMessage]) -> u64 {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .expect("a command tag")
}

async fn control(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    simple_rows(&client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")))
}

async fn one_value(client: &Client, sql: &str) -> Option<String> {
    simple_rows(&client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")))
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
}

async fn connect_version(proxy: &TestProxy, db: &TestDb, version: &str) -> Client {
    let url = format!("{}?options=-c%20dualwrite.version%3D{version}", proxy.url(db));
    connect(&url).await.unwrap()
}

async fn backfill_and_verify(admin: &Client, direct: &Client) {
    let started = control(admin, &format!("DUALWRITE BACKFILL {MIGRATION} START BATCH 64")).await;
    eventually(Duration::from_secs(60), &format!("backfill done (started: {started:?})"), || async {
        let state = direct
            .query_opt("SELECT state FROM dualwrite.backfill WHERE migration = $1", &[&MIGRATION])
            .await
            .unwrap()
            .map(|r| r.get::<_, String>(0));
        state.as_deref() == Some("done")
    })
    .await;
    let verify = control(admin, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    let header_clean = verify[0].last().cloned().flatten();
    assert!(matches!(header_clean.as_deref(), Some("t" | "true")), "verify after backfill: {verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_walkthrough_through_two_instances() {
    let (db, direct) = setup().await.unwrap();
    let a = TestProxy::with_rules_file(&db, rules_path()).await.unwrap();
    let b = TestProxy::with_rules_file(&db, rules_path()).await.unwrap();
    let admin_a = a.connect(&db).await.unwrap();
    let v1_b = b.connect(&db).await.unwrap();

    // dual_write: writes of every supported form, simple protocol through A ...
    let w = &admin_a;
    let out = w
        .simple_query(
            "INSERT INTO users (name, email) VALUES ('Ada Lovelace', 'ADA@X.org'), ('Grace Hopper', 'Grace@X.org')",
        )
        .await
        .unwrap();
    assert_eq!(tag(&out), 2);
    let out = w
        .simple_query("INSERT INTO users (name, email) VALUES ('Alan Turing', 'AT@x.org') RETURNING id, name")
        .await
        .unwrap();
    let alan: i32 = simple_rows(&out)[0][0].as_ref().unwrap().parse().unwrap();
    assert_eq!(simple_rows(&out)[0][1].as_deref(), Some("Alan Turing"));
    let out = w.simple_query(&format!("UPDATE users SET email = 'alan@turing.org' WHERE id = {alan}")).await.unwrap();
    assert_eq!(tag(&out), 1);
    w.simple_query(
        "UPDATE users u SET name = 'Old Renamed' || s.g FROM (SELECT generate_series(1, 3) g) s WHERE u.id = s.g",
    )
    .await
    .unwrap();
    w.simple_query("DELETE FROM users WHERE id = 10").await.unwrap();
    w.simple_query("DELETE FROM users u USING (VALUES (11), (12)) v(id) WHERE u.id = v.id").await.unwrap();
    w.simple_query("INSERT INTO users (id, name, email) VALUES (5, 'Upserted Five', 'five@x') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email").await.unwrap();
    w.simple_query("INSERT INTO users (name, email) SELECT 'Copy ' || name, email FROM users WHERE id IN (20, 21)")
        .await
        .unwrap();
    // ... and the extended protocol through B.
    let stmt = v1_b.prepare("UPDATE users SET email = $1 WHERE id = $2").await.unwrap();
    assert_eq!(v1_b.execute(&stmt, &[&"B@Extended.org", &30i32]).await.unwrap(), 1);
    assert_eq!(v1_b.execute(&stmt, &[&"b2@extended.org", &31i32]).await.unwrap(), 1);
    let inserted = v1_b
        .query("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id", &[&"Barbara Liskov", &"bl@x"])
        .await
        .unwrap();
    assert_eq!(inserted.len(), 1);
    assert_eq!(v1_b.execute("DELETE FROM users WHERE id = $1", &[&40i32]).await.unwrap(), 1);
    assert_eq!(differences(&direct, true).await.unwrap(), 0, "dual writes land in the shadow through the mapping");

    // backfill the rows that existed before, then verify finds both tables equal
    backfill_and_verify(&admin_a, &direct).await;
    assert_in_sync(&direct, "backfill").await;

    // reads as v1 and as v2 (per connection), on each version's own table
    let v2_a = connect_version(&a, &db, "v2").await;
    assert_eq!(one_value(&v2_a, "SHOW dualwrite.version").await.as_deref(), Some("v2"));
    assert_eq!(
        one_value(&v2_a, &format!("SELECT last_name FROM users WHERE id = {alan}")).await.as_deref(),
        Some("Turing")
    );
    assert_eq!(
        one_value(&v1_b, &format!("SELECT name FROM users WHERE id = {alan}")).await.as_deref(),
        Some("Alan Turing")
    );
    // a v2 session writes in v2 shape; the old table gets the row through the backward mapping
    v2_a.simple_query("INSERT INTO users (first_name, last_name, email) VALUES ('Edsger', 'Dijkstra', 'ewd@x')")
        .await
        .unwrap();
    v2_a.execute("UPDATE users SET last_name = $1 WHERE first_name = 'Edsger'", &[&"Dijkstra-W"]).await.unwrap();
    assert_eq!(
        one_value(&direct, "SELECT name FROM users WHERE email = 'ewd@x'").await.as_deref(),
        Some("Edsger Dijkstra-W")
    );
    assert_in_sync(&direct, "v2 writes").await;

    // a v1 prepared read made before the flip follows the flip (re-prepared transparently)
    let email_of = v1_b.prepare("SELECT email FROM users WHERE id = $1").await.unwrap();
    direct.batch_execute("UPDATE users_v2 SET email = 'marker@shadow' WHERE id = 50").await.unwrap();
    let before: String = v1_b.query_one(&email_of, &[&50i32]).await.unwrap().get(0);
    assert_ne!(before, "marker@shadow");

    // global flip through A, seen through B within a second
    control(&admin_a, &format!("DUALWRITE ROUTE {MIGRATION} READS TO v2")).await;
    let flipped = Instant::now();
    eventually(Duration::from_millis(1500), "flip seen through instance B", || async {
        one_value(&v1_b, "SELECT email FROM users WHERE id = 50").await.as_deref() == Some("marker@shadow")
    })
    .await;
    assert!(flipped.elapsed() < Duration::from_millis(1500));
    let after: String = v1_b.query_one(&email_of, &[&50i32]).await.unwrap().get(0);
    assert_eq!(after, "marker@shadow", "prepared statement follows the new route");
    // v1 clients still see v1 columns while reading the shadow
    assert_eq!(
        one_value(&v1_b, &format!("SELECT name FROM users WHERE id = {alan}")).await.as_deref(),
        Some("Alan Turing")
    );

    // percentage routing: sticky per session, some sessions on each side
    control(&admin_a, &format!("DUALWRITE ROUTE {MIGRATION} READS TO v2 PERCENT 50")).await;
    // B has applied the new route once one of its new sessions reads the old table again.
    eventually(Duration::from_secs(10), "50% routing seen through instance B", || async {
        let s = b.connect(&db).await.unwrap();
        one_value(&s, "SELECT email FROM users WHERE id = 50").await.as_deref() != Some("marker@shadow")
    })
    .await;
    let mut on_shadow = 0;
    for _ in 0..24 {
        let s = b.connect(&db).await.unwrap();
        let first = one_value(&s, "SELECT email FROM users WHERE id = 50").await;
        let second = one_value(&s, "SELECT email FROM users WHERE id = 50").await;
        assert_eq!(first, second, "a session keeps its side");
        if first.as_deref() == Some("marker@shadow") {
            on_shadow += 1;
        }
    }
    assert!((1..24).contains(&on_shadow), "50% routing sent {on_shadow}/24 sessions to the shadow");
    direct
        .batch_execute(
            "UPDATE users_v2 SET email = lower(u.email) FROM users u WHERE u.id = users_v2.id AND users_v2.id = 50",
        )
        .await
        .unwrap();
    assert_in_sync(&direct, "percentage routing").await;

    // cutover: the shadow is the primary; v1 and v2 writes keep both tables in sync
    let phase = control(&admin_a, &format!("DUALWRITE PHASE {MIGRATION} cutover")).await;
    assert!(format!("{phase:?}").contains("cutover"), "{phase:?}");
    // Nothing to wait for on B: both phases write and read alike, only the source of truth differs.
    v1_b.simple_query("INSERT INTO users (name, email) VALUES ('After Cutover', 'AC@x')").await.unwrap();
    v1_b.execute("UPDATE users SET email = $1 WHERE id = $2", &[&"cut@over", &60i32]).await.unwrap();
    v2_a.simple_query("INSERT INTO users (first_name, last_name, email) VALUES ('Barbara', 'Liskov2', 'bl2@x')")
        .await
        .unwrap();
    v2_a.simple_query("DELETE FROM users WHERE id = 61").await.unwrap();
    assert_in_sync(&direct, "cutover writes").await;

    // rollback: back to dual_write with reads on each session's own version, nothing lost
    control(&admin_a, &format!("DUALWRITE ROLLBACK {MIGRATION}")).await;
    let phase: String =
        direct.query_one("SELECT phase FROM dualwrite.migrations WHERE name = $1", &[&MIGRATION]).await.unwrap().get(0);
    assert_eq!(phase, "dual_write");
    v1_b.simple_query("UPDATE users SET name = 'Rolled Back' WHERE id = 62").await.unwrap();
    assert_in_sync(&direct, "rollback").await;

    // complete: only the shadow is written from now on
    control(&admin_a, &format!("DUALWRITE VERIFY {MIGRATION}")).await;
    control(&admin_a, &format!("DUALWRITE PHASE {MIGRATION} cutover")).await;
    control(&admin_a, &format!("DUALWRITE PHASE {MIGRATION} complete")).await;
    // B has applied `complete` once it refuses v1 writes (this one would change no row anyway).
    eventually(Duration::from_secs(10), "complete seen through instance B", || async {
        let refused = v1_b.simple_query("UPDATE users SET name = name WHERE id = -1").await;
        refused.is_err_and(|e| e.code().map(|c| c.code()) == Some("0A000"))
    })
    .await;
    let old_before: i64 = direct.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    v2_a.simple_query("INSERT INTO users (first_name, last_name, email) VALUES ('Only', 'Shadow', 'only@shadow')")
        .await
        .unwrap();
    let old_after: i64 = direct.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(old_before, old_after, "complete: the old table is no longer written");
    let shadow_has: i64 =
        direct.query_one("SELECT count(*) FROM users_v2 WHERE email = 'only@shadow'", &[]).await.unwrap().get(0);
    assert_eq!(shadow_has, 1);

    // the audit log holds every step
    let audit = control(&admin_a, &format!("DUALWRITE AUDIT {MIGRATION}")).await;
    let text = format!("{audit:?}");
    for action in ["route", "cutover", "rollback", "complete"] {
        assert!(text.contains(action), "audit lacks {action}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_change_nothing_and_leave_the_session_usable() {
    let (db, direct) = setup().await.unwrap();
    direct
        .batch_execute(
            "CREATE ROLE app LOGIN; GRANT ALL ON users, users_v2 TO app; GRANT USAGE ON SEQUENCE users_id_seq TO app",
        )
        .await
        .unwrap();
    let proxy = TestProxy::with_rules_file(&db, rules_path()).await.unwrap();

    // non-admin control commands
    let app = connect(&proxy.url_as(&db, "app", None)).await.unwrap();
    let err = app.simple_query("DUALWRITE STATUS").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    let err = app.simple_query(&format!("DUALWRITE PHASE {MIGRATION} cutover FORCE")).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    let phase: String =
        direct.query_one("SELECT phase FROM dualwrite.migrations WHERE name = $1", &[&MIGRATION]).await.unwrap().get(0);
    assert_eq!(phase, "dual_write");
    // a bad control command names what was expected
    let admin = proxy.connect(&db).await.unwrap();
    let err = admin.simple_query("DUALWRITE FLIP everything").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"));

    // an unsupported write is refused (0A000, naming the migration) and changes nothing
    let before: Vec<(i32, String)> = direct
        .query("SELECT id, name FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (sql, protocol) in [
        ("UPDATE users SET id = id + 1000 WHERE id = 1", "simple"),
        ("UPDATE users SET id = id + 1000 WHERE id = 1", "extended"),
    ] {
        let err = if protocol == "simple" {
            app.simple_query(sql).await.unwrap_err()
        } else {
            app.execute(sql, &[]).await.unwrap_err()
        };
        assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{protocol}: {err}");
        let message = err.as_db_error().unwrap().message().to_owned();
        assert!(message.contains(MIGRATION), "{message}");
        // the session is still usable
        assert_eq!(one_value(&app, "SELECT 1").await.as_deref(), Some("1"));
    }
    // inside a transaction the refusal aborts it, so a COMMIT cannot keep the earlier write: the server
    // answers it with the tag ROLLBACK (read off the wire: drivers report only the row count)
    let mut raw = RawClient::connect(proxy.addr(), "app", &db.name).await;
    assert_eq!(command_tags(&raw.query("BEGIN").await), ["BEGIN"]);
    let inserted = raw.query("INSERT INTO users (name, email) VALUES ('In Tx', 'tx@x')").await;
    assert_eq!(command_tags(&inserted), ["INSERT 0 1"], "{inserted:?}");
    let merge = raw.query("MERGE INTO users u USING users_v2 s ON u.id = s.id WHEN MATCHED THEN DELETE").await;
    let (code, message) = first_error(&merge).expect("MERGE was not refused");
    assert_eq!(code, "0A000", "{message}");
    assert!(
        message.contains(&format!("migration \"{MIGRATION}\"")) && message.contains("MERGE is not supported"),
        "the refusal names the migration and the reason: {message}"
    );
    assert_eq!(command_tags(&raw.query("COMMIT").await), ["ROLLBACK"], "COMMIT of the aborted transaction");
    let after: Vec<(i32, String)> = direct
        .query("SELECT id, name FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(before, after, "refused statements changed nothing");
    assert_eq!(differences(&direct, true).await.unwrap(), 0);

    // an unknown version is a 22023 that changes nothing
    let err = app.simple_query("SET dualwrite.version = 'v9'").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"));
    assert_eq!(one_value(&app, "SHOW dualwrite.version").await.as_deref(), Some("v1"));
    // SET inside a rolled-back transaction is undone, like Postgres's own settings
    app.batch_execute("BEGIN; SET dualwrite.version = 'v2'; ROLLBACK").await.unwrap();
    assert_eq!(one_value(&app, "SHOW dualwrite.version").await.as_deref(), Some("v1"));
    app.batch_execute("BEGIN; SET dualwrite.version = 'v2'; COMMIT").await.unwrap();
    assert_eq!(one_value(&app, "SHOW dualwrite.version").await.as_deref(), Some("v2"));
    // as v2 it reads in v2 shape; nothing was backfilled, so the shadow is empty and the old table answers,
    // through the forward mapping (README: v2 writes wait for the backfill)
    assert_eq!(one_value(&app, "SELECT count(first_name) FROM users").await.as_deref(), Some("200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_and_psql_write_through_the_migration() {
    let (db, direct) = setup().await.unwrap();
    let proxy = TestProxy::with_rules_file(&db, rules_path()).await.unwrap();
    let url = proxy.url(&db);
    let script = tempfile::Builder::new().suffix(".sql").tempfile().unwrap();
    std::fs::write(
        script.path(),
        "\\set id random(1, 200)\n\
         UPDATE users SET email = 'pgbench' || :id || '@X.org' WHERE id = :id;\n\
         INSERT INTO users (name, email) VALUES ('Bench Row', 'bench@x') RETURNING id;\n\
         SELECT name FROM users WHERE id = :id;\n",
    )
    .unwrap();
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&url, &["-n", "-M", mode, "-c", "2", "-t", "40", "-f", script.path().to_str().unwrap()])
            .await
            .unwrap();
        out.assert_success();
        assert!(out.stdout.contains("number of failed transactions: 0"), "{mode}: {}", out.stdout);
    }
    assert_eq!(differences(&direct, true).await.unwrap(), 0);
    let psql_out = psql(
        &url,
        &["-v", "ON_ERROR_STOP=1", "-X", "-q"],
        Some("INSERT INTO users (name, email) VALUES ('Psql One', 'p1@x');\nUPDATE users SET name = 'Psql Two' WHERE email = 'p1@x';\nDELETE FROM users WHERE id = 3;\n"),
    )
    .await
    .unwrap();
    psql_out.assert_success();
    assert_eq!(differences(&direct, true).await.unwrap(), 0);
}
