//! A migration belongs to one database: through one proxy, sessions on another database of the same server
//! keep their own `users` table untouched (nothing rewritten, nothing in any shadow, control SQL there
//! says where the migrations are); migrations in two databases are each served from their own database
//! (dual writes, state, control SQL, backfill); a database named in the rules that does not exist stops
//! the proxy at start with a clear error.

use std::time::Duration;

use dualwrite_proxy::{Config, Server};
use dualwrite_tests::{connect, control, eventually, simple_rows, TestCluster, TestDb, TestProxy};
use tokio_postgres::{Client, SimpleQueryMessage};

mod proxy_support;

use proxy_support::{SPLIT_RULES, SPLIT_TABLES};

/// `users` split into `users_v2` as migration `name`, in the database named by `database` (`None`: the
/// upstream URL's).
fn rules(name: &str, database: Option<&str>) -> String {
    let database = database.map(|d| format!("database = \"{d}\"\n")).unwrap_or_default();
    let renamed = SPLIT_RULES.replace("name   = \"users_split_name\"\n", &format!("name = \"{name}\"\n{database}"));
    assert_ne!(renamed, SPLIT_RULES);
    renamed
}

const USERS: &str = "CREATE TABLE users (id int PRIMARY KEY, name text)";

/// A fresh database of the shared cluster with `schema` run in it.
async fn database(schema: &[&str]) -> TestDb {
    let db = TestCluster::shared().create_database().await.unwrap();
    db.connect().await.unwrap().batch_execute(&schema.join(";\n")).await.unwrap();
    db
}

async fn ids(client: &Client, table: &str) -> Vec<i32> {
    let rows = client.query(&format!("SELECT id FROM {table} ORDER BY id"), &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn has_schema(client: &Client, schema: &str) -> bool {
    client.query_one("SELECT to_regnamespace($1) IS NOT NULL", &[&schema]).await.unwrap().get(0)
}

/// The migrations DUALWRITE STATUS lists on `client`, with their read source.
async fn status(client: &Client) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    Ok(client
        .simple_query("DUALWRITE STATUS")
        .await?
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((r.get("migration")?.to_owned(), r.get("read_source").unwrap_or_default().to_owned()))
            }
            _ => None,
        })
        .collect())
}

fn sqlstate(error: &tokio_postgres::Error) -> &str {
    error.code().map(|c| c.code()).unwrap_or("none")
}

