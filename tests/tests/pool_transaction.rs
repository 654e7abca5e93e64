//! Transaction mode (`pool_mode = "transaction"`): many clients share a few server connections, one per
//! transaction; session state pins (a COPY the parser cannot read does not); the proxy's own
//! `dualwrite.version` survives the swaps; the wait timeout, cancel, a client killed mid-transaction,
//! `DUALWRITE POOLS` and the pool metrics; the per-database and per-user pool mode. Prepared statements across
//! connections: pool_prepared.rs.

mod pool_support;
mod proxy_support;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dualwrite_proxy::config::PoolMode;
use dualwrite_tests::*;
use pool_support::*;
use proxy_support::*;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn forty_clients_run_their_transactions_over_four_server_connections() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = connect_direct(&db).await;
    direct
        .batch_execute("CREATE TABLE counter (id int PRIMARY KEY, n int); INSERT INTO counter VALUES (1, 0)")
        .await
        .unwrap();
    let proxy = TestProxy::start(pooled_config(&cluster, 4)).await.unwrap();
    let url = proxy.url(&db);
    let clients = connect_all(&url, 40).await;
    // Authentication stayed within the pool.
    settle_server_connections(&direct, &db.name, 4, LIMIT).await;

    let most = Arc::new(AtomicI64::new(0));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (most, watching, database) = (Arc::clone(&most), Arc::clone(&watching), db.name.clone());
        let direct = connect_direct(&db).await;
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                let n = server_connections(&direct, &database).await;
                most.fetch_max(n, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let mut runs = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        runs.push(tokio::spawn(async move {
            for _ in 0..10 {
                client
                    .batch_execute("BEGIN; UPDATE counter SET n = n + 1 WHERE id = 1; SELECT pg_sleep(0.001); COMMIT")
                    .await
                    .unwrap();
                let row = client.query_one("SELECT $1::int + 1", &[&(i as i32)]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i as i32 + 1);
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for run in runs {
        clients.push(run.await.unwrap());
    }
    watching.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    let n: i32 = direct.query_one("SELECT n FROM counter WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 400, "every transaction of every client committed");
    let most = most.load(Ordering::Relaxed);
    assert!((1..=4).contains(&most), "at most the pool's 4 server connections at any time, saw {most}");
    drop(clients);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn session_state_pins_its_client_and_is_reset_before_another_client_gets_the_connection() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let mut config = pooled_config(&cluster, 3);
    // A client may authenticate while the pool's three connections are in use.
    config.reserve_pool_size = 1;
    let proxy = TestProxy::start(config).await.unwrap();
    let direct = connect_direct(&db).await;
    let url = proxy.url(&db);
    let (setter, other, temp) =
        (connect(&url).await.unwrap(), connect(&url).await.unwrap(), connect(&url).await.unwrap());
    setter.batch_execute("SET search_path = pg_catalog").await.unwrap();
    temp.batch_execute("CREATE TEMP TABLE notes (n int)").await.unwrap();
    let pinned_pid: i32 = setter.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    for round in 0..5 {
        let path: String = setter.query_one("SHOW search_path", &[]).await.unwrap().get(0);
        assert_eq!(path, "pg_catalog", "the client keeps its setting (round {round})");
        let pid: i32 = setter.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        assert_eq!(pid, pinned_pid, "on its one connection");
        let path: String = other.query_one("SHOW search_path", &[]).await.unwrap().get(0);
        assert_eq!(path, "\"$user\", public", "another client never sees it");
        temp.execute("INSERT INTO notes VALUES ($1)", &[&round]).await.unwrap();
        let err = other.batch_execute("SELECT * FROM notes").await.unwrap_err();
        assert_eq!(err.as_db_error().unwrap().code().code(), "42P01", "another client has no such table");
    }
    let n: i64 = temp.query_one("SELECT count(*) FROM notes", &[]).await.unwrap().get(0);
    assert_eq!(n, 5, "the temporary table stayed with its client");
    // The other clients hold the pool's other two connections; the pinned one is reset (DISCARD ALL) when
    // its client leaves, and is the only one a new client can get.
    other.batch_execute("BEGIN").await.unwrap();
    drop(setter);
    eventually(LIMIT, "the pinned connection is reset", || async {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'idle' AND query = 'DISCARD ALL'",
                &[&pinned_pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
    let fresh = connect(&url).await.unwrap();
    let row = fresh.query_one("SELECT pg_backend_pid(), current_setting('search_path')", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), pinned_pid, "the pinned connection went back to the pool");
    assert_eq!(row.get::<_, String>(1), "\"$user\", public", "reset before another client got it");
    other.batch_execute("COMMIT").await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_finds_no_connection_free_in_time_gets_query_wait_timeout() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let mut config = pooled_config(&cluster, 1);
    config.reserve_pool_size = 1;
    config.pool_wait_timeout_secs = 1;
    let proxy = TestProxy::start(config).await.unwrap();
    let url = proxy.url(&db);
    let holder = connect(&url).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // The reserve lets a second client authenticate while the one connection is in use ...
    let waiter = connect(&url).await.unwrap();
    // ... but its transaction waits for a pooled connection, and is refused after the wait timeout.
    let err = waiter.batch_execute("SELECT 1").await.unwrap_err();
    let db_error = err.as_db_error().expect("an error from the proxy");
    assert_eq!((db_error.code().code(), db_error.message()), ("08P01", "query_wait_timeout"));
    assert_eq!(db_error.severity(), "FATAL");
    holder.batch_execute("COMMIT").await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_cancel_reaches_the_query_its_client_runs_now() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = connect_direct(&db).await;
    let proxy = TestProxy::start(pooled_config(&cluster, 2)).await.unwrap();
    let url = proxy.url(&db);
    let (sleeper, bystander) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
    bystander.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let cancel = sleeper.cancel_token();
    let sleeping = tokio::spawn(async move { sleeper.batch_execute("SELECT pg_sleep(60)").await });
    eventually(LIMIT, "the sleep runs", || async {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeping.await.unwrap().unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014", "the sleeper's query was cancelled");
    let row = bystander.query_one("SELECT 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2, "the other client's transaction goes on");
    bystander.batch_execute("COMMIT").await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_gone_mid_transaction_leaves_no_dirty_connection_in_the_pool() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = connect_direct(&db).await;
    direct.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let proxy = TestProxy::start(pooled_config(&cluster, 1)).await.unwrap();
    // Killed: the socket closes without a Terminate.
    let mut killed = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    assert_eq!(command_tags(&killed.query("BEGIN").await), ["BEGIN"]);
    assert_eq!(command_tags(&killed.query("INSERT INTO t VALUES (1)").await), ["INSERT 0 1"]);
    drop(killed);
    // Leaving properly (Terminate) in the middle of a transaction.
    let leaving = connect(&proxy.url(&db)).await.unwrap();
    leaving.batch_execute("BEGIN; INSERT INTO t VALUES (2)").await.unwrap();
    drop(leaving);
    let next = connect(&proxy.url(&db)).await.unwrap();
    for _ in 0..3 {
        let status: String = next
            .query_one("SELECT state FROM pg_stat_activity WHERE pid = pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(status, "active");
        next.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();
    }
    eventually(LIMIT, "no connection left idle in transaction", || async {
        let n: i64 = direct
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'", &[])
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    let ids: Vec<i32> = direct.query("SELECT id FROM t", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [3, 3, 3], "what the gone clients left uncommitted was rolled back; the next one's committed");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn each_clients_dualwrite_version_routes_its_statements_across_one_shared_server_connection() {
    let (db, _rules) = split_database().await;
    let proxy = TestProxy::with_rules_toml_and(&db, SPLIT_RULES, |config| {
        config.pool_mode = PoolMode::Transaction;
        config.pool_size = 1;
    })
    .await
    .unwrap();
    let url = proxy.url(&db);
    let old = connect(&url).await.unwrap();
    let new = connect(&url).await.unwrap();
    new.batch_execute("SET dualwrite.version = 'v2'").await.unwrap();
    let by_option = connect(&format!("{url}?options=-c%20dualwrite.version%3Dv2")).await.unwrap();
    // v2 writes wait for the backfill (README: v2 writes wait for the backfill).
    backfill_until_done(&old, "users_split_name").await;
    for round in 0..5 {
        let id = round * 3;
        old.execute("INSERT INTO users (id, name) VALUES ($1, 'old')", &[&id]).await.unwrap();
        new.execute("INSERT INTO users (id, first_name) VALUES ($1, 'new')", &[&(id + 1)]).await.unwrap();
        by_option
            .batch_execute(&format!("BEGIN; INSERT INTO users (id, first_name) VALUES ({}, 'opt'); COMMIT", id + 2))
            .await
            .unwrap();
        let name: String = old.query_one("SELECT name FROM users WHERE id = $1", &[&(id + 1)]).await.unwrap().get(0);
        assert_eq!(name, "new", "the v1 client reads the old shape (round {round})");
        let first: String = new.query_one("SELECT first_name FROM users WHERE id = $1", &[&id]).await.unwrap().get(0);
        assert_eq!(first, "old", "the v2 client reads the new shape (round {round})");
        let first: String =
            by_option.query_one("SELECT first_name FROM users WHERE id = $1", &[&id]).await.unwrap().get(0);
        assert_eq!(first, "old");
    }
    for (client, version) in [(&old, "v1"), (&new, "v2"), (&by_option, "v2")] {
        let shown = simple_rows(&client.simple_query("SHOW dualwrite.version").await.unwrap());
        assert_eq!(shown, [[Some(version.to_owned())]]);
    }
    let direct = db.connect().await.unwrap();
    let shadow: i64 = direct.query_one("SELECT count(*) FROM users_v2", &[]).await.unwrap().get(0);
    assert_eq!(shadow, 15, "every write of both shapes reached the shadow too");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn dualwrite_pools_and_the_pool_metrics_show_active_idle_waiting_and_pinned() {
    let (db, _rules) = split_database().await;
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = TestProxy::with_rules_toml_and(&db, SPLIT_RULES, |config| {
        config.pool_mode = PoolMode::Transaction;
        config.pool_size = 2;
        config.metrics_listen = Some(metrics_addr);
    })
    .await
    .unwrap();
    let url = proxy.url(&db);
    let (pinned, holder, waiter) =
        (connect(&url).await.unwrap(), connect(&url).await.unwrap(), connect(&url).await.unwrap());
    let admin = connect(&url).await.unwrap();
    pinned.batch_execute("LISTEN events").await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let waiting = tokio::spawn(async move {
        waiter.batch_execute("SELECT 1").await.unwrap();
        waiter
    });
    // Control commands need no server connection: the admin (logged in before) sees the pool it shares,
    // exhausted.
    let user = db.cluster.superuser().to_owned();
    eventually(LIMIT, "the waiting client shows", || async {
        let rows = simple_rows(&admin.simple_query("DUALWRITE POOLS").await.unwrap());
        rows.first().is_some_and(|r| r[6].as_deref() == Some("1"))
    })
    .await;
    let rows = simple_rows(&admin.simple_query("DUALWRITE POOLS").await.unwrap());
    assert_eq!(rows.len(), 1, "one pool: {rows:?}");
    let row = &rows[0];
    let text = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    assert_eq!(row[..8], text(&[&db.name, &user, "transaction", "2", "2", "0", "1", "1"])[..], "{rows:?}");
    let max_wait: f64 = row[8].as_deref().unwrap().parse().unwrap();
    assert!(max_wait >= 0.0);
    assert_eq!(row[9].as_deref(), Some("client_encoding=UTF8"), "the pool's startup parameters");

    let metrics = scrape_metrics(metrics_addr).await;
    let labels = format!("database=\"{}\",user=\"{user}\"", db.name);
    assert_eq!(sample(&metrics, &format!("dualwrite_pool_server_connections{{{labels},state=\"active\"}}")), 2.0);
    assert_eq!(sample(&metrics, &format!("dualwrite_pool_server_connections{{{labels},state=\"idle\"}}")), 0.0);
    assert_eq!(sample(&metrics, &format!("dualwrite_pool_clients_waiting{{{labels}}}")), 1.0);
    assert_eq!(sample(&metrics, &format!("dualwrite_pinned_clients{{{labels}}}")), 1.0);
    assert!(metrics.contains("dualwrite_pool_wait_seconds_bucket{"), "{metrics}");

    holder.batch_execute("COMMIT").await.unwrap();
    let _waiter = waiting.await.unwrap();
    let rows = simple_rows(&admin.simple_query("DUALWRITE POOLS").await.unwrap());
    assert_eq!(rows[0][4..7], text(&["1", "1", "0"])[..], "active, idle, waiting once the line cleared");
    let metrics = scrape_metrics(metrics_addr).await;
    assert_eq!(sample(&metrics, &format!("dualwrite_pool_clients_waiting{{{labels}}}")), 0.0);
    let waits = sample(&metrics, &format!("dualwrite_pool_wait_seconds_count{{{labels}}}"));
    assert!(waits >= 1.0, "every lease's wait is counted");

    let unprivileged = {
        db.connect().await.unwrap().batch_execute("CREATE ROLE somebody LOGIN").await.unwrap();
        connect(&proxy.url_as(&db, "somebody", None)).await.unwrap()
    };
    let err = unprivileged.simple_query("DUALWRITE POOLS").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "admin roles only");
    drop(pinned);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_copy_the_parser_cannot_read_leaves_its_client_unpinned() {
    use futures::TryStreamExt;
    let (db, _rules) = split_database().await;
    db.connect()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE holdings (a int, b text); INSERT INTO holdings VALUES (1, 'x')")
        .await
        .unwrap();
    let proxy = TestProxy::with_rules_toml_and(&db, SPLIT_RULES, |config| {
        config.pool_mode = PoolMode::Transaction;
        config.pool_size = 2;
    })
    .await
    .unwrap();
    let url = proxy.url(&db);
    let (client, admin) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
    let pinned = || async {
        let rows = simple_rows(&admin.simple_query("DUALWRITE POOLS").await.unwrap());
        assert_eq!(rows.len(), 1, "one pool: {rows:?}");
        rows[0][7].clone()
    };
    // `FORCE_QUOTE *` is an option sqlparser does not read; `holdings` holds a word that sends it to the parser.
    let copied: Vec<bytes::Bytes> = client
        .copy_out("COPY holdings TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(copied.concat(), b"\"1\",\"x\"\n");
    assert_eq!(pinned().await.as_deref(), Some("0"), "the COPY pinned nobody");
    client.batch_execute("LISTEN events").await.unwrap();
    assert_eq!(pinned().await.as_deref(), Some("1"), "while a LISTEN pins its client");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn pgbench_in_every_query_mode_with_four_times_more_clients_than_server_connections() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = connect_direct(&db).await;
    let proxy = TestProxy::start(pooled_config(&cluster, 3)).await.unwrap();
    let url = proxy.url(&db);
    pgbench(&db.url(), &["-i", "-s", "1", "-q"]).await.unwrap().assert_success();
    // A thread per client: pgbench prepares a statement with a blocking call (PQprepare), which in a
    // thread shared with other clients would stop them while they hold pooled connections in their
    // transactions (a deadlock of pgbench's own against any pooler smaller than its client count).
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&url, &["-M", mode, "-c", "12", "-j", "12", "-t", "50"]).await.unwrap();
        out.assert_success();
        assert!(out.stdout.contains("number of failed transactions: 0 (0.000%)"), "mode {mode}: {}", out.stdout);
        assert!(out.stdout.contains("number of transactions actually processed: 600/600"), "{}", out.stdout);
        // pgbench empties the history before each run.
        let history: i64 = direct.query_one("SELECT count(*) FROM pgbench_history", &[]).await.unwrap().get(0);
        assert_eq!(history, 600, "every TPC-B transaction of mode {mode} committed");
    }
    settle_server_connections(&direct, &db.name, 3, LIMIT).await;
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_server_connection_that_broke_in_the_pool_is_forgotten_and_its_place_taken_by_a_new_one() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = connect_direct(&db).await;
    let proxy = TestProxy::start(pooled_config(&cluster, 1)).await.unwrap();
    let url = proxy.url(&db);
    let unlucky = connect(&url).await.unwrap();
    let pooled_pid: i32 = unlucky.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let terminated: bool =
        direct.query_one("SELECT pg_terminate_backend($1, 60000)", &[&pooled_pid]).await.unwrap().get(0);
    assert!(terminated);
    // The next transaction on the broken connection fails, and its client is disconnected, as in session
    // mode: with the server's FATAL when the proxy reads it before the reset that answers its write, else
    // with the proxy's 08006 (the kernel drops what was unread when the reset arrives).
    // Or, when the session still held the connection as its idle client's (it goes back to the pool just
    // after the transaction's ReadyForQuery), the server's FATAL reaches that idle client at once, as in
    // session mode, and tokio-postgres reports the connection closed.
    let err = unlucky.batch_execute("SELECT 1").await.unwrap_err();
    let code = err.code().map(|c| c.code().to_owned());
    assert!(matches!(code.as_deref(), Some("57P01" | "08006")) || err.is_closed(), "{err}");
    eventually(LIMIT, "the client is disconnected", || async { unlucky.is_closed() }).await;
    // The pool forgot it: a new client authenticates in its place and works.
    let next = connect(&url).await.unwrap();
    let pid: i32 = next.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_ne!(pid, pooled_pid);
    next.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn authentication_stays_relayed_a_wrong_password_gets_the_servers_error_and_frees_its_slot() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(pooled_config(&cluster, 1)).await.unwrap();
    for _ in 0..3 {
        let err = connect(&proxy.url_as(&db, SCRAM_USER, Some("not-the-password"))).await.unwrap_err();
        let err = err.downcast_ref::<tokio_postgres::Error>().unwrap();
        assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    }
    // The one slot of the SCRAM role's pool is free again each time.
    let client = connect(&proxy.url_as(&db, SCRAM_USER, Some(SCRAM_PASSWORD))).await.unwrap();
    let user: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(user, SCRAM_USER);
    client.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
    proxy.stop().await.unwrap();
}

/// `[databases.<name>]` and `[users.<name>]` set the pool mode of their sessions in a running proxy, a
/// user's over its database's over the top level's: in transaction mode two clients take turns on the one
/// server connection of their pool; in session mode each holds its own, so both keep a transaction open at
/// once (a pool of one, in transaction mode, would make the second wait out its one-second timeout).
#[tokio::test]
async fn pool_mode_overrides_of_a_database_and_of_a_user_take_effect_a_users_over_its_databases() {
    let cluster = TestCluster::shared();
    let (pooled_db, session_db) = (cluster.create_database().await.unwrap(), cluster.create_database().await.unwrap());
    let mut config = pooled_config(&cluster, 1);
    config.pool_wait_timeout_secs = 1;
    let mode = |mode| dualwrite_proxy::config::PoolOverride { pool_mode: Some(mode), ..Default::default() };
    config.databases.insert(session_db.name.clone(), mode(PoolMode::Session));
    config.users.insert(SCRAM_USER.to_owned(), mode(PoolMode::Transaction));
    config.users.insert(MD5_USER.to_owned(), mode(PoolMode::Session));
    let proxy = TestProxy::start(config).await.unwrap();

    let superuser = (cluster.superuser(), None);
    let (scram, md5) = ((SCRAM_USER, Some(SCRAM_PASSWORD)), (MD5_USER, Some(MD5_PASSWORD)));
    for (db, (user, password), pooled) in [
        (&pooled_db, superuser, true),
        (&session_db, superuser, false),
        (&session_db, scram, true),
        (&pooled_db, md5, false),
    ] {
        let what = format!("{user} on the {} database", if db.name == pooled_db.name { "pooled" } else { "session" });
        let url = proxy.url_as(db, user, password);
        let (first, second) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
        if pooled {
            assert_eq!(
                backend_pid(&first).await,
                backend_pid(&second).await,
                "{what}: one server connection, in turns"
            );
        } else {
            first.batch_execute("BEGIN").await.unwrap();
            second.batch_execute("BEGIN").await.unwrap();
            assert_ne!(backend_pid(&first).await, backend_pid(&second).await, "{what}: a connection each");
            first.batch_execute("COMMIT").await.unwrap();
            second.batch_execute("COMMIT").await.unwrap();
        }
    }
    proxy.stop().await.unwrap();
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
}
