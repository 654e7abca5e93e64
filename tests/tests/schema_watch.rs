//! The schema of a running migration's tables changes after registration (directly on the database, as
//! an operator or a deploy would): the proxy's schema watch notices at its next check. A key default that
//! makes the shadow draw keys from a sequence of its own (the hazard `key_defaults` shows on the tables
//! alone: a keyless v2 INSERT takes an old row's key, and the dual write's upsert overwrites that row), a
//! merge's `present` column that may become NULL and a BEFORE row trigger that assigns the shadow's key (the
//! sync's upsert then lands on an unrelated row) refuse the migration's writes with 55000 naming the
//! finding, prepared ones included, while reads go on; once the schema is fixed, writes resume by
//! themselves. A writer the proxy cannot see that appears is reported but does not stop writes. STATUS
//! (`writes_refused`, `schema_findings`) and `dualwrite_schema_findings` show each on a running proxy, and
//! the audit log records each change once, whatever the number of instances. Committed DDL is checked at
//! once, without waiting for the next periodic check (the event triggers of `ddl_watch`).
//! (Its own test binary: the Prometheus recorder is process-global.)

#[path = "merge_support/mod.rs"]
mod merge_support;

use std::time::Duration;

use dualwrite_proxy::Config;
use dualwrite_tests::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const RULES: &str = include_str!("../../rewrite-rules/examples/users_split_name.toml");
const MIGRATION: &str = "users_split_name";

const SCHEMA: &str = "
    CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
    CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
    INSERT INTO public.users (name, email) VALUES ('Ada Lovelace', 'ada@example.org'),
                                                  ('Alan Turing', 'alan@example.org');
";

const LIMIT: Duration = Duration::from_secs(30);

/// The shadow's key default drawing from a sequence of its own, run directly on the database.
const OWN_SEQUENCE: &str = "CREATE SEQUENCE public.users_v2_own_seq;
     ALTER TABLE public.users_v2 ALTER COLUMN id SET DEFAULT nextval('public.users_v2_own_seq')";

/// A BEFORE row trigger that gives every shadow row a key of its own sequence's.
const SHADOW_KEY_TRIGGER: &str = "CREATE SEQUENCE public.shadow_ids;
     CREATE FUNCTION public.shadow_id() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN NEW.id := nextval('public.shadow_ids'); RETURN NEW; END $$;
     CREATE TRIGGER shadow_id BEFORE INSERT OR UPDATE ON public.users_v2 FOR EACH ROW EXECUTE FUNCTION public.shadow_id();";

/// A writer of `users` the proxy cannot see: a trigger on another table that inserts into it.
const SIGNUP_WRITER: &str = "CREATE TABLE public.signups (id serial PRIMARY KEY, name text);
     CREATE FUNCTION public.signup_user() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN INSERT INTO public.users (name) VALUES (NEW.name); RETURN NEW; END $$;
     CREATE TRIGGER signup_user AFTER INSERT ON public.signups FOR EACH ROW EXECUTE FUNCTION public.signup_user();";

/// The remedy: the shadow's key default draws from the old table's sequence.
const OLD_SEQUENCE: &str = "ALTER TABLE public.users_v2 ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq')";

/// A fresh database holding `SCHEMA`, and a direct session to it.
async fn database() -> (TestDb, Client) {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    (db, direct)
}

/// A proxy on the example rules, its config adjusted by `tweak`, and an admin session through it.
async fn proxy_on(db: &TestDb, tweak: impl FnOnce(&mut Config)) -> (TestProxy, Client) {
    let proxy = TestProxy::with_rules_toml_and(db, RULES, tweak).await.unwrap();
    let admin = proxy.connect(db).await.unwrap();
    (proxy, admin)
}

/// Waits until STATUS says whether `migration`'s writes are refused.
async fn until_writes_refused(admin: &Client, migration: &str, refused: bool) {
    let want = if refused { "t" } else { "f" };
    let what = format!("{migration}: writes_refused = {want}");
    eventually(LIMIT, &what, || async { value(&status_of(admin, migration).await, "writes_refused") == Some(want) })
        .await;
}

