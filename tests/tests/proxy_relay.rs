//! The proxy relays real clients' traffic unchanged: psql (multi-statement strings, \copy both ways),
//! pgbench in every query mode, tokio-postgres prepared statements with binary types, cancel, LISTEN/NOTIFY,
//! and the backend identity (pid) a driver sees.

mod proxy_support;

use std::time::Duration;

use dualwrite_tests::*;
use futures::StreamExt;
use proxy_support::*;

#[tokio::test]
async fn psql_script_with_multi_statement_string_and_copy_both_ways() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let url = db.url_via(proxy.addr());
    let dir = tempfile::tempdir().unwrap();
    let csv_in = dir.path().join("in.csv");
    std::fs::write(&csv_in, "1,alpha\n2,beta\n3,\"gam,ma\"\n").unwrap();
    let csv_out = dir.path().join("out.csv");
    let script = format!(
        "CREATE TABLE t (id int primary key, name text);\n\
         \\copy t FROM '{}' WITH (FORMAT csv)\n\
         SELECT 'multi' AS a\\; INSERT INTO t VALUES (4, 'delta')\\; SELECT count(*) AS n FROM t;\n\
         \\copy (SELECT * FROM t ORDER BY id) TO '{}' WITH (FORMAT csv)\n\
         SELECT string_agg(name, '|' ORDER BY id) FROM t;\n",
        csv_in.display(),
        csv_out.display()
    );
    let out = psql(&url, &["-A", "-t"], Some(&script)).await.unwrap();
    out.assert_success();
    assert!(out.stdout.contains("alpha|beta|gam,ma|delta"), "{}", out.stdout);
    assert!(out.stdout.contains("\n4\n") || out.stdout.contains("4\n"), "{}", out.stdout);
    let copied = std::fs::read_to_string(&csv_out).unwrap();
    assert_eq!(copied, "1,alpha\n2,beta\n3,\"gam,ma\"\n4,delta\n");
    // The multi-statement string ran as one Query: both results came back.
    let out = psql(&url, &["-A", "-t", "-c", "SELECT 1; SELECT 2; SELECT 3"], None).await.unwrap();
    out.assert_success();
    assert_eq!(out.stdout.trim(), "1\n2\n3", "every result of the one Query came back");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn pgbench_all_query_modes_without_failures() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let url = db.url_via(proxy.addr());
    pgbench(&url, &["-i", "-s", "1", "-q"]).await.unwrap().assert_success();
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&url, &["-M", mode, "-c", "4", "-j", "2", "-t", "200"]).await.unwrap();
        out.assert_success();
        assert!(out.stdout.contains("number of failed transactions: 0 (0.000%)"), "mode {mode}: {}", out.stdout);
        assert!(out.stdout.contains("number of transactions actually processed: 800/800"), "{}", out.stdout);
    }
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn tokio_postgres_prepared_statements_with_binary_types() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let client = connect(&db.url_via(proxy.addr())).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE kinds (id int8 primary key, f float8, b bytea, t text, flag bool, ts timestamp, a int4[])",
        )
        .await
        .unwrap();
    let insert = client.prepare("INSERT INTO kinds VALUES ($1, $2, $3, $4, $5, now()::timestamp, $6)").await.unwrap();
    let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    for i in 0..20i64 {
        let n = client
            .execute(
                &insert,
                &[&i, &(i as f64 / 3.0), &blob, &format!("row {i} ✓"), &(i % 2 == 0), &vec![i as i32, -1]],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    let select = client.prepare("SELECT id, f, b, t, flag, a FROM kinds WHERE id >= $1 ORDER BY id").await.unwrap();
    let rows = client.query(&select, &[&10i64]).await.unwrap();
    assert_eq!(rows.len(), 10);
    let first = &rows[0];
    assert_eq!(first.get::<_, i64>(0), 10);
    assert_eq!(first.get::<_, f64>(1), 10.0 / 3.0);
    assert_eq!(first.get::<_, Vec<u8>>(2), blob);
    assert_eq!(first.get::<_, String>(3), "row 10 ✓");
    assert!(first.get::<_, bool>(4));
    assert_eq!(first.get::<_, Vec<i32>>(5), vec![10, -1]);
    // Pipelined queries on one connection keep their order.
    let futures: Vec<_> = (0..50i64)
        .map(|i| {
            let client = &client;
            async move { client.query_one("SELECT $1::int8 * 2", &[&i]).await.unwrap().get::<_, i64>(0) }
        })
        .collect();
    let results = futures::future::join_all(futures).await;
    assert_eq!(results, (0..50).map(|i| i * 2).collect::<Vec<_>>());
    // Errors come back as the server's, with position, and the session goes on.
    let err = client.query("SELECT nosuchcolumn FROM kinds", &[]).await.unwrap_err();
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code(), &tokio_postgres::error::SqlState::UNDEFINED_COLUMN);
    assert!(db_err.position().is_some());
    assert_eq!(client.query_one("SELECT count(*) FROM kinds", &[]).await.unwrap().get::<_, i64>(0), 20);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn cancel_of_pg_sleep_through_the_proxy() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let client = connect(&db.url_via(proxy.addr())).await.unwrap();
    let direct = db.connect().await.unwrap();
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let token = client.cancel_token();
    let started = std::time::Instant::now();
    let (outcome, cancelled) = tokio::join!(client.simple_query("SELECT pg_sleep(30)"), async {
        wait_until_running(&direct, pid, "SELECT pg_sleep(30)").await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    cancelled.unwrap();
    let err = outcome.unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The session survives its cancelled query.
    assert_eq!(client.query_one("SELECT 41 + 1", &[]).await.unwrap().get::<_, i32>(0), 42);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn backend_pid_is_the_upstream_pid_and_key_is_the_proxys() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    // Read BackendKeyData by hand: connect and keep the startup answer.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let mut body = 196608i32.to_be_bytes().to_vec();
    for part in ["user", cluster.superuser(), "database", &db.name] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    stream.write_all(&packet).await.unwrap();
    let mut raw = RawClient { stream };
    let mut key_pid = None;
    loop {
        let (tag, body) = raw.read_message().await.unwrap();
        if tag == b'K' {
            key_pid = Some(i32::from_be_bytes(body[..4].try_into().unwrap()));
        }
        if tag == b'Z' {
            break;
        }
    }
    let answer = raw.query("SELECT pg_backend_pid()").await;
    let row = answer.iter().find(|(t, _)| *t == b'D').unwrap();
    let text = String::from_utf8_lossy(&row.1[6..]).into_owned();
    assert_eq!(key_pid.unwrap().to_string(), text);
    let _ = raw.stream.shutdown().await;
    let _ = raw.stream.read_u8().await;

    // Same through tokio-postgres: NOTIFY's sender pid is the pid the session reports.
    let listener = connect(&db.url_via(proxy.addr())).await.unwrap();
    let pid: i32 = listener.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let direct = db.connect().await.unwrap();
    let seen: bool =
        direct.query_one("SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1", &[&pid]).await.unwrap().get(0);
    assert!(seen, "the pid the client sees is a real backend");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn listen_notify_is_relayed_while_idle() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let (client, mut connection) =
        tokio_postgres::connect(&db.url_via(proxy.addr()), tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(message)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n);
            }
        }
    });
    client.batch_execute("LISTEN dw_channel").await.unwrap();
    let listener_pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let sender = connect(&db.url_via(proxy.addr())).await.unwrap();
    let sender_pid: i32 = sender.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_ne!(listener_pid, sender_pid);
    sender.batch_execute("NOTIFY dw_channel, 'hello through the proxy'").await.unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("notification arrives").unwrap();
    assert_eq!(note.channel(), "dw_channel");
    assert_eq!(note.payload(), "hello through the proxy");
    assert_eq!(note.process_id(), sender_pid, "the sender pid matches what the sender's driver reports");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn large_objects_use_function_calls_through_the_proxy() {
    // libpq's lo_* functions (psql \lo_import / \lo_export) speak FunctionCall ('F' / 'V'), which the proxy
    // relays raw by header.
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("blob.bin");
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&source, &blob).unwrap();
    let target = dir.path().join("copy.bin");
    let script = format!(
        "\\lo_import '{}'\n\\set oid :LASTOID\n\\lo_export :oid '{}'\n\\lo_unlink :oid\nSELECT 'done';\n",
        source.display(),
        target.display()
    );
    let out = psql(&db.url_via(proxy.addr()), &["-A", "-t"], Some(&script)).await.unwrap();
    out.assert_success();
    assert!(out.stdout.contains("done"), "{}", out.stdout);
    assert_eq!(std::fs::read(&target).unwrap(), blob);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn pgbench_pipeline_mode() {
    // libpq pipeline mode: many Parse/Bind/Execute before one Sync, answers read afterwards.
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(config_for(&cluster)).await.unwrap();
    let url = db.url_via(proxy.addr());
    pgbench(&url, &["-i", "-s", "1", "-q"]).await.unwrap().assert_success();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("pipeline.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 100000)\n\\startpipeline\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n\
         SELECT 1/0;\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         \\endpipeline\n",
    )
    .unwrap();
    for mode in ["extended", "prepared"] {
        let out =
            pgbench(&url, &["-M", mode, "-c", "2", "-t", "100", "-n", "-f", script.to_str().unwrap()]).await.unwrap();
        // The division by zero aborts each pipeline's implicit transaction: pgbench counts it as a
        // failed transaction. What matters is that every answer arrived in order and nothing hung.
        assert!(out.stderr.contains("division by zero") || out.stdout.contains("division by zero"), "{out:?}");
    }
    let ok_script = dir.path().join("ok.sql");
    std::fs::write(
        &ok_script,
        "\\set aid random(1, 100000)\n\\startpipeline\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         \\endpipeline\n",
    )
    .unwrap();
    for mode in ["extended", "prepared"] {
        let out = pgbench(&url, &["-M", mode, "-c", "2", "-t", "200", "-n", "-f", ok_script.to_str().unwrap()])
            .await
            .unwrap();
        out.assert_success();
        assert!(out.stdout.contains("number of failed transactions: 0 (0.000%)"), "{}", out.stdout);
        assert!(out.stdout.contains("actually processed: 400/400"), "{}", out.stdout);
    }
    proxy.stop().await.unwrap();
}
