//! BACKFILL and VERIFY through control SQL with the real jobs (`control::jobs_bridge`): the backfill copies
//! the rows, a clean verify follows, and only then does PHASE cutover pass without FORCE; each step is in
//! the audit log. In cutover VERIFY counts against the shadow; at complete it is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dualwrite_proxy::control::jobs_bridge::JobsBridge;
use dualwrite_proxy::control::{execute, parse_control, ControlContext, ControlResponse};
use dualwrite_proxy::jobs::JobRunner;
use dualwrite_proxy::pg_client::PgTarget;
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
last_name  = "split_part(name, ' ', 2)"
[migration.backward]
id   = "id"
name = "first_name || ' ' || last_name"
"#;

/// A database with `users` holding `rows` rows and an empty `users_v2`, and the migration state on it.
async fn users_database(rows: i32) -> anyhow::Result<(dualwrite_tests::TestDb, Arc<RuleSet>, PgTarget, StateHandle)> {
    let db = TestCluster::shared().create_database().await?;
    db.connect()
        .await?
        .batch_execute(&format!(
            "CREATE TABLE users (id serial PRIMARY KEY, name text);
             CREATE TABLE users_v2 (id int PRIMARY KEY, first_name text, last_name text);
             INSERT INTO users (name) SELECT 'first' || i || ' last' || i FROM generate_series(1, {rows}) i;"
        ))
        .await?;
    let rules = Arc::new(RuleSet::from_toml(RULES, "test")?);
    let pg: PgTarget = db.url().parse()?;
    let state = StateHandle::connect(pg.clone(), rules.clone(), StateOptions::default()).await?;
    Ok((db, rules, pg, state))
}

fn cell<'a>(r: &'a ControlResponse, row: usize, column: &str) -> Option<&'a str> {
    let i = r.columns.iter().position(|c| c == column).unwrap_or_else(|| panic!("no column {column} in {r:?}"));
    r.rows[row][i].as_deref()
}

#[tokio::test]
async fn backfill_then_verify_then_cutover() -> anyhow::Result<()> {
    let (_db, rules, pg, state) = users_database(250).await?;
    let bridge = JobsBridge::new(Arc::new(JobRunner::new(pg)), rules);
    let ctx = ControlContext {
        state,
        admin_roles: Arc::new(vec!["ops".into()]),
        jobs: Some(Arc::new(bridge)),
        shadow: None,
        pools: None,
    };
    let actor = Actor { role: "ops".into(), client_addr: Some("127.0.0.1:1".into()) };
    let run = |sql: &'static str| {
        let (ctx, actor) = (ctx.clone(), actor.clone());
        async move {
            let command = parse_control(sql)?;
            execute(&ctx, &command, &actor).await
        }
    };

    let started = run("DUALWRITE BACKFILL users_split_name START BATCH 40").await?;
    assert_eq!(cell(&started, 0, "runs_on"), Some("this instance"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = run("DUALWRITE STATUS").await?;
        if cell(&status, 0, "backfill_state") == Some("done") {
            assert_eq!(cell(&status, 0, "backfill_rows_done"), Some("250"));
            break;
        }
        assert!(Instant::now() < deadline, "backfill did not finish: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = run("DUALWRITE PHASE users_split_name cutover").await.unwrap_err();
    assert!(err.message.contains("verify"), "{err:?}");

    let verify = run("DUALWRITE VERIFY users_split_name").await?;
    assert_eq!((cell(&verify, 0, "rows_checked"), cell(&verify, 0, "clean")), (Some("250"), Some("t")));
    let status = run("DUALWRITE STATUS").await?;
    assert_eq!((cell(&status, 0, "last_verify"), cell(&status, 0, "divergent_rows")), (Some("clean"), Some("0")));

    let cut = run("DUALWRITE PHASE users_split_name cutover").await?;
    assert_eq!(cell(&cut, 0, "phase"), Some("cutover"));

    let audit = run("DUALWRITE AUDIT users_split_name").await?;
    let actions: Vec<&str> = (0..audit.rows.len()).map(|i| cell(&audit, i, "action").unwrap()).collect();
    assert_eq!(actions, ["register", "backfill start", "verify", "phase"]);
    assert!(cell(&audit, 1, "after").unwrap().contains("\"batch\": 40"), "{audit:?}");

    // In cutover VERIFY counts against the shadow; at complete there is nothing to verify: 55000.
    let verify = run("DUALWRITE VERIFY users_split_name").await?;
    assert_eq!((cell(&verify, 0, "source"), cell(&verify, 0, "clean")), (Some("shadow"), Some("t")));
    run("DUALWRITE PHASE users_split_name complete").await?;
    let err = run("DUALWRITE VERIFY users_split_name REPAIR").await.unwrap_err();
    assert_eq!(err.code, "55000", "{err:?}");
    assert!(err.message.contains("complete"), "{err:?}");
    Ok(())
}

/// A backfill started by control SQL on an instance with `control.backfill_max_p99_latency_ms` holds off
/// while the instance's recent p99 (fed by the session layer into `RecentLatency`) is over the limit, and
/// copies once the slow requests have aged out of the window.
#[tokio::test]
async fn backfill_holds_off_while_this_instances_p99_is_over_its_limit() -> anyhow::Result<()> {
    use dualwrite_proxy::config::ControlConfig;
    use dualwrite_proxy::jobs::throttle::Hold;
    use dualwrite_proxy::latency::RecentLatency;

    let (_db, rules, pg, state) = users_database(100).await?;
    let runner = Arc::new(JobRunner::new(pg));
    let control = ControlConfig { backfill_max_p99_latency_ms: Some(50), ..ControlConfig::default() };
    let bridge = JobsBridge::new(Arc::clone(&runner), rules).with_hold_limits(&control);
    // Requests of 200 ms just completed on this instance: its p99 is over the 50 ms limit.
    for _ in 0..100 {
        RecentLatency::global().record(Duration::from_millis(200));
    }
    let ctx = ControlContext {
        state,
        admin_roles: Arc::new(vec!["ops".into()]),
        jobs: Some(Arc::new(bridge)),
        shadow: None,
        pools: None,
    };
    let actor = Actor { role: "ops".into(), client_addr: None };
    let run = |sql: &'static str| {
        let (ctx, actor) = (ctx.clone(), actor.clone());
        async move { execute(&ctx, &parse_control(sql)?, &actor).await }
    };

    run("DUALWRITE BACKFILL users_split_name START").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let hold = loop {
        if let Some(hold) = runner.holding("users_split_name") {
            break hold;
        }
        assert!(Instant::now() < deadline, "the backfill never held off");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(matches!(hold, Hold::Latency(p99) if p99 >= Duration::from_millis(200)), "{hold:?}");
    let status = run("DUALWRITE STATUS").await?;
    assert_eq!(cell(&status, 0, "backfill_rows_done"), Some("0"), "copied while holding: {status:?}");

    // No more slow requests: within two windows (10 s) the slow ones age out and the copy goes on.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = run("DUALWRITE STATUS").await?;
        if cell(&status, 0, "backfill_state") == Some("done") {
            assert_eq!(cell(&status, 0, "backfill_rows_done"), Some("100"));
            break;
        }
        assert!(Instant::now() < deadline, "backfill did not resume: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(runner.holding("users_split_name"), None);
    Ok(())
}