#[tokio::test]
async fn a_session_on_another_database_writes_its_own_users_untouched() {
    let app = database(&[SPLIT_TABLES]).await;
    let other = database(&[USERS]).await;
    // No `database` in the rules: the migration is in the upstream URL's database, `app`.
    let proxy = TestProxy::with_rules_toml(&app, &rules("users_split_name", None)).await.unwrap();
    let via_other = connect(&proxy.url(&other)).await.unwrap();

    // Simple and extended protocol, the statements a rewriter would turn into dual writes on `app`.
    via_other.batch_execute("INSERT INTO users VALUES (1, 'Ada'), (2, 'Alan'), (3, 'Grace')").await.unwrap();
    let n = via_other.execute("UPDATE users SET name = $1 WHERE id = $2", &[&"Ada L", &1i32]).await.unwrap();
    assert_eq!(n, 1);
    let n = via_other.execute("DELETE FROM users WHERE id = $1", &[&3i32]).await.unwrap();
    assert_eq!(n, 1);
    let row = via_other.query_one("INSERT INTO users VALUES (4, 'Edsger') RETURNING id, name", &[]).await.unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, String>(1)), (4, "Edsger".to_owned()));
    let names: Vec<String> =
        via_other.query("SELECT name FROM users ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(names, ["Ada L", "Alan", "Edsger"]);
    // DDL on a migrated table is refused on `app`; here it is someone else's table.
    via_other.batch_execute("ALTER TABLE users ADD COLUMN note text").await.unwrap();

    // dualwrite.version is an ordinary custom setting there: the server takes and shows any value.
    via_other.batch_execute("SET dualwrite.version = 'no-such-version'").await.unwrap();
    let shown = simple_rows(&via_other.simple_query("SHOW dualwrite.version").await.unwrap());
    assert_eq!(shown, [[Some("no-such-version".to_owned())]]);
    via_other.batch_execute("INSERT INTO users (id, name) VALUES (5, 'Barbara')").await.unwrap();
    // Also as a startup option, which a database with migrations would refuse for an unknown version.
    let options = format!("{}?options=-c%20dualwrite.version%3Dv9", proxy.url(&other));
    let with_option = connect(&options).await.unwrap();
    let shown = simple_rows(&with_option.simple_query("SHOW dualwrite.version").await.unwrap());
    assert_eq!(shown, [[Some("v9".to_owned())]]);
    with_option.batch_execute("INSERT INTO users (id, name) VALUES (6, 'Frances')").await.unwrap();
    let on_app = format!("{}?options=-c%20dualwrite.version%3Dv9", proxy.url(&app));
    let refused = connect(&on_app).await.unwrap().simple_query("SELECT * FROM users").await.unwrap_err();
    assert_eq!(sqlstate(&refused), "22023", "{refused}");

    let direct_other = other.connect().await.unwrap();
    assert_eq!(ids(&direct_other, "users").await, [1, 2, 4, 5, 6]);
    assert!(!has_schema(&direct_other, "dualwrite").await, "no state in a database without migrations");
    let direct_app = app.connect().await.unwrap();
    assert_eq!(ids(&direct_app, "users").await, Vec::<i32>::new(), "nothing reached app's users");
    assert_eq!(ids(&direct_app, "users_v2").await, Vec::<i32>::new(), "nothing reached app's shadow");

    // The same proxy still migrates `app`: its writes land in both tables, and versions are checked.
    let via_app = proxy.connect(&app).await.unwrap();
    via_app.batch_execute("INSERT INTO users VALUES (7, 'Ken')").await.unwrap();
    assert_eq!(ids(&direct_app, "users_v2").await, [7]);
    let refused = via_app.batch_execute("SET dualwrite.version = 'no-such-version'").await.unwrap_err();
    assert_eq!(sqlstate(&refused), "22023", "{refused}");
    assert_eq!(ids(&direct_other, "users").await, [1, 2, 4, 5, 6], "app's writes stay in app");
}

