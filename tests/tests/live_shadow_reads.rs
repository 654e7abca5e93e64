//! Shadow reads through a real proxy on a real PostgreSQL: sampled reads are run again in both shapes on
//! the proxy's own connection and counted (DUALWRITE STATUS shows the figures); a shadow row changed behind
//! the proxy's back is a mismatch; ORDER BY compares sequences, other reads multisets; a migration sampled
//! at 0 counts nothing; a full queue drops samples as `skipped` while the client gets its answers; nothing is
//! sampled before the backfill is done.

use std::time::{Duration, Instant};

use dualwrite_proxy::config::Config;
use dualwrite_rules::RuleSet;
use dualwrite_tests::{backfill_until_done, pgbench, TestCluster, TestDb, TestProxy};
use tokio_postgres::SimpleQueryMessage;

const ORDERS: &str = r#"
[[migration]]
name = "orders_rename"
table = "public.orders"
shadow = "public.orders_v2"
key = ["id"]
versions = { old = "v1", new = "v2" }
shadow_read_sample = 1.0
[migration.forward]
id = "id"
total = "amount"
[migration.backward]
id = "id"
amount = "total"
"#;

const SCHEMA: &str = "
    CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL);
    CREATE TABLE users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
    CREATE TABLE orders (id int PRIMARY KEY, amount int NOT NULL);
    CREATE TABLE orders_v2 (id int PRIMARY KEY, total bigint NOT NULL);
";

/// The example migration (`users` split into `users_v2`) sampled at `sample`.
fn users_rules(sample: &str) -> String {
    let versions = "versions = { old = \"v1\", new = \"v2\" }\n";
    let example = include_str!("../../rewrite-rules/examples/users_split_name.toml");
    assert!(example.contains(versions));
    example.replace(versions, &format!("{versions}shadow_read_sample = {sample}\n"))
}

/// A proxy with `rules` and the given `[shadow_reads]` settings, the superuser as admin.
async fn start_proxy(db: &TestDb, rules: &str, tune: impl FnOnce(&mut Config)) -> (TestProxy, tempfile::NamedTempFile) {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), rules).unwrap();
    let mut config = Config::relay("127.0.0.1:0".parse().unwrap(), db.url());
    config.rules = Some(file.path().to_owned());
    config.admin_roles = vec![db.cluster.superuser().to_owned()];
    tune(&mut config);
    (TestProxy::start(config).await.unwrap(), file)
}

/// A database with both tables of each migration, filled through the proxy (so the shadows agree).
async fn setup(
    rules: &str,
    tune: impl FnOnce(&mut Config),
) -> (TestDb, TestProxy, tempfile::NamedTempFile, tokio_postgres::Client) {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let (proxy, file) = start_proxy(&db, rules, tune).await;
    let client = proxy.connect(&db).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO users VALUES (1, 'Ada Lovelace', 'a@x'), (2, 'Alan Turing', 'b@x'), (3, 'Grace Hopper', 'c@x');
             INSERT INTO orders VALUES (1, 10), (2, 20)",
        )
        .await
        .unwrap();
    // Nothing is sampled in dual_write before the backfill is done.
    for migration in RuleSet::from_toml(rules, "rules.toml").unwrap().migrations {
        backfill_until_done(&client, &migration.name).await;
    }
    (db, proxy, file, direct)
}

/// (compared, mismatched, errors, skipped) of `migration` from DUALWRITE STATUS; `None` when NULL.
async fn figures(client: &tokio_postgres::Client, migration: &str) -> Option<[u64; 4]> {
    let messages = client.simple_query("DUALWRITE STATUS").await.unwrap();
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get("migration") == Some(migration) => Some(r),
            _ => None,
        })
        .expect("a STATUS row for the migration");
    let cell = |c: &str| row.get(c).map(|v| v.parse::<u64>().unwrap());
    Some([
        cell("shadow_reads_compared")?,
        cell("shadow_reads_mismatched")?,
        cell("shadow_reads_errors")?,
        cell("shadow_reads_skipped")?,
    ])
}

