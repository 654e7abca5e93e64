//! Control SQL from text to answer against real Postgres: parse, admin check, execution through the
//! shared state, and the result sets (columns, rows, tags) the session relays.

use std::sync::Arc;
use std::time::Duration;

use dualwrite_proxy::control::{execute, parse_control, ControlContext, ControlResponse, SqlError};
use dualwrite_proxy::state::{Actor, StateHandle, StateOptions};
use dualwrite_rules::RuleSet;
use dualwrite_tests::TestCluster;

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

async fn context() -> anyhow::Result<ControlContext> {
    let db = TestCluster::shared().create_database().await?;
    db.connect()
        .await?
        .batch_execute("CREATE TABLE users (id serial PRIMARY KEY, name text); CREATE TABLE users_v2 (id int PRIMARY KEY, first_name text);")
        .await?;
    let rules = Arc::new(RuleSet::from_toml(RULES, "test")?);
    let options = StateOptions { poll_interval: Duration::from_secs(60), ..StateOptions::default() };
    let state = StateHandle::connect(db.url().parse()?, rules, options).await?;
    Ok(ControlContext { state, admin_roles: Arc::new(vec!["ops".into()]), jobs: None, shadow: None, pools: None })
}

fn actor(role: &str) -> Actor {
    Actor { role: role.into(), client_addr: Some("127.0.0.1:40000".into()) }
}

async fn run(ctx: &ControlContext, role: &str, sql: &str) -> Result<ControlResponse, SqlError> {
    let command = parse_control(sql)?;
    execute(ctx, &command, &actor(role)).await
}

fn cell<'a>(r: &'a ControlResponse, row: usize, column: &str) -> Option<&'a str> {
    let i = r.columns.iter().position(|c| c == column).unwrap_or_else(|| panic!("no column {column}"));
    r.rows[row][i].as_deref()
}

#[tokio::test]
async fn non_admin_is_refused_and_nothing_changes() -> anyhow::Result<()> {
    let ctx = context().await?;
    for sql in [
        "DUALWRITE STATUS",
        "DUALWRITE PHASE users_split_name cutover FORCE",
        "DUALWRITE ROUTE users_split_name READS TO v2",
        "DUALWRITE AUDIT",
    ] {
        let err = run(&ctx, "app", sql).await.unwrap_err();
        assert_eq!(err.code, "42501", "{sql}: {err:?}");
    }
    let status = run(&ctx, "ops", "DUALWRITE STATUS").await?;
    assert_eq!(cell(&status, 0, "phase"), Some("dual_write"));
    assert_eq!(cell(&status, 0, "read_source"), Some("session version"));
    let audit = run(&ctx, "ops", "DUALWRITE AUDIT").await?;
    assert_eq!(audit.rows.len(), 1, "only the registration: {audit:?}");
    Ok(())
}

#[tokio::test]
async fn admin_walks_route_phase_rollback_and_audit() -> anyhow::Result<()> {
    let ctx = context().await?;
    let r = run(&ctx, "ops", "dualwrite route users_split_name reads to v2 percent 25;").await?;
    assert_eq!((r.tag.as_str(), cell(&r, 0, "read_percent")), ("SELECT 1", Some("25")));

    let status = run(&ctx, "ops", "DUALWRITE STATUS").await?;
    assert_eq!(status.tag, "SELECT 1");
    assert_eq!(
        (cell(&status, 0, "migration"), cell(&status, 0, "read_source"), cell(&status, 0, "read_percent")),
        (Some("users_split_name"), Some("v2"), Some("25"))
    );
    assert_eq!(cell(&status, 0, "last_verify"), Some("never"));

    let err = run(&ctx, "ops", "DUALWRITE PHASE users_split_name cutover").await.unwrap_err();
    assert_eq!(err.code, "55000");
    let r = run(&ctx, "ops", "DUALWRITE PHASE users_split_name cutover FORCE").await?;
    assert_eq!((cell(&r, 0, "phase_before"), cell(&r, 0, "phase")), (Some("dual_write"), Some("cutover")));
    let r = run(&ctx, "ops", "DUALWRITE ROLLBACK users_split_name").await?;
    assert_eq!(cell(&r, 0, "phase"), Some("dual_write"));

    let audit = run(&ctx, "ops", "DUALWRITE AUDIT users_split_name").await?;
    let actions: Vec<&str> = (0..audit.rows.len()).map(|i| cell(&audit, i, "action").unwrap()).collect();
    assert_eq!(actions, ["register", "route", "phase force", "rollback"]);
    assert_eq!(cell(&audit, 3, "role"), Some("ops"));
    assert_eq!(cell(&audit, 3, "client_addr"), Some("127.0.0.1:40000"));
    let last = run(&ctx, "ops", "DUALWRITE AUDIT LIMIT 1").await?;
    assert_eq!(cell(&last, 0, "action"), Some("rollback"));
    Ok(())
}

#[tokio::test]
async fn errors_from_the_state_are_answered_with_their_sqlstate() -> anyhow::Result<()> {
    let ctx = context().await?;
    let err = run(&ctx, "ops", "DUALWRITE PHASE nope cutover").await.unwrap_err();
    assert_eq!(err.code, "42704");
    let err = run(&ctx, "ops", "DUALWRITE ROUTE users_split_name READS TO v3").await.unwrap_err();
    assert_eq!(err.code, "22023");
    let err = run(&ctx, "ops", "DUALWRITE PHASE users_split_name").await.unwrap_err();
    assert_eq!(err.code, "42601");
    Ok(())
}

#[tokio::test]
async fn backfill_and_verify_without_jobs_are_not_available() -> anyhow::Result<()> {
    let ctx = context().await?;
    for sql in ["DUALWRITE BACKFILL users_split_name START", "DUALWRITE VERIFY users_split_name"] {
        let err = run(&ctx, "ops", sql).await.unwrap_err();
        assert_eq!(err.code, "0A000", "{sql}");
        assert!(err.message.contains("not available in this build"), "{err:?}");
    }
    Ok(())
}