#[tokio::test]
async fn control_sql_on_a_database_without_migrations_names_where_they_are() {
    let app = database(&[SPLIT_TABLES]).await;
    let other = database(&[USERS]).await;
    let proxy = TestProxy::with_rules_toml(&app, &rules("users_split_name", None)).await.unwrap();

    let via_app = proxy.connect(&app).await.unwrap();
    assert_eq!(status(&via_app).await.unwrap(), [("users_split_name".to_owned(), "session version".to_owned())]);

    let via_other = connect(&proxy.url(&other)).await.unwrap();
    for sql in ["DUALWRITE STATUS", "DUALWRITE PHASE users_split_name cutover FORCE", "dualwrite audit"] {
        let error = via_other.simple_query(sql).await.unwrap_err();
        let db_error = error.as_db_error().unwrap_or_else(|| panic!("{sql}: {error}"));
        assert_eq!(db_error.code().code(), "55000", "{sql}: {error}");
        let expected =
            format!("database \"{}\" holds no migrations; migrations are in database \"{}\"", other.name, app.name);
        assert!(db_error.message().contains(&expected), "{sql}: {}", db_error.message());
    }
    let error = via_other.simple_query("DUALWRITE PHASE users_split_name").await.unwrap_err();
    assert_eq!(sqlstate(&error), "42601", "a malformed command gets its syntax error: {error}");
    // The refused PHASE changed nothing in app's state.
    assert_eq!(status(&via_app).await.unwrap(), [("users_split_name".to_owned(), "session version".to_owned())]);
    let phase: String = app
        .connect()
        .await
        .unwrap()
        .query_one("SELECT phase FROM dualwrite.migrations WHERE name = 'users_split_name'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(phase, "dual_write");
}

#[tokio::test]
async fn one_proxy_serves_migrations_in_two_databases_each_from_its_own() {
    let app = database(&[SPLIT_TABLES]).await;
    let crm =
        database(&[SPLIT_TABLES, "INSERT INTO users SELECT g, 'old ' || g FROM generate_series(100, 149) g"]).await;
    let both = format!("{}{}", rules("app_users", None), rules("crm_users", Some(&crm.name)));
    let proxy = TestProxy::with_rules_toml(&app, &both).await.unwrap();
    let (via_app, via_crm) = (proxy.connect(&app).await.unwrap(), proxy.connect(&crm).await.unwrap());
    let (direct_app, direct_crm) = (app.connect().await.unwrap(), crm.connect().await.unwrap());

    // Each database dual-writes its own tables under its own migration.
    via_app.batch_execute("INSERT INTO users VALUES (1, 'Ada')").await.unwrap();
    via_crm.execute("INSERT INTO users VALUES ($1, $2)", &[&2i32, &"Alan"]).await.unwrap();
    assert_eq!((ids(&direct_app, "users").await, ids(&direct_app, "users_v2").await), (vec![1], vec![1]));
    assert_eq!(ids(&direct_crm, "users_v2").await, [2]);
    assert_eq!(ids(&direct_crm, "users").await, [2].into_iter().chain(100..150).collect::<Vec<_>>());

    // Each database keeps its own state, and control SQL there sees and changes only its migrations.
    assert!(has_schema(&direct_app, "dualwrite").await && has_schema(&direct_crm, "dualwrite").await);
    via_crm.batch_execute("DUALWRITE ROUTE crm_users READS TO v2").await.unwrap();
    assert_eq!(status(&via_crm).await.unwrap(), [("crm_users".to_owned(), "v2".to_owned())]);
    assert_eq!(status(&via_app).await.unwrap(), [("app_users".to_owned(), "session version".to_owned())]);
    let error = via_app.simple_query("DUALWRITE PHASE crm_users cutover FORCE").await.unwrap_err();
    let db_error = error.as_db_error().unwrap();
    assert_eq!(db_error.code().code(), "42704", "crm's migration is unknown on app: {error}");
    assert_eq!(db_error.message(), format!("migration \"crm_users\" does not exist in database \"{}\"", app.name));
    assert!(db_error.hint().is_some_and(|h| h.contains(&format!("database \"{}\"", crm.name))), "{db_error:?}");
    assert_eq!(status(&via_crm).await.unwrap(), [("crm_users".to_owned(), "v2".to_owned())], "crm's state unchanged");

    // crm's backfill runs against crm (its rows, its checkpoint), started from a session on crm.
    via_crm.batch_execute("DUALWRITE BACKFILL crm_users START BATCH 20").await.unwrap();
    eventually(Duration::from_secs(30), "crm's backfill copies crm's old rows and records itself done", || {
        let direct_crm = &direct_crm;
        async move {
            let state = direct_crm
                .query_opt("SELECT state FROM dualwrite.backfill WHERE migration = 'crm_users'", &[])
                .await
                .unwrap()
                .map(|r| r.get::<_, String>(0));
            state.as_deref() == Some("done")
        }
    })
    .await;
    assert_eq!(ids(&direct_crm, "users_v2").await.len(), 51, "every crm row copied");
    assert_eq!(ids(&direct_app, "users_v2").await, [1], "app's shadow untouched by crm's backfill");
    let backfills: i64 = direct_app.query_one("SELECT count(*) FROM dualwrite.backfill", &[]).await.unwrap().get(0);
    assert_eq!(backfills, 0, "app's state holds no backfill of crm's");
}

#[tokio::test]
async fn a_database_named_in_the_rules_that_does_not_exist_stops_the_start() {
    let app = database(&[SPLIT_TABLES]).await;
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), rules("ghost_users", Some("no_such_database_here"))).unwrap();
    let mut config = Config::relay("127.0.0.1:0".parse().unwrap(), app.url());
    config.rules = Some(file.path().to_owned());
    let error = match Server::bind(config).await {
        Ok(_) => panic!("the proxy started with a migration in a database that does not exist"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("database \"no_such_database_here\" (migrations \"ghost_users\")"),
        "names the database and migration: {error}"
    );
    assert!(error.contains("does not exist"), "says why: {error}");
}