/// Polls STATUS until `done` holds for the figures of `migration`, and returns them.
async fn wait_for(client: &tokio_postgres::Client, migration: &str, done: impl Fn([u64; 4]) -> bool) -> [u64; 4] {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = figures(client, migration).await.expect("shadow reads are on");
        if done(f) {
            return f;
        }
        assert!(Instant::now() < deadline, "{migration}: shadow-read figures stuck at {f:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sampled_reads_match_until_a_shadow_row_changes_behind_the_proxy() {
    let (db, proxy, _rules, direct) = setup(&users_rules("1.0"), |_| {}).await;
    let client = proxy.connect(&db).await.unwrap();

    // Simple protocol, extended with binary parameters (tokio-postgres), inside a transaction, and
    // extended with text parameters (pgbench -M extended): every read is compared, and all match.
    let rows = client.simple_query("SELECT id, name FROM users ORDER BY id").await.unwrap();
    assert_eq!(rows.iter().filter(|m| matches!(m, SimpleQueryMessage::Row(_))).count(), 3);
    let name: String = client.query_one("SELECT name FROM users WHERE id = $1", &[&2i32]).await.unwrap().get(0);
    assert_eq!(name, "Alan Turing");
    client.batch_execute("BEGIN").await.unwrap();
    let n = client.query("SELECT * FROM users WHERE email LIKE $1", &[&"%@x"]).await.unwrap().len();
    assert_eq!(n, 3);
    client.batch_execute("COMMIT").await.unwrap();
    let script = tempfile::Builder::new().suffix(".sql").tempfile().unwrap();
    std::fs::write(script.path(), "\\set id random(1, 3)\nSELECT name, email FROM users WHERE id = :id;\n").unwrap();
    let script_path = script.path().to_str().unwrap().to_owned();
    pgbench(&proxy.url(&db), &["-n", "-M", "extended", "-t", "4", "-f", &script_path]).await.unwrap().assert_success();
    // Writes and statements that are not plain reads are never sampled.
    client.execute("UPDATE users SET email = $1 WHERE id = $2", &[&"c@x", &3i32]).await.unwrap();
    client.simple_query("SELECT id FROM users FOR UPDATE").await.unwrap();

    let f = wait_for(&client, "users_split_name", |f| f[0] + f[2] + f[3] >= 7).await;
    assert_eq!(f, [7, 0, 0, 0], "compared, mismatched, errors, skipped");

    // The shadow drifts behind the proxy's back: the same read is now a mismatch.
    direct.execute("UPDATE users_v2 SET last_name = 'Church' WHERE id = 2", &[]).await.unwrap();
    let name: String = client.query_one("SELECT name FROM users WHERE id = $1", &[&2i32]).await.unwrap().get(0);
    assert_eq!(name, "Alan Turing", "the client still reads the old table");
    let f = wait_for(&client, "users_split_name", |f| f[0] >= 8).await;
    assert_eq!(f, [8, 1, 0, 0]);
    // A v2 session's reads are compared too (its own shape on the shadow, the old table through the mapping).
    let v2 =
        dualwrite_tests::connect(&format!("{}?options=-c%20dualwrite.version%3Dv2", proxy.url(&db))).await.unwrap();
    let last: String = v2.query_one("SELECT last_name FROM users WHERE id = $1", &[&1i32]).await.unwrap().get(0);
    assert_eq!(last, "Lovelace");
    v2.query("SELECT last_name FROM users WHERE id = $1", &[&2i32]).await.unwrap();
    let f = wait_for(&client, "users_split_name", |f| f[0] >= 10).await;
    assert_eq!(f, [10, 2, 0, 0]);
}

#[tokio::test]
async fn order_by_compares_sequences_and_other_reads_multisets() {
    let (db, proxy, _rules, direct) = setup(&users_rules("1"), |_| {}).await;
    let client = proxy.connect(&db).await.unwrap();
    // Same ids on both sides, but ordering by email now puts them in another order on the shadow.
    direct.execute("UPDATE users_v2 SET email = 'z@x' WHERE id = 1", &[]).await.unwrap();

    client.query("SELECT id FROM users", &[]).await.unwrap();
    let f = wait_for(&client, "users_split_name", |f| f[0] >= 1).await;
    assert_eq!(f, [1, 0, 0, 0], "unordered: the same multiset of ids");

    let ids: Vec<i32> =
        client.query("SELECT id FROM users ORDER BY email", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [1, 2, 3], "the client reads the old table");
    let f = wait_for(&client, "users_split_name", |f| f[0] >= 2).await;
    assert_eq!(f, [2, 1, 0, 0], "ordered: same rows in another order is a mismatch");
}

#[tokio::test]
async fn a_migration_sampled_at_zero_counts_nothing() {
    let rules = format!("{}{ORDERS}", users_rules("0"));
    let (db, proxy, _rules, _direct) = setup(&rules, |_| {}).await;
    let client = proxy.connect(&db).await.unwrap();
    for _ in 0..5 {
        client.query("SELECT * FROM users", &[]).await.unwrap();
        client.query("SELECT * FROM orders", &[]).await.unwrap();
    }
    let f = wait_for(&client, "orders_rename", |f| f[0] >= 5).await;
    assert_eq!(f, [5, 0, 0, 0], "int and bigint columns compare by their text");
    assert_eq!(figures(&client, "users_split_name").await, Some([0, 0, 0, 0]));
    drop(client);
    proxy.stop().await.unwrap();

    // With every migration at 0 nothing is started, and STATUS says so with NULLs.
    let (proxy, _file) = start_proxy(&db, &users_rules("0"), |_| {}).await;
    let client = proxy.connect(&db).await.unwrap();
    client.query("SELECT * FROM users", &[]).await.unwrap();
    assert_eq!(figures(&client, "users_split_name").await, None);
}

#[tokio::test]
async fn a_full_queue_drops_samples_as_skipped_and_the_client_is_unaffected() {
    let (db, proxy, _rules, mut direct) = setup(&users_rules("1.0"), |c| {
        c.shadow_reads.connections = 1;
        c.shadow_reads.queue = 2;
        c.shadow_reads.statement_timeout_ms = 120_000;
    })
    .await;
    let client = proxy.connect(&db).await.unwrap();
    // The worker blocks on the shadow, which only shadow reads touch (v1 sessions read the old table).
    let lock = direct.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE users_v2 IN ACCESS EXCLUSIVE MODE").await.unwrap();
    const READS: u64 = 12;
    for i in 0..READS {
        let id = (i % 3 + 1) as i32;
        let row = client.query_one("SELECT id, email FROM users WHERE id = $1", &[&id]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), id);
        assert_eq!(row.get::<_, String>(1), ["a@x", "b@x", "c@x"][(id - 1) as usize]);
    }
    // At most one job in the worker and two queued: the rest were dropped.
    let f = wait_for(&client, "users_split_name", |f| f[3] >= READS - 3).await;
    assert_eq!(f[..3], [0, 0, 0], "nothing compared while the worker is blocked: {f:?}");
    lock.rollback().await.unwrap();
    let f = wait_for(&client, "users_split_name", |f| f[0] + f[2] + f[3] == READS).await;
    assert!(f[0] >= 1 && f[1] == 0 && f[2] == 0, "the queued samples ran once the lock went: {f:?}");
}