/// Waits until the migration's `schema_findings` in STATUS satisfy `ok` (`None`: no finding).
async fn until_findings(admin: &Client, what: &str, ok: impl Fn(Option<&str>) -> bool) {
    eventually(LIMIT, what, || async { ok(value(&status_of(admin, MIGRATION).await, "schema_findings")) }).await;
}

fn is_unsafe_schema_refusal(e: &tokio_postgres::Error, finding: &str) -> bool {
    let (code, message) = db_error(e);
    code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE.code()
        && message.contains(&format!("migration \"{MIGRATION}\""))
        && message.contains(finding)
}

/// The value of the sample line starting with `prefix`, if any.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

fn findings_gauge(migration: &str, kind: &str) -> String {
    format!("dualwrite_schema_findings{{migration=\"{migration}\",kind=\"{kind}\"}} ")
}

/// The `after` of each `schema_findings` row of the migration's audit log, oldest first.
async fn schema_audit(admin: &Client) -> Vec<String> {
    control_rows(admin, &format!("DUALWRITE AUDIT {MIGRATION}"))
        .await
        .iter()
        .filter(|row| value(row, "action") == Some("schema_findings"))
        .map(|row| value(row, "after").unwrap_or_default().to_owned())
        .collect()
}

async fn names(direct: &Client, table: &str) -> Vec<(i32, String)> {
    let sql = match table {
        "users" => "SELECT id, name FROM public.users ORDER BY id",
        _ => "SELECT id, first_name || ' ' || last_name FROM public.users_v2 ORDER BY id",
    };
    direct.query(sql, &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_key_default_of_its_own_refuses_the_migrations_writes_until_it_draws_from_the_old_sequence() {
    let (db, direct) = database().await;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (proxy, admin) = proxy_on(&db, |config| config.metrics_listen = Some(metrics)).await;
    // A second instance sees the same schema: the audit log still records each change once.
    let second = TestProxy::with_rules_toml(&db, RULES).await.unwrap();
    backfill_until_done(&admin, MIGRATION).await;
    let v1 = proxy.connect(&db).await.unwrap();
    let v2 = connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url(&db))).await.unwrap();
    let prepared = v1.prepare("UPDATE users SET email = $1 WHERE id = $2").await.unwrap();
    v1.execute(&prepared, &[&"ada@lovelace.org", &1i32]).await.unwrap();
    let gauge = findings_gauge(MIGRATION, "key_defaults");
    eventually(LIMIT, "the gauge at 0 before any finding", || async {
        sample(&scrape_metrics(metrics).await, &gauge) == Some(0.0)
    })
    .await;

    // The shadow gets a sequence of its own, past the proxy.
    direct.batch_execute(OWN_SEQUENCE).await.unwrap();
    until_writes_refused(&admin, MIGRATION, true).await;
    let row = status_of(&admin, MIGRATION).await;
    let findings = value(&row, "schema_findings").expect("the finding in STATUS").to_owned();
    assert!(
        findings.contains("key column id draws from 2 sequences")
            && findings.contains("public.users_v2 from public.users_v2_own_seq"),
        "{findings}"
    );
    assert!(sample(&scrape_metrics(metrics).await, &gauge) == Some(1.0), "the gauge counts the finding");
    let second_admin = second.connect(&db).await.unwrap();
    until_writes_refused(&second_admin, MIGRATION, true).await;
    let audited = schema_audit(&admin).await;
    assert_eq!(audited.len(), 1, "one audit row for the finding, though two instances saw it: {audited:?}");
    assert!(audited[0].contains("\"kind\": \"key_defaults\"") && audited[0].contains("draws from 2 sequences"));

    let finding = "key column id draws from 2 sequences";
    let keyless_v2 = "INSERT INTO users (first_name, last_name, email) VALUES ('Grace', 'Hopper', 'g@example.org')";
    let e = v2.batch_execute(keyless_v2).await.expect_err("a keyless v2 INSERT is refused");
    assert!(is_unsafe_schema_refusal(&e, finding), "{:?}", db_error(&e));
    let e = v1
        .batch_execute("INSERT INTO users (name, email) VALUES ('Vee One', 'v1@example.org')")
        .await
        .expect_err("a v1 INSERT is refused");
    assert!(is_unsafe_schema_refusal(&e, finding), "{:?}", db_error(&e));
    let e = v1.execute(&prepared, &[&"ada@example.org", &1i32]).await.expect_err("the prepared UPDATE is refused");
    assert!(is_unsafe_schema_refusal(&e, finding), "{:?}", db_error(&e));
    let read: i64 = v1.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(read, 2, "reads are served meanwhile");
    let expected = vec![(1, "Ada Lovelace".to_owned()), (2, "Alan Turing".to_owned())];
    assert_eq!(names(&direct, "users").await, expected, "no old row was overwritten");
    assert_eq!(names(&direct, "users_v2").await, expected);

    // The remedy: the shadow's default draws from the old table's sequence.
    direct.batch_execute(OLD_SEQUENCE).await.unwrap();
    until_writes_refused(&admin, MIGRATION, false).await;
    assert_eq!(value(&status_of(&admin, MIGRATION).await, "schema_findings"), None);
    assert!(sample(&scrape_metrics(metrics).await, &gauge) == Some(0.0), "the gauge is back at 0");
    until_writes_refused(&second_admin, MIGRATION, false).await;
    let audited = schema_audit(&admin).await;
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert_eq!(audited[1], r#"{"findings": []}"#, "the fix is recorded too");
    v1.execute(&prepared, &[&"ada@example.org", &1i32]).await.expect("the prepared UPDATE runs again");
    let one: i32 = v1
        .query_one("INSERT INTO users (name, email) VALUES ('Vee One', 'v1@example.org') RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    let two: i32 =
        v2.query_one(&format!("{keyless_v2} RETURNING id"), &[]).await.expect("a keyless v2 INSERT runs again").get(0);
    assert_eq!((one, two), (3, 4), "both versions take keys from the old table's sequence");
    let expected: Vec<(i32, String)> = ["Ada Lovelace", "Alan Turing", "Vee One", "Grace Hopper"]
        .iter()
        .enumerate()
        .map(|(i, n)| (i as i32 + 1, n.to_string()))
        .collect();
    assert_eq!(names(&direct, "users").await, expected);
    assert_eq!(names(&direct, "users_v2").await.len(), 4);
    second.stop().await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_present_column_that_may_become_null_refuses_the_merges_writes_until_it_is_not_null_again() {
    use merge_support::{Merge, MIGRATION as MERGE, SCHEMA as MERGE_SCHEMA};
    let Merge { db, direct, proxy } = Merge::start(MERGE_SCHEMA).await;
    let admin = proxy.connect(&db).await.unwrap();
    backfill_until_done(&admin, MERGE).await;
    let client = proxy.connect(&db).await.unwrap();

    direct.batch_execute("ALTER TABLE profiles ALTER COLUMN name DROP NOT NULL").await.unwrap();
    until_writes_refused(&admin, MERGE, true).await;
    let findings = value(&status_of(&admin, MERGE).await, "schema_findings").unwrap().to_owned();
    assert!(findings.contains("its present column display_name is name of public.profiles"), "{findings}");
    let e = client.batch_execute("DELETE FROM accounts WHERE id = 25").await.expect_err("refused");
    let (code, message) = db_error(&e);
    assert_eq!(code, SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE.code(), "{message}");
    assert!(message.contains(&format!("migration \"{MERGE}\"")) && message.contains("present column"), "{message}");
    let kept: i64 = direct.query_one("SELECT count(*) FROM accounts WHERE id = 25", &[]).await.unwrap().get(0);
    assert_eq!(kept, 1, "nothing was deleted");
    let read: i64 = client.query_one("SELECT count(*) FROM profiles", &[]).await.unwrap().get(0);
    assert_eq!(read, 40, "reads are served meanwhile");

    direct.batch_execute("ALTER TABLE profiles ALTER COLUMN name SET NOT NULL").await.unwrap();
    until_writes_refused(&admin, MERGE, false).await;
    client.batch_execute("DELETE FROM accounts WHERE id = 25").await.expect("the DELETE runs again");
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_trigger_that_assigns_the_key_refuses_the_migrations_writes_until_it_is_dropped() {
    let (db, direct) = database().await;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (proxy, admin) = proxy_on(&db, |config| config.metrics_listen = Some(metrics)).await;
    let gauge = findings_gauge(MIGRATION, "key_trigger");
    backfill_until_done(&admin, MIGRATION).await;
    let client = proxy.connect(&db).await.unwrap();

    direct.batch_execute(SHADOW_KEY_TRIGGER).await.unwrap();
    until_writes_refused(&admin, MIGRATION, true).await;
    let findings = value(&status_of(&admin, MIGRATION).await, "schema_findings").unwrap().to_owned();
    assert!(findings.contains("row trigger shadow_id on public.users_v2"), "{findings}");
    assert_eq!(sample(&scrape_metrics(metrics).await, &gauge), Some(1.0), "the gauge counts the finding");
    let insert = "INSERT INTO users (name, email) VALUES ('Grace Hopper', 'grace@example.org')";
    let e = client.batch_execute(insert).await.expect_err("a v1 INSERT is refused");
    assert!(is_unsafe_schema_refusal(&e, "assigns a key column outside an IS NULL guard"), "{:?}", db_error(&e));
    let expected = vec![(1, "Ada Lovelace".to_owned()), (2, "Alan Turing".to_owned())];
    assert_eq!(names(&direct, "users").await, expected, "nothing was written");
    assert_eq!(names(&direct, "users_v2").await, expected, "no shadow row was overwritten");

    direct.batch_execute("DROP TRIGGER shadow_id ON public.users_v2").await.unwrap();
    until_writes_refused(&admin, MIGRATION, false).await;
    assert_eq!(sample(&scrape_metrics(metrics).await, &gauge), Some(0.0), "the gauge is back at 0");
    client.batch_execute(insert).await.expect("the INSERT runs again");
    assert_eq!(names(&direct, "users_v2").await.last(), Some(&(3, "Grace Hopper".to_owned())));
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_the_proxy_cannot_see_that_appears_is_reported_and_writes_go_on() {
    let (db, direct) = database().await;
    let (proxy, admin) = proxy_on(&db, |config| config.limits.unseen_writers_check_interval_secs = 1).await;
    backfill_until_done(&admin, MIGRATION).await;
    let client = proxy.connect(&db).await.unwrap();

    direct.batch_execute(SIGNUP_WRITER).await.unwrap();
    until_findings(&admin, "the trigger reported in STATUS", |f| f.is_some_and(|f| f.contains("trigger:"))).await;
    let row = status_of(&admin, MIGRATION).await;
    assert_eq!(value(&row, "writes_refused"), Some("f"), "{row:?}");
    client
        .batch_execute("UPDATE users SET email = 'ada@lovelace.org' WHERE id = 1")
        .await
        .expect("writes go on while an unseen writer is reported");

    direct.batch_execute("DROP TRIGGER signup_user ON public.signups").await.unwrap();
    until_findings(&admin, "the finding cleared", |f| f.is_none()).await;
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_whose_schema_is_unsafe_can_leave_the_dual_writing_phases_but_not_enter_them() {
    let (db, direct) = database().await;
    let (proxy, admin) = proxy_on(&db, |_| {}).await;
    direct.batch_execute(OWN_SEQUENCE).await.unwrap();
    until_writes_refused(&admin, MIGRATION, true).await;

    let off = control(&admin, &format!("DUALWRITE PHASE {MIGRATION} off FORCE")).await;
    assert_eq!(value(&off, "phase"), Some("off"), "{off:?}");
    let row = status_of(&admin, MIGRATION).await;
    assert_eq!(value(&row, "writes_refused"), Some("f"), "nothing is dual-written in off: {row:?}");
    assert!(value(&row, "schema_findings").is_some_and(|f| f.contains("draws from 2 sequences")), "{row:?}");
    let v1 = proxy.connect(&db).await.unwrap();
    v1.batch_execute("UPDATE users SET email = 'ada@lovelace.org' WHERE id = 1").await.expect("off passes writes");

    let e = admin
        .simple_query(&format!("DUALWRITE PHASE {MIGRATION} dual_write"))
        .await
        .expect_err("entering dual_write is refused");
    let (code, message) = db_error(&e);
    assert_eq!(code, SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE.code(), "{message}");
    assert!(
        message.contains(&format!("migration {MIGRATION} cannot enter dual_write"))
            && message.contains("draws from 2 sequences"),
        "{message}"
    );
    assert_eq!(value(&status_of(&admin, MIGRATION).await, "phase"), Some("off"), "the phase did not change");

    assert_eq!(schema_audit(&admin).await.len(), 1, "the finding is in the audit log");

    // Fixed while no instance runs: the next instance's first check records that the findings cleared.
    proxy.stop().await.unwrap();
    direct.batch_execute(OLD_SEQUENCE).await.unwrap();
    let (proxy, admin) = proxy_on(&db, |_| {}).await;
    eventually(LIMIT, "the cleared findings recorded", || async {
        schema_audit(&admin).await.last().map(String::as_str) == Some(r#"{"findings": []}"#)
    })
    .await;
    assert_eq!(schema_audit(&admin).await.len(), 2);
    let entered = control(&admin, &format!("DUALWRITE PHASE {MIGRATION} dual_write")).await;
    assert_eq!(value(&entered, "phase"), Some("dual_write"), "{entered:?}");
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_ddl_is_checked_at_once_without_waiting_for_the_periodic_checks() {
    let (db, direct) = database().await;
    // Both periodic checks an hour apart: within the test's limit, only the event triggers' notification
    // at each DDL's commit can have the proxy act on it.
    let (proxy, admin) = proxy_on(&db, |config| {
        config.limits.schema_check_interval_secs = 3600;
        config.limits.unseen_writers_check_interval_secs = 3600;
    })
    .await;
    backfill_until_done(&admin, MIGRATION).await;

    direct.batch_execute(OWN_SEQUENCE).await.unwrap();
    until_writes_refused(&admin, MIGRATION, true).await;
    direct.batch_execute(OLD_SEQUENCE).await.unwrap();
    until_writes_refused(&admin, MIGRATION, false).await;

    // The hourly search for unseen writers runs too: at a trigger's creation and at its drop.
    direct
        .batch_execute(
            "CREATE FUNCTION public.audit_users() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN UPDATE public.users SET email = lower(email) WHERE id = NEW.id; RETURN NEW; END $$;
             CREATE TABLE public.logins (id int);
             CREATE TRIGGER audit_users AFTER INSERT ON public.logins FOR EACH ROW EXECUTE FUNCTION public.audit_users();",
        )
        .await
        .unwrap();
    until_findings(&admin, "the new writer reported", |f| f.is_some_and(|f| f.contains("trigger:"))).await;
    direct.batch_execute("DROP TRIGGER audit_users ON public.logins").await.unwrap();
    until_findings(&admin, "the finding cleared at the drop", |f| f.is_none()).await;
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_a_shadow_key_default_change_in_its_own_transaction_are_refused_until_it_ends() {
    let (db, direct) = database().await;
    let (proxy, admin) = proxy_on(&db, |_| {}).await;
    backfill_until_done(&admin, MIGRATION).await;
    direct.batch_execute("CREATE SEQUENCE public.users_v2_own_seq").await.unwrap();
    let v2 = connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url(&db))).await.unwrap();
    let alter = "ALTER TABLE users_v2 ALTER COLUMN id SET DEFAULT nextval('public.users_v2_own_seq')";
    let write = "UPDATE users SET email = 'grace@example.org' WHERE id = 2";
    let refused = |e: &tokio_postgres::Error| {
        is_unsafe_schema_refusal(e, "ALTER TABLE users_v2 ALTER COLUMN id SET DEFAULT earlier in this transaction")
    };
    let prepared = v2.prepare(write).await.unwrap();

    // The simple protocol, one request at a time: the DDL passes, the migration's writes after it do not.
    v2.batch_execute("BEGIN").await.unwrap();
    v2.batch_execute(alter).await.expect("the DDL passes");
    let e = v2.batch_execute(write).await.expect_err("a write after it is refused");
    assert!(refused(&e), "{:?}", db_error(&e));
    v2.batch_execute("ROLLBACK").await.unwrap();
    v2.batch_execute(write).await.expect("the transaction over, writes run");

    // The extended protocol: the DDL run as an unnamed prepared statement, then a write prepared before.
    v2.batch_execute("BEGIN").await.unwrap();
    v2.execute(alter, &[]).await.expect("the DDL passes");
    let e = v2.execute(&prepared, &[]).await.expect_err("the prepared write is refused");
    assert!(refused(&e), "{:?}", db_error(&e));
    v2.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(v2.execute(&prepared, &[]).await.expect("and runs again after it"), 1);

    // Committed on its own, the change is the schema watch's to judge (it refuses while it stands).
    v2.batch_execute(alter).await.unwrap();
    until_writes_refused(&admin, MIGRATION, true).await;
    direct.batch_execute(OLD_SEQUENCE).await.unwrap();
    until_writes_refused(&admin, MIGRATION, false).await;
    let expected = vec![(1, "Ada Lovelace".to_owned()), (2, "Alan Turing".to_owned())];
    assert_eq!(names(&direct, "users").await, expected, "no old row was overwritten");
    proxy.stop().await.unwrap();
}

/// A second migration, for the rules that list it before or after the example's.
const ORDERS_RULES: &str = r#"
[[migration]]
name   = "orders_widen_total"
table  = "public.orders"
shadow = "public.orders_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }

[migration.forward]
id    = "id"
total = "total::bigint"

[migration.backward]
id    = "id"
total = "total::int"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_default_change_in_a_transaction_stays_on_its_migration_when_a_reload_reorders_the_rules() {
    let (db, direct) = database().await;
    direct
        .batch_execute(
            "CREATE TABLE public.orders (id int PRIMARY KEY, total int);
             CREATE TABLE public.orders_v2 (id int PRIMARY KEY, total bigint);
             INSERT INTO public.orders VALUES (1, 10);
             CREATE SEQUENCE public.users_v2_own_seq",
        )
        .await
        .unwrap();
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), format!("{RULES}{ORDERS_RULES}")).unwrap();
    let proxy = TestProxy::with_rules_file(&db, file.path()).await.unwrap();
    let admin = proxy.connect(&db).await.unwrap();
    backfill_until_done(&admin, MIGRATION).await;
    backfill_until_done(&admin, "orders_widen_total").await;
    let v2 = connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url(&db))).await.unwrap();

    v2.batch_execute("BEGIN").await.unwrap();
    v2.batch_execute("ALTER TABLE users_v2 ALTER COLUMN id SET DEFAULT nextval('public.users_v2_own_seq')")
        .await
        .expect("the DDL passes");
    // The same migrations, listed the other way round: the example's is no longer the first.
    std::fs::write(file.path(), format!("{ORDERS_RULES}{RULES}")).unwrap();
    proxy.reloader().reload(proxy.config().clone()).await.expect("a reordering reload applies");

    let e = v2
        .batch_execute("UPDATE users SET email = 'grace@example.org' WHERE id = 2")
        .await
        .expect_err("the changed migration's writes stay refused after the reload");
    assert!(
        is_unsafe_schema_refusal(&e, "ALTER TABLE users_v2 ALTER COLUMN id SET DEFAULT earlier in this transaction"),
        "{:?}",
        db_error(&e)
    );
    v2.batch_execute("ROLLBACK").await.unwrap();
    v2.batch_execute("BEGIN").await.unwrap();
    v2.batch_execute("ALTER TABLE users_v2 ALTER COLUMN id SET DEFAULT nextval('public.users_v2_own_seq')")
        .await
        .unwrap();
    v2.batch_execute("UPDATE orders SET total = 20 WHERE id = 1").await.expect("the other migration's writes run");
    v2.batch_execute("COMMIT").await.unwrap();
    let totals: Vec<(i32, i64)> = direct
        .query("SELECT o.total, s.total FROM orders o JOIN orders_v2 s USING (id)", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(totals, [(20, 20)], "the other migration's write reached both tables");
}

/// A migration registered and dual-writing, whose shadow gains a key-assigning trigger while no instance
/// runs: an instance started then is not refused (it would stop every session of the instance over one
/// migration's table); the finding is in force from its first statement, refusing that migration's writes
/// only, while its reads and every other table are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_onto_a_registered_migration_with_an_unsafe_schema_serves_and_refuses_only_its_writes() {
    let (db, direct) = database().await;
    let (proxy, admin) = proxy_on(&db, |_| {}).await;
    backfill_until_done(&admin, MIGRATION).await;
    proxy.stop().await.unwrap();
    direct.batch_execute("CREATE TABLE public.notes (id int PRIMARY KEY, body text)").await.unwrap();
    direct.batch_execute(SHADOW_KEY_TRIGGER).await.unwrap();

    let (proxy, admin) = proxy_on(&db, |_| {}).await;
    let client = proxy.connect(&db).await.unwrap();
    let e = client
        .batch_execute("UPDATE users SET email = 'ada@lovelace.org' WHERE id = 1")
        .await
        .expect_err("the first write of the migration is refused");
    assert!(is_unsafe_schema_refusal(&e, "assigns a key column outside an IS NULL guard"), "{:?}", db_error(&e));
    let expected = vec![(1, "Ada Lovelace".to_owned()), (2, "Alan Turing".to_owned())];
    assert_eq!(names(&direct, "users").await, expected, "nothing was written");
    assert_eq!(names(&direct, "users_v2").await, expected);
    let email: String = client.query_one("SELECT email FROM users WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(email, "ada@example.org", "reads are served");
    client.batch_execute("INSERT INTO notes VALUES (1, 'other tables are served')").await.unwrap();
    let row = status_of(&admin, MIGRATION).await;
    assert_eq!(value(&row, "writes_refused"), Some("t"), "{row:?}");
    assert!(value(&row, "schema_findings").is_some_and(|f| f.contains("row trigger shadow_id")), "{row:?}");

    direct.batch_execute("DROP TRIGGER shadow_id ON public.users_v2").await.unwrap();
    until_writes_refused(&admin, MIGRATION, false).await;
    client.batch_execute("UPDATE users SET email = 'ada@lovelace.org' WHERE id = 1").await.unwrap();
    proxy.stop().await.unwrap();
}

/// As registration refuses a migration whose old table has writers the proxy cannot see that the rules do
/// not accept, a registered migration in `off` cannot enter `dual_write` while the schema watch reports
/// such a writer; FORCE enters anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unaccepted_writer_the_proxy_cannot_see_keeps_a_migration_from_entering_dual_write_unless_forced() {
    let (db, direct) = database().await;
    let (proxy, admin) = proxy_on(&db, |config| config.limits.unseen_writers_check_interval_secs = 1).await;
    control(&admin, &format!("DUALWRITE PHASE {MIGRATION} off FORCE")).await;
    direct.batch_execute(SIGNUP_WRITER).await.unwrap();
    until_findings(&admin, "the trigger reported in STATUS", |f| f.is_some_and(|f| f.contains("trigger:"))).await;

    let e = admin
        .simple_query(&format!("DUALWRITE PHASE {MIGRATION} dual_write"))
        .await
        .expect_err("entering dual_write is refused");
    let (code, message) = db_error(&e);
    assert_eq!(code, SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE.code(), "{message}");
    assert!(
        message.contains(&format!("migration {MIGRATION} cannot enter dual_write"))
            && message.contains("writers the proxy cannot see")
            && message.contains("trigger:public.signups.signup_user"),
        "{message}"
    );
    assert_eq!(value(&status_of(&admin, MIGRATION).await, "phase"), Some("off"), "the phase did not change");
    let forced = control(&admin, &format!("DUALWRITE PHASE {MIGRATION} dual_write FORCE")).await;
    assert_eq!(value(&forced, "phase"), Some("dual_write"), "{forced:?}");
    proxy.stop().await.unwrap();
}