#[tokio::test]
async fn a_reload_changes_each_databases_migrations_but_not_which_databases_hold_them() {
    let app = database(&[SPLIT_TABLES]).await;
    let crm = database(&[SPLIT_TABLES, "CREATE TABLE users_v3 (id int PRIMARY KEY, first_name text)"]).await;
    let third = database(&[SPLIT_TABLES]).await;
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    let two = format!("{}{}", rules("app_users", None), rules("crm_users", Some(&crm.name)));
    std::fs::write(file.path(), &two).unwrap();
    let mut config = Config::relay("127.0.0.1:0".parse().unwrap(), app.url());
    config.rules = Some(file.path().to_owned());
    config.admin_roles = vec![app.cluster.superuser().to_owned()];
    let server = Server::bind(config.clone()).await.unwrap();
    let (addr, reloader) = (server.local_addr(), server.reloader());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let (via_app, via_crm) = (connect(&app.url_via(addr)).await.unwrap(), connect(&crm.url_via(addr)).await.unwrap());

    // A third database holding migrations needs a restart: refused, nothing changes.
    std::fs::write(file.path(), format!("{two}{}", rules("third_users", Some(&third.name)))).unwrap();
    let error = format!("{:#}", reloader.reload(config.clone()).await.unwrap_err());
    assert!(error.contains("needs a restart") && error.contains(&third.name), "{error}");
    let via_third = connect(&third.url_via(addr)).await.unwrap();
    via_third.batch_execute("INSERT INTO users VALUES (3, 'Grace')").await.unwrap();
    assert_eq!(ids(&third.connect().await.unwrap(), "users_v2").await, Vec::<i32>::new(), "third stays untouched");

    // crm's migration now writes users_v3. While it dual-writes users_v2 that is refused (its shadow holds
    // rows the recorded definition made) ...
    let crm_users = rules("crm_users", Some(&crm.name));
    let to_v3 = two.replace(&crm_users, &crm_users.replace("users_v2", "users_v3"));
    assert_ne!(to_v3, two);
    std::fs::write(file.path(), to_v3).unwrap();
    let error = format!("{:#}", reloader.reload(config.clone()).await.unwrap_err());
    assert!(error.contains("migration `crm_users` is in dual_write") && error.contains("(shadows changed)"), "{error}");
    // ... once it is off, the reload applies: crm's sessions follow at their next statement, app's do not move.
    control(&via_crm, "DUALWRITE PHASE crm_users off FORCE").await;
    let report = reloader.reload(config).await.unwrap();
    assert_eq!(report.changed, ["migration crm_users changed"]);
    control(&via_crm, "DUALWRITE PHASE crm_users dual_write").await;
    via_crm.batch_execute("INSERT INTO users VALUES (2, 'Alan')").await.unwrap();
    via_app.batch_execute("INSERT INTO users VALUES (1, 'Ada')").await.unwrap();
    let direct_crm = crm.connect().await.unwrap();
    assert_eq!((ids(&direct_crm, "users_v3").await, ids(&direct_crm, "users_v2").await), (vec![2], vec![]));
    assert_eq!(ids(&app.connect().await.unwrap(), "users_v2").await, [1]);
}

