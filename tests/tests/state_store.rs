//! The `dualwrite` state schema and `StateHandle` against real Postgres: schema creation (twice, and two
//! instances at once), registration of the rules' migrations, changes seen by a second instance within a
//! second (NOTIFY, the polling fallback, and after the listener's connection is killed), the phase rules,
//! the audit log, sequences moved at cutover, and the event triggers that announce committed DDL.

use std::sync::Arc;
use std::time::Duration;

use dualwrite_proxy::pg_client::PgTarget;
use dualwrite_proxy::state::watcher::LISTENER_APPLICATION_NAME;
use dualwrite_proxy::state::{schema, Actor, StateHandle, StateOptions, StateSnapshot};
use dualwrite_rules::{Phase, RuleSet};
use dualwrite_tests::{eventually, TestCluster, TestDb};

const RULES: &str = r#"
[[migration]]
name   = "users_split_name"
table  = "public.users"
shadow = "public.users_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }
[migration.forward]
id = "id"
first_name = "split_part(name, ' ', 1)"
last_name  = "split_part(name, ' ', 2)"
[migration.backward]
id   = "id"
name = "first_name || ' ' || last_name"

[[migration]]
name   = "orders_off"
table  = "orders"
shadow = "orders_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }
initial_phase = "off"
[migration.forward]
id = "id"
[migration.backward]
id = "id"
"#;

fn rules() -> Arc<RuleSet> {
    Arc::new(RuleSet::from_toml(RULES, "test rules").unwrap())
}

fn admin() -> Actor {
    Actor { role: "ops".into(), client_addr: Some("10.0.0.7:5555".into()) }
}

async fn database() -> anyhow::Result<TestDb> {
    let db = TestCluster::shared().create_database().await?;
    db.connect()
        .await?
        .batch_execute(
            "CREATE TABLE users (id serial PRIMARY KEY, name text);
             CREATE TABLE users_v2 (id int PRIMARY KEY DEFAULT nextval('users_id_seq'), first_name text, last_name text);",
        )
        .await?;
    Ok(db)
}

async fn handle(db: &TestDb, poll: Duration) -> anyhow::Result<StateHandle> {
    let options = StateOptions { poll_interval: poll, ..StateOptions::default() };
    Ok(StateHandle::connect(db.url().parse()?, rules(), options).await?)
}