#[tokio::test]
async fn samples_run_with_the_clients_privileges_not_the_control_roles() {
    let (db, proxy, _rules, direct) = setup(&users_rules("1"), |_| {}).await;
    direct
        .batch_execute(
            "CREATE TABLE secret (x int); INSERT INTO secret VALUES (1);
             CREATE ROLE shadow_app LOGIN PASSWORD 'pw'; GRANT SELECT ON users, users_v2 TO shadow_app",
        )
        .await
        .unwrap();
    let app = dualwrite_tests::connect(&proxy.url_as(&db, "shadow_app", Some("pw"))).await.unwrap();
    let admin = proxy.connect(&db).await.unwrap();
    // The client may not read `secret`, so neither may its sample (the control role, a superuser, could).
    let err = app.simple_query("SELECT id FROM users WHERE id < (SELECT count(*) FROM secret)").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    app.simple_query("SELECT id FROM users").await.unwrap();
    let f = wait_for(&admin, "users_split_name", |f| f[0] + f[2] >= 2).await;
    assert_eq!(f, [1, 0, 1, 0], "the read of secret failed as the client, the plain one matched");
}

#[tokio::test]
async fn sampled_reads_run_under_the_sessions_search_path_and_only_where_it_reaches_the_migrated_table() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct
        .batch_execute(
            "CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b;
             CREATE TABLE tenant_a.orders (id int PRIMARY KEY, amount int NOT NULL);
             CREATE TABLE tenant_a.orders_v2 (id int PRIMARY KEY, total bigint NOT NULL);
             CREATE TABLE tenant_b.orders (id int PRIMARY KEY, amount int NOT NULL);
             INSERT INTO tenant_a.orders VALUES (1, 10); INSERT INTO tenant_a.orders_v2 VALUES (1, 10);
             INSERT INTO tenant_b.orders VALUES (1, 99);",
        )
        .await
        .unwrap();
    let rules = ORDERS.replace("public.orders", "tenant_a.orders");
    let (proxy, _file) = start_proxy(&db, &rules, |_| {}).await;
    backfill_until_done(&proxy.connect(&db).await.unwrap(), "orders_rename").await;
    let on = |tenant: &str| format!("{}?options=-c%20search_path%3D{tenant}", proxy.url(&db));
    let tenant_b = dualwrite_tests::connect(&on("tenant_b")).await.unwrap();
    for _ in 0..3 {
        let amount: i32 = tenant_b.query_one("SELECT amount FROM orders WHERE id = 1", &[]).await.unwrap().get(0);
        assert_eq!(amount, 99, "tenant_b reads its own orders");
    }
    let tenant_a = dualwrite_tests::connect(&on("tenant_a")).await.unwrap();
    for _ in 0..3 {
        let amount: i32 = tenant_a.query_one("SELECT amount FROM orders WHERE id = 1", &[]).await.unwrap().get(0);
        assert_eq!(amount, 10);
    }
    let admin = proxy.connect(&db).await.unwrap();
    let [compared, mismatched, errors, skipped] = wait_for(&admin, "orders_rename", |f| f[0] + f[2] + f[3] >= 3).await;
    assert_eq!((mismatched, errors), (0, 0), "tenant_a's reads compared under its search_path");
    assert_eq!(compared + skipped, 3, "only tenant_a's three reads were sampled, none of tenant_b's");
}

/// Before the backfill is done the shadow lacks the rows not copied yet, so no read is sampled: after it, the
/// first sampled read is the first one compared (the reads before it, queued first, would have been counted
/// first).
#[tokio::test]
async fn nothing_is_sampled_before_the_backfill_is_done() {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    direct
        .batch_execute("INSERT INTO users VALUES (1, 'Ada Lovelace', 'a@x'), (2, 'Alan Turing', 'b@x')")
        .await
        .unwrap();
    let (proxy, _file) = start_proxy(&db, &users_rules("1.0"), |_| {}).await;
    let client = proxy.connect(&db).await.unwrap();
    for _ in 0..3 {
        assert_eq!(client.query("SELECT * FROM users", &[]).await.unwrap().len(), 2, "the old table answers");
    }
    assert_eq!(figures(&client, "users_split_name").await, Some([0, 0, 0, 0]));
    backfill_until_done(&client, "users_split_name").await;
    client.query("SELECT * FROM users", &[]).await.unwrap();
    let f = wait_for(&client, "users_split_name", |f| f[0] >= 1).await;
    assert_eq!(f, [1, 0, 0, 0], "only the read after the backfill was compared, and it matched");
}
