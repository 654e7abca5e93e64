//! The audit log on real Postgres: append-only for every role (the owning control role even after it
//! grants itself the privileges back, and a superuser), hash-chained across concurrent appenders from two
//! instances, rows from before the upgrade chained by the schema migration, and `DUALWRITE AUDIT VERIFY`
//! naming the first broken link after a superuser bypasses the triggers to edit a row, delete one in the
//! middle, or delete the last one.

use std::sync::Arc;

use dualwrite_proxy::control::{execute, parse_control, ControlContext, ControlResponse};
use dualwrite_proxy::pg_client::PgTarget;
use dualwrite_proxy::state::{schema, Actor, StateHandle, StateOptions};
use dualwrite_rules::RuleSet;
use dualwrite_tests::{TestCluster, TestDb};
use tokio_postgres::Client;

const RULES: &str = r#"
[[migration]]
name   = "users_split_name"
table  = "users"
shadow = "users_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }
[migration.forward]
id = "id"
first_name = "split_part(name, ' ', 1)"
[migration.backward]
id   = "id"
name = "first_name"
"#;

const MIGRATION: &str = "users_split_name";

fn admin() -> Actor {
    Actor { role: "ops".into(), client_addr: Some("10.0.0.7:5555".into()) }
}

/// A database with the migration's tables and a non-superuser control role that owns the state schema.
async fn database() -> anyhow::Result<(TestDb, PgTarget, String)> {
    let db = TestCluster::shared().create_database().await?;
    let control_role = format!("{}_control", db.name);
    db.connect()
        .await?
        .batch_execute(&format!(
            "CREATE TABLE users (id int PRIMARY KEY, name text);
             CREATE TABLE users_v2 (id int PRIMARY KEY, first_name text);
             CREATE ROLE \"{control_role}\" LOGIN;
             GRANT CREATE ON DATABASE \"{db}\" TO \"{control_role}\";
             GRANT ALL ON users, users_v2 TO \"{control_role}\";",
            db = db.name
        ))
        .await?;
    let mut pg: PgTarget = db.url().parse()?;
    pg.config_mut().user(&control_role);
    Ok((db, pg, control_role))
}

async fn handle(pg: &PgTarget) -> anyhow::Result<StateHandle> {
    let rules = Arc::new(RuleSet::from_toml(RULES, "test rules")?);
    Ok(StateHandle::connect(pg.clone(), rules, StateOptions::default()).await?)
}

async fn control(state: &StateHandle, sql: &str) -> anyhow::Result<ControlResponse> {
    let ctx = ControlContext {
        state: state.clone(),
        admin_roles: Arc::new(vec!["ops".into()]),
        jobs: None,
        shadow: None,
        pools: None,
    };
    Ok(execute(&ctx, &parse_control(sql)?, &admin()).await?)
}

fn cell<'a>(r: &'a ControlResponse, column: &str) -> Option<&'a str> {
    let i = r.columns.iter().position(|c| c == column).unwrap_or_else(|| panic!("no column {column} in {r:?}"));
    r.rows[0][i].as_deref()
}

/// (intact, first broken id, previous id, problem) of `DUALWRITE AUDIT VERIFY`.
async fn audit_verify(state: &StateHandle) -> (String, Option<String>, Option<String>, String) {
    let r = control(state, "DUALWRITE AUDIT VERIFY").await.expect("audit verify");
    (
        cell(&r, "intact").unwrap().to_string(),
        cell(&r, "first_broken_id").map(str::to_string),
        cell(&r, "previous_id").map(str::to_string),
        cell(&r, "problem").unwrap().to_string(),
    )
}

/// Six audited changes: register plus five reroutes.
async fn some_changes(state: &StateHandle) {
    for percent in [10u8, 20, 30, 40, 50] {
        state.route_reads(MIGRATION, Some("v2"), percent, &admin()).await.expect("route");
    }
}