/// Wait (at most `within`) until `handle`'s snapshot satisfies `ok`.
async fn seen_within(handle: &StateHandle, within: Duration, ok: impl Fn(&StateSnapshot) -> bool) -> bool {
    let mut changes = handle.subscribe();
    tokio::time::timeout(within, async {
        loop {
            if ok(&handle.snapshot()) {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .is_ok()
        && ok(&handle.snapshot())
}

/// Pids of the state listener connections on `db` that have run their LISTEN: LISTEN is a listener's
/// first statement, so one that is idle after any statement has run it.
async fn listening_pids(db: &TestDb) -> Vec<i32> {
    db.connect()
        .await
        .unwrap()
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() \
             AND state = 'idle' AND query <> '' ORDER BY pid",
            &[&LISTENER_APPLICATION_NAME],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until `n` listeners on `db`, none of them one of `gone`, have run their LISTEN.
async fn wait_listening(db: &TestDb, n: usize, gone: &[i32]) -> Vec<i32> {
    let fresh = || async { listening_pids(db).await.into_iter().filter(|p| !gone.contains(p)).collect::<Vec<_>>() };
    eventually(Duration::from_secs(30), "the state listeners run LISTEN", || async { fresh().await.len() == n }).await;
    fresh().await
}

fn phase_of(s: &StateSnapshot, m: &str) -> Option<Phase> {
    s.migration(m).map(|m| m.phase)
}

#[tokio::test]
async fn schema_is_created_once_even_concurrently() -> anyhow::Result<()> {
    let db = database().await?;
    let (mut a, mut b) = (db.connect().await?, db.connect().await?);
    let (ra, rb) = tokio::join!(schema::ensure_schema(&mut a), schema::ensure_schema(&mut b));
    assert_eq!(ra?, schema::SCHEMA_VERSION);
    assert_eq!(rb?, schema::SCHEMA_VERSION);
    assert_eq!(schema::ensure_schema(&mut a).await?, schema::SCHEMA_VERSION);
    let versions: Vec<i32> = a
        .query("SELECT version FROM dualwrite.schema_version ORDER BY version", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=schema::SCHEMA_VERSION).collect::<Vec<_>>());
    let tables: i64 = a.query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'dualwrite'", &[]).await?.get(0);
    // schema_version, migrations, audit_log, audit_chain_head, backfill, verify_runs, divergent_keys,
    // cdc_watch, cdc_bypasses, migration_definitions
    assert_eq!(tables, 10);
    Ok(())
}

#[tokio::test]
async fn two_instances_start_at_once_and_register_each_migration_once() -> anyhow::Result<()> {
    let db = database().await?;
    let (a, b) = tokio::join!(handle(&db, Duration::from_secs(60)), handle(&db, Duration::from_secs(60)));
    let (a, b) = (a?, b?);
    for h in [&a, &b] {
        let s = h.snapshot();
        assert_eq!(phase_of(&s, "users_split_name"), Some(Phase::DualWrite));
        assert_eq!(phase_of(&s, "orders_off"), Some(Phase::Off), "initial_phase from the rules");
    }
    let registered: i64 = db
        .connect()
        .await?
        .query_one("SELECT count(*) FROM dualwrite.audit_log WHERE action = 'register'", &[])
        .await?
        .get(0);
    assert_eq!(registered, 2);
    Ok(())
}

#[tokio::test]
async fn change_is_audited_and_seen_by_another_instance_through_notify() -> anyhow::Result<()> {
    let db = database().await?;
    let a = handle(&db, Duration::from_secs(60)).await?;
    // B never polls during the test: only NOTIFY can tell it.
    let b = handle(&db, Duration::from_secs(3600)).await?;
    wait_listening(&db, 2, &[]).await;
    a.route_reads("users_split_name", Some("v2"), 30, &admin()).await?;
    let a_sees = a.snapshot().migration("users_split_name").cloned().unwrap();
    assert_eq!((a_sees.read_source.as_deref(), a_sees.read_percent), (Some("v2"), 30), "the changer sees it at once");
    assert!(
        seen_within(&b, Duration::from_secs(1), |s| {
            s.migration("users_split_name")
                .is_some_and(|m| m.read_source.as_deref() == Some("v2") && m.read_percent == 30)
        })
        .await,
        "instance B did not see the route within a second"
    );
    let audit = a.audit(Some("users_split_name"), None).await?;
    let last = audit.last().unwrap();
    assert_eq!((last.action.as_str(), last.role.as_deref()), ("route", Some("ops")));
    assert_eq!(last.client_addr.as_deref(), Some("10.0.0.7:5555"));
    assert!(last.before.as_deref().unwrap().contains("\"read_source\": null"), "{:?}", last.before);
    assert!(last.after.as_deref().unwrap().contains("\"read_percent\": 30"), "{:?}", last.after);
    Ok(())
}

#[tokio::test]
async fn polling_picks_up_a_change_made_without_notify() -> anyhow::Result<()> {
    let db = database().await?;
    let a = handle(&db, Duration::from_millis(300)).await?;
    db.connect()
        .await?
        .execute("UPDATE dualwrite.migrations SET read_source = 'v2' WHERE name = 'users_split_name'", &[])
        .await?;
    assert!(
        seen_within(&a, Duration::from_secs(1), |s| {
            s.migration("users_split_name").and_then(|m| m.read_source.as_deref()) == Some("v2")
        })
        .await
    );
    Ok(())
}

#[tokio::test]
async fn listener_reconnects_after_its_connection_is_killed() -> anyhow::Result<()> {
    let db = database().await?;
    let a = handle(&db, Duration::from_secs(3600)).await?;
    let b = handle(&db, Duration::from_secs(3600)).await?;
    let listeners = wait_listening(&db, 2, &[]).await;
    let killed: i64 = db
        .connect()
        .await?
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM unnest($1::int4[]) pid",
            &[&listeners],
        )
        .await?
        .get(0);
    assert_eq!(killed, 2);
    // Both reconnect (on new connections) and LISTEN again before the change is made.
    wait_listening(&db, 2, &listeners).await;
    a.change_phase("users_split_name", Phase::Cutover, true, &admin()).await?;
    assert!(
        seen_within(&b, Duration::from_secs(2), |s| phase_of(s, "users_split_name") == Some(Phase::Cutover)).await,
        "B's listener did not come back"
    );
    Ok(())
}

#[tokio::test]
async fn phase_rules_are_enforced() -> anyhow::Result<()> {
    let db = database().await?;
    let h = handle(&db, Duration::from_secs(60)).await?;
    let m = "users_split_name";
    let err = h.change_phase(m, Phase::Cutover, false, &admin()).await.unwrap_err().to_sql_error();
    assert_eq!(err.code, "55000");
    assert!(err.message.contains("backfill is not done"), "{err:?}");
    let err = h.change_phase(m, Phase::Complete, false, &admin()).await.unwrap_err().to_sql_error();
    assert!(err.message.contains("only reachable from cutover"), "{err:?}");
    let err = h.change_phase("nope", Phase::Cutover, true, &admin()).await.unwrap_err().to_sql_error();
    assert_eq!(err.code, "42704");
    let err = h.route_reads(m, Some("v9"), 100, &admin()).await.unwrap_err().to_sql_error();
    assert_eq!(err.code, "22023");

    // a finished backfill and a clean verify open the way to cutover
    let c = db.connect().await?;
    c.batch_execute(
        "INSERT INTO dualwrite.backfill (migration, state, rows_done, rows_total) VALUES ('users_split_name', 'done', 0, 0);
         INSERT INTO dualwrite.verify_runs (migration, started_at, finished_at, clean) VALUES ('users_split_name', now(), now(), false);",
    )
    .await?;
    let err = h.change_phase(m, Phase::Cutover, false, &admin()).await.unwrap_err().to_sql_error();
    assert!(err.message.contains("verify"), "{err:?}");
    c.batch_execute(
        "INSERT INTO dualwrite.verify_runs (migration, started_at, finished_at, clean) VALUES ('users_split_name', now(), now(), true)",
    )
    .await?;
    h.route_reads(m, Some("v2"), 50, &admin()).await?;
    let change = h.change_phase(m, Phase::Cutover, false, &admin()).await?;
    assert!(change.changed && change.before == Phase::DualWrite);
    assert_eq!(h.snapshot().migration(m).unwrap().read_percent, 50, "cutover keeps the read routing");
    let same = h.change_phase(m, Phase::Cutover, false, &admin()).await?;
    assert!(!same.changed);

    // rollback: back to dual_write, reads on each session's own version
    h.rollback(m, &admin()).await?;
    let s = h.snapshot();
    let row = s.migration(m).unwrap();
    assert_eq!((row.phase, row.read_source.as_deref(), row.read_percent), (Phase::DualWrite, None, 100));

    h.change_phase(m, Phase::Cutover, false, &admin()).await?;
    h.change_phase(m, Phase::Complete, false, &admin()).await?;
    let s = h.snapshot();
    let row = s.migration(m).unwrap();
    assert_eq!((row.phase, row.read_source.as_deref()), (Phase::Complete, Some("v2")), "complete reads the new table");
    let err = h.rollback(m, &admin()).await.unwrap_err().to_sql_error();
    assert!(err.message.contains("complete"), "{err:?}");
    let err = h.change_phase(m, Phase::Off, false, &admin()).await.unwrap_err().to_sql_error();
    assert!(err.message.contains("FORCE"), "{err:?}");
    h.change_phase(m, Phase::Off, true, &admin()).await?;

    let actions: Vec<String> = h.audit(Some(m), None).await?.into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["register", "route", "phase", "rollback", "phase", "phase", "phase force"]);
    let last_two: Vec<String> = h.audit(Some(m), Some(2)).await?.into_iter().map(|e| e.action).collect();
    assert_eq!(last_two, ["phase", "phase force"]);
    Ok(())
}

#[tokio::test]
async fn cutover_moves_the_key_sequence_past_the_largest_key_of_both_tables() -> anyhow::Result<()> {
    let db = database().await?;
    let c = db.connect().await?;
    // the old table's sequence issued 1..3; a row copied into the shadow has id 40 (e.g. set explicitly)
    c.batch_execute(
        "INSERT INTO users (name) VALUES ('a b'), ('c d'), ('e f');
         INSERT INTO users_v2 (id, first_name, last_name) VALUES (1, 'a', 'b'), (40, 'x', 'y');",
    )
    .await?;
    let h = handle(&db, Duration::from_secs(60)).await?;
    let change = h.change_phase("users_split_name", Phase::Cutover, true, &admin()).await?;
    // Both tables' defaults draw from users_id_seq (registration refuses two sequences): moved once.
    assert_eq!(change.sequences, [("public.users_id_seq".to_owned(), 40)]);
    let next_old: i32 = c.query_one("INSERT INTO users (name) VALUES ('g h') RETURNING id", &[]).await?.get(0);
    let next_new: i32 = c.query_one("INSERT INTO users_v2 (first_name) VALUES ('i') RETURNING id", &[]).await?.get(0);
    assert_eq!((next_old, next_new), (41, 42));
    Ok(())
}

#[tokio::test]
async fn schema_belongs_to_a_non_superuser_control_role_and_apps_cannot_touch_it() -> anyhow::Result<()> {
    let db = database().await?;
    let (control_role, app_role) = (format!("{}_control", db.name), format!("{}_app", db.name));
    db.connect()
        .await?
        .batch_execute(&format!(
            "CREATE ROLE \"{control_role}\" LOGIN; CREATE ROLE \"{app_role}\" LOGIN;
             GRANT CREATE ON DATABASE \"{}\" TO \"{control_role}\";",
            db.name
        ))
        .await?;
    let mut pg: PgTarget = db.url().parse()?;
    pg.config_mut().user(&control_role);
    // Configured for the control role (trust-authenticated here, so never checked): it must not be stored.
    pg.config_mut().password("CONTROL_PW_c0ffee");
    let h = StateHandle::connect(pg, rules(), StateOptions::default()).await?;
    h.route_reads("users_split_name", Some("v2"), 10, &admin()).await?;
    let superuser = db.connect().await?;
    let owner: String = superuser
        .query_one("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'dualwrite'", &[])
        .await?
        .get(0);
    assert_eq!(owner.trim_matches('"'), control_role);
    let tables: Vec<String> = superuser
        .query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'dualwrite' ORDER BY 1", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 6, "{tables:?}");
    let app = dualwrite_tests::connect(&db.url_as(&app_role, None)).await?;
    let mut attempts = vec![
        "INSERT INTO dualwrite.audit_log (action) VALUES ('forged')".to_owned(),
        "CREATE TABLE dualwrite.forged (x int)".to_owned(),
        "CREATE FUNCTION dualwrite.forged() RETURNS int LANGUAGE sql AS 'SELECT 1'".to_owned(),
    ];
    for table in &tables {
        for sql in [
            "SELECT * FROM dualwrite.{t}",
            "UPDATE dualwrite.{t} SET {c} = {c}",
            "DELETE FROM dualwrite.{t}",
            "TRUNCATE dualwrite.{t}",
        ] {
            // Apps have USAGE on the schema (mirrored merge writes call `dualwrite.merge_row_held`), so a
            // missing column would be reported before the privilege: name one the table has.
            let column: String = superuser
                .query_one(
                    "SELECT attname::text FROM pg_attribute \
                     WHERE attrelid = ('dualwrite.' || $1)::regclass AND attnum = 1",
                    &[table],
                )
                .await?
                .get(0);
            attempts.push(sql.replace("{t}", table).replace("{c}", &column));
        }
    }
    // What apps may do: call the mirror's check, which raises unless the row is held.
    assert!(app
        .query_one("SELECT dualwrite.merge_row_held(true, 'm', 't', 's', 'id', '(1)')", &[])
        .await?
        .get::<_, bool>(0));
    for sql in &attempts {
        let err = app.batch_execute(sql).await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {err}");
    }
    // No credential is kept in the schema.
    for table in &tables {
        let sql = format!("SELECT count(*) FROM dualwrite.{table} t WHERE t::text LIKE '%CONTROL_PW_c0ffee%'");
        let n: i64 = superuser.query_one(&sql, &[]).await?.get(0);
        assert_eq!(n, 0, "{table}");
    }
    Ok(())
}

/// A running migration's definition (its tables, key and mappings) is what its shadow's rows were made
/// by, and what other instances run: rules that define it differently are refused at a reload and at an
/// instance's start while it is outside `off`, naming what changed; other settings change freely; once it
/// is off, the new definition replaces the recorded one, audited as `redefine`.
#[tokio::test]
async fn rules_that_redefine_a_running_migration_are_refused_until_it_is_off() -> anyhow::Result<()> {
    let db = database().await?;
    let h = handle(&db, Duration::from_secs(60)).await?;
    let sampled = RULES.replacen("[[migration]]", "[[migration]]\nshadow_read_sample = 0.5", 1);
    h.set_rules(Arc::new(RuleSet::from_toml(&sampled, "rules")?), &admin()).await?;

    let remapped = RULES.replace("split_part(name, ' ', 2)", "split_part(name, ' ', 3)");
    let remapped = Arc::new(RuleSet::from_toml(&remapped, "rules")?);
    let refused = h.set_rules(Arc::clone(&remapped), &admin()).await.expect_err("a reload redefining it").to_string();
    assert!(
        refused.contains("migration `users_split_name` is in dual_write")
            && refused.contains("(forward changed)")
            && refused.contains("DUALWRITE PHASE users_split_name off FORCE"),
        "{refused}"
    );
    let options = StateOptions::default();
    let second = StateHandle::connect(db.url().parse()?, Arc::clone(&remapped), options).await;
    let refused = second.err().expect("an instance starting on rules that redefine it").to_string();
    assert!(refused.contains("(forward changed)"), "{refused}");

    h.change_phase("users_split_name", Phase::Off, true, &admin()).await?;
    h.set_rules(Arc::clone(&remapped), &admin()).await?;
    let actions: Vec<String> =
        h.audit(Some("users_split_name"), None).await?.into_iter().map(|entry| entry.action).collect();
    assert_eq!(actions.last().map(String::as_str), Some("redefine"), "{actions:?}");
    // The recorded definition is the new one: the same rules load again, here and in a new instance.
    h.set_rules(Arc::clone(&remapped), &admin()).await?;
    StateHandle::connect(db.url().parse()?, remapped, StateOptions::default()).await?;
    Ok(())
}

/// The names of the database's enabled event triggers of the schema watch (`ddl_watch`).
async fn ddl_watch_triggers(db: &TestDb) -> anyhow::Result<Vec<String>> {
    let rows = db
        .connect()
        .await?
        .query(
            "SELECT evtname::text FROM pg_event_trigger WHERE evtname LIKE 'dualwrite%' AND evtenabled <> 'D' ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The next notification (channel, payload) within 30 s.
async fn next(announced: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(30), announced.recv()).await.expect("a notification").unwrap()
}

#[tokio::test]
async fn committed_ddl_outside_temporary_schemas_is_announced_to_the_schema_watch_and_never_fails() -> anyhow::Result<()>
{
    use futures::StreamExt;
    let db = database().await?;
    let _first = handle(&db, Duration::from_secs(60)).await?;
    // A second instance finds the triggers in place.
    let _second = handle(&db, Duration::from_secs(60)).await?;
    assert_eq!(ddl_watch_triggers(&db).await?, ["dualwrite_schema_changed", "dualwrite_schema_dropped"]);

    // An application role (no privilege beyond creating in public): its DDL runs the trigger and succeeds.
    let app_role = format!("{}_ddl_app", db.name);
    db.connect()
        .await?
        .batch_execute(&format!("CREATE ROLE \"{app_role}\" LOGIN; GRANT CREATE ON SCHEMA public TO \"{app_role}\""))
        .await?;
    let app = dualwrite_tests::connect(&db.url_as(&app_role, None)).await?;
    app.batch_execute("CREATE MATERIALIZED VIEW public.app_totals AS SELECT count(*) FROM pg_class").await?;

    let (listener, mut connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await?;
    let (tx, mut announced) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = std::pin::pin!(futures::stream::poll_fn(move |cx| connection.poll_message(cx)));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN dualwrite_schema").await?;

    // An instance's start (the function is current: not replaced), a session's temporary objects, DDL
    // rolled back and a materialized view's refresh announce nothing: the first notification is the
    // sequence's.
    let _third = handle(&db, Duration::from_secs(60)).await?;
    app.batch_execute("CREATE TEMPORARY TABLE scratch (id serial PRIMARY KEY); DROP TABLE scratch").await?;
    app.batch_execute("BEGIN; CREATE TABLE public.rolled_back (id int); ROLLBACK").await?;
    // (A refresh and a comment change no definition the schema watch reads.)
    app.batch_execute(
        "REFRESH MATERIALIZED VIEW public.app_totals; COMMENT ON MATERIALIZED VIEW public.app_totals IS 'x'",
    )
    .await?;
    app.batch_execute("CREATE SEQUENCE public.marker_seq").await?;
    assert_eq!(next(&mut announced).await, ("dualwrite_schema".to_owned(), "CREATE SEQUENCE".to_owned()));
    // Drops are announced by the sql_drop trigger.
    app.batch_execute("DROP SEQUENCE public.marker_seq").await?;
    assert_eq!(next(&mut announced).await.1, "DROP SEQUENCE");
    db.connect().await?.batch_execute("ALTER TABLE users_v2 ALTER COLUMN first_name SET DEFAULT 'x'").await?;
    assert_eq!(next(&mut announced).await.1, "ALTER TABLE");
    Ok(())
}

#[tokio::test]
async fn no_event_triggers_without_a_superuser_control_role_or_when_turned_off() -> anyhow::Result<()> {
    let db = database().await?;
    let control_role = format!("{}_control", db.name);
    db.connect()
        .await?
        .batch_execute(&format!(
            "CREATE ROLE \"{control_role}\" LOGIN; GRANT CREATE ON DATABASE \"{}\" TO \"{control_role}\";",
            db.name
        ))
        .await?;
    let mut pg: PgTarget = db.url().parse()?;
    pg.config_mut().user(&control_role);
    let _not_permitted = StateHandle::connect(pg, rules(), StateOptions::default()).await?;
    assert!(ddl_watch_triggers(&db).await?.is_empty(), "event triggers need a superuser; the instance runs without");
    let off = StateOptions { check_schema_on_ddl: false, ..StateOptions::default() };
    let _turned_off = StateHandle::connect(db.url().parse()?, rules(), off).await?;
    assert!(ddl_watch_triggers(&db).await?.is_empty(), "schema_check_on_ddl = false creates none");
    Ok(())
}