#[tokio::test]
async fn jobs_check_and_shadow_reads_of_a_migration_run_in_its_database() {
    use dualwrite_proxy::check::{run, CheckArgs};
    use dualwrite_proxy::jobs::cli::{backfill_status, verify_status, BackfillArgs, JobTarget, VerifyArgs};

    let app = database(&[USERS]).await;
    let crm = database(&[SPLIT_TABLES, "INSERT INTO users SELECT g, 'old ' || g FROM generate_series(1, 30) g"]).await;
    let sampled =
        rules("crm_users", Some(&crm.name)).replace("key    = [\"id\"]", "key    = [\"id\"]\nshadow_read_sample = 1.0");
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), &sampled).unwrap();
    // The proxy (upstream URL: app) keeps crm's state in crm, where the jobs below checkpoint.
    let proxy = TestProxy::with_rules_toml(&app, &sampled).await.unwrap();
    // Every command is given the upstream URL of `app`; the rules send them to `crm`.
    let target = JobTarget { migration: "crm_users".into(), rules: file.path().to_owned(), upstream: app.url() };

    let mut report = Vec::new();
    let findings = run(&CheckArgs::new(file.path(), app.url()), &mut report).await.unwrap();
    let report = String::from_utf8(report).unwrap();
    assert_eq!(findings.errors, 0, "crm has both tables: {report}");
    assert!(report.contains("migration crm_users: users -> users_v2"), "{report}");

    let backfill =
        BackfillArgs { target: target.clone(), batch: 7, rate: None, max_replication_lag: None, restart: false };
    assert_eq!(backfill_status(backfill).await, 0);
    let direct_crm = crm.connect().await.unwrap();
    assert_eq!(ids(&direct_crm, "users_v2").await, (1..=30).collect::<Vec<_>>());
    assert!(!has_schema(&app.connect().await.unwrap(), "dualwrite").await, "nothing of crm's lands in app");
    direct_crm.batch_execute("UPDATE users_v2 SET first_name = 'drifted' WHERE id = 5").await.unwrap();
    let verify = VerifyArgs { target, repair: false, chunk_rows: 10 };
    assert_eq!(verify_status(verify).await, 1, "verify of crm finds the drifted row");

    // Shadow reads of crm's sessions run on crm, and crm's STATUS counts them.
    let via_crm = proxy.connect(&crm).await.unwrap();
    via_crm.query("SELECT id, name FROM users WHERE id < 4", &[]).await.unwrap();
    eventually(Duration::from_secs(30), "crm's STATUS counts a compared shadow read", || {
        let via_crm = &via_crm;
        async move {
            let messages = via_crm.simple_query("DUALWRITE STATUS").await.unwrap();
            messages.iter().any(|m| match m {
                SimpleQueryMessage::Row(r) => r.get("shadow_reads_compared").is_some_and(|n| n != "0"),
                _ => false,
            })
        }
    })
    .await;
}

#[tokio::test]
async fn a_reload_that_fails_in_one_database_leaves_every_database_as_it_was() {
    let accounts = "CREATE TABLE accounts (id int PRIMARY KEY, name text);
                    CREATE TABLE accounts_v2 (id int PRIMARY KEY, first_name text)";
    let mut dbs = [database(&[SPLIT_TABLES, accounts]).await, database(&[SPLIT_TABLES]).await];
    // Databases are reloaded in name order: the first takes its new rules, then the second fails.
    dbs.sort_by(|a, b| a.name.cmp(&b.name));
    let [first, second] = dbs;
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    let (in_first, in_second) = (rules("first_users", Some(&first.name)), rules("second_users", Some(&second.name)));
    std::fs::write(file.path(), format!("{in_first}{in_second}")).unwrap();
    let mut config = Config::relay("127.0.0.1:0".parse().unwrap(), first.url());
    config.rules = Some(file.path().to_owned());
    config.admin_roles = vec![first.cluster.superuser().to_owned()];
    let server = Server::bind(config.clone()).await.unwrap();
    let (addr, reloader) = (server.local_addr(), server.reloader());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    // The second database goes away; the reload adds a migration to the first and changes the second's.
    let admin = connect(&first.cluster.connection_string()).await.unwrap();
    admin.batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", second.name)).await.unwrap();
    let accounts_split = rules("accounts_split", Some(&first.name)).replace("users", "accounts");
    let second_changed = in_second.replace("key    = [\"id\"]", "key    = [\"id\"]\nshadow_read_sample = 0.5");
    std::fs::write(file.path(), format!("{in_first}{accounts_split}{second_changed}")).unwrap();
    let error = format!("{:#}", reloader.reload(config).await.unwrap_err());
    assert!(error.contains(&second.name), "{error}");

    // The first database runs its old rules: the added migration is neither applied nor accepted by control SQL.
    let via_first = connect(&first.url_via(addr)).await.unwrap();
    via_first.batch_execute("INSERT INTO accounts VALUES (1, 'Ada')").await.unwrap();
    assert_eq!(ids(&first.connect().await.unwrap(), "accounts_v2").await, Vec::<i32>::new());
    let refused = via_first.simple_query("DUALWRITE PHASE accounts_split off FORCE").await.unwrap_err();
    assert_eq!(sqlstate(&refused), "42704", "{refused}");
    via_first.batch_execute("INSERT INTO users VALUES (2, 'Alan')").await.unwrap();
    assert_eq!(ids(&first.connect().await.unwrap(), "users_v2").await, [2], "the rules in force still apply");
}