async fn refused(client: &Client, sql: &str) -> String {
    let err = client.batch_execute(sql).await.expect_err(sql);
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {err}");
    err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn no_role_can_update_delete_or_truncate_the_audit_log() -> anyhow::Result<()> {
    let (db, pg, control_role) = database().await?;
    let state = handle(&pg).await?;
    some_changes(&state).await;
    let superuser = db.connect().await?;
    let owner = dualwrite_tests::connect(&db.url_as(&control_role, None)).await?;
    let rows_before: i64 = superuser.query_one("SELECT count(*) FROM dualwrite.audit_log", &[]).await?.get(0);
    assert_eq!(rows_before, 6);

    // The owner has no UPDATE/DELETE/TRUNCATE privilege; granting them back to itself does not help.
    for sql in [
        "UPDATE dualwrite.audit_log SET action = 'x'",
        "DELETE FROM dualwrite.audit_log",
        "TRUNCATE dualwrite.audit_log",
    ] {
        refused(&owner, sql).await;
    }
    owner
        .batch_execute(
            "GRANT UPDATE, DELETE, TRUNCATE ON dualwrite.audit_log TO CURRENT_USER;
             GRANT DELETE, TRUNCATE ON dualwrite.audit_chain_head TO CURRENT_USER;",
        )
        .await?;
    for client in [&owner, &superuser] {
        for sql in [
            "UPDATE dualwrite.audit_log SET after = '{\"forged\": true}' WHERE id = 2",
            "DELETE FROM dualwrite.audit_log WHERE id = 3",
            "TRUNCATE dualwrite.audit_log",
            "UPDATE dualwrite.audit_chain_head SET last_id = 1",
            "DELETE FROM dualwrite.audit_chain_head",
            "TRUNCATE dualwrite.audit_chain_head",
        ] {
            let message = refused(client, sql).await;
            assert!(message.contains("append-only"), "{sql}: {message}");
        }
    }
    // PUBLIC holds nothing on the log or the head.
    let public: i64 = superuser
        .query_one(
            "SELECT count(*) FROM information_schema.role_table_grants
             WHERE table_schema = 'dualwrite' AND table_name IN ('audit_log', 'audit_chain_head') AND grantee = 'PUBLIC'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(public, 0);
    let rows_after: i64 = superuser.query_one("SELECT count(*) FROM dualwrite.audit_log", &[]).await?.get(0);
    assert_eq!(rows_after, rows_before);
    assert_eq!(audit_verify(&state).await.0, "t");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_two_instances_form_one_chain() -> anyhow::Result<()> {
    let (_db, pg, _) = database().await?;
    let (a, b) = (handle(&pg).await?, handle(&pg).await?);
    let append = |state: StateHandle, who: &'static str| async move {
        for i in 0..25 {
            let details = format!("{{\"by\": \"{who}\", \"n\": {i}}}");
            state.record_action(MIGRATION, "test", &admin(), &details).await.expect("append");
        }
    };
    tokio::join!(append(a.clone(), "a"), append(b.clone(), "b"), append(a.clone(), "a2"), append(b.clone(), "b2"));
    let check = control(&a, "DUALWRITE AUDIT VERIFY").await?;
    assert_eq!((cell(&check, "intact"), cell(&check, "rows_checked")), (Some("t"), Some("101")), "{check:?}");
    assert!(cell(&check, "problem").unwrap().starts_with("none"), "{check:?}");
    // Ids follow the chain: 1..=101 without a gap, whatever order the appenders' sequence values had.
    let entries = a.audit(None, None).await?;
    assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), (1..=101).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn rows_from_before_the_upgrade_are_chained_by_the_schema_migration() -> anyhow::Result<()> {
    let db = TestCluster::shared().create_database().await?;
    db.connect().await?.batch_execute("CREATE TABLE users (id int PRIMARY KEY, name text); CREATE TABLE users_v2 (id int PRIMARY KEY, first_name text);").await?;
    let mut client = db.connect().await?;
    assert_eq!(schema::migrate_to(&mut client, 1).await?, 1);
    // An older proxy's rows, with a gap in the ids (a rolled-back append).
    client
        .batch_execute(
            "INSERT INTO dualwrite.audit_log (id, migration, action, role, after)
             VALUES (1, 'users_split_name', 'register', 'ops', '{\"phase\": \"dual_write\"}'),
                    (2, 'users_split_name', 'route', 'ops', '{\"read_percent\": 10}'),
                    (4, 'users_split_name', 'route', 'ops', '{\"read_percent\": 20}');
             SELECT setval('dualwrite.audit_log_id_seq', 4);",
        )
        .await?;
    let state = handle(&db.url().parse()?).await?;
    let version: i32 = client.query_one("SELECT max(version) FROM dualwrite.schema_version", &[]).await?.get(0);
    assert_eq!(version, schema::SCHEMA_VERSION);
    state.route_reads(MIGRATION, Some("v2"), 30, &admin()).await?;
    let check = control(&state, "DUALWRITE AUDIT VERIFY").await?;
    assert_eq!((cell(&check, "intact"), cell(&check, "rows_checked")), (Some("t"), Some("5")), "{check:?}");
    let ids: Vec<i64> = state.audit(None, None).await?.iter().map(|e| e.id).collect();
    assert_eq!(ids, [1, 2, 4, 5, 6], "the register of this start and the route follow the old rows");
    // The old rows are covered: editing one (as a superuser bypassing the triggers) breaks the chain there.
    client
        .batch_execute(
            "SET session_replication_role = replica;
             UPDATE dualwrite.audit_log SET role = 'someone else' WHERE id = 2;
             RESET session_replication_role;",
        )
        .await?;
    let (intact, id, _, problem) = audit_verify(&state).await;
    assert_eq!((intact.as_str(), id.as_deref()), ("f", Some("2")), "{problem}");
    Ok(())
}

#[tokio::test]
async fn audit_verify_names_the_first_link_a_superuser_broke() -> anyhow::Result<()> {
    let (db, pg, _) = database().await?;
    let state = handle(&pg).await?;
    some_changes(&state).await;
    let superuser = db.connect().await?;
    let (intact, id, _, problem) = audit_verify(&state).await;
    assert_eq!((intact.as_str(), id), ("t", None), "{problem}");

    // 1. Edit a row's `after` with the triggers bypassed: row 3 is named, as changed.
    let original: String =
        superuser.query_one("SELECT after::text FROM dualwrite.audit_log WHERE id = 3", &[]).await?.get(0);
    superuser
        .batch_execute(
            "SET session_replication_role = replica;
             UPDATE dualwrite.audit_log SET after = jsonb_set(after, '{read_percent}', '100') WHERE id = 3;
             RESET session_replication_role;",
        )
        .await?;
    let (intact, id, previous, problem) = audit_verify(&state).await;
    assert_eq!((intact.as_str(), id.as_deref(), previous.as_deref()), ("f", Some("3"), Some("2")));
    assert!(problem.contains("changed after it was written"), "{problem}");
    // Putting the exact content back makes the row match its hash again: the hash covers the content.
    superuser.batch_execute("SET session_replication_role = replica").await?;
    superuser.execute("UPDATE dualwrite.audit_log SET after = $1::text::jsonb WHERE id = 3", &[&original]).await?;
    superuser.batch_execute("RESET session_replication_role").await?;
    assert_eq!(audit_verify(&state).await.0, "t");

    // 2. Delete the last row (a copy kept aside first): the head still names it.
    superuser
        .batch_execute(
            "CREATE TEMP TABLE saved AS SELECT * FROM dualwrite.audit_log WHERE id = 6;
             ALTER TABLE dualwrite.audit_log DISABLE TRIGGER audit_log_append_only;
             DELETE FROM dualwrite.audit_log WHERE id = 6;
             ALTER TABLE dualwrite.audit_log ENABLE TRIGGER audit_log_append_only;",
        )
        .await?;
    let (intact, id, previous, problem) = audit_verify(&state).await;
    assert_eq!((intact.as_str(), id.as_deref(), previous.as_deref()), ("f", Some("6"), Some("5")));
    assert!(problem.contains("rows at its end were deleted"), "{problem}");
    // Put it back as it was (the chain trigger does not fire for a replica-role session).
    superuser
        .batch_execute(
            "SET session_replication_role = replica;
             INSERT INTO dualwrite.audit_log SELECT * FROM saved;
             RESET session_replication_role;",
        )
        .await?;
    assert_eq!(audit_verify(&state).await.0, "t");

    // 3. Delete a middle row: the row after it no longer links to the one before it.
    superuser
        .batch_execute(
            "ALTER TABLE dualwrite.audit_log DISABLE TRIGGER audit_log_append_only;
             DELETE FROM dualwrite.audit_log WHERE id = 4;
             ALTER TABLE dualwrite.audit_log ENABLE TRIGGER audit_log_append_only;",
        )
        .await?;
    let (intact, id, previous, problem) = audit_verify(&state).await;
    assert_eq!((intact.as_str(), id.as_deref(), previous.as_deref()), ("f", Some("5"), Some("3")));
    assert!(problem.contains("does not link to row 3"), "{problem}");

    // Appends go on (the head is intact) and the first broken link stays where it is.
    some_changes(&state).await;
    let (intact, id, _, _) = audit_verify(&state).await;
    assert_eq!((intact.as_str(), id.as_deref()), ("f", Some("5")));
    Ok(())
}
