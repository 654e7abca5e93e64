//! Prepared statements in transaction mode, as in pgbouncer 1.21+: tracked per client and prepared on each
//! server connection on first use, so they follow their clients across few server connections; a closed
//! name is gone and a duplicate refused as Postgres does; a Parse the server failed or skipped leaves no
//! statement behind; pgbench `-M prepared` with many clients per connection.

mod pool_support;
mod proxy_support;

use dualwrite_tests::*;
use pool_support::*;
use proxy_support::*;

#[tokio::test]
async fn prepared_statements_follow_their_clients_across_few_server_connections() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(pooled_config(&cluster, 2)).await.unwrap();
    let clients = connect_all(&proxy.url(&db), 12).await;
    let mut runs = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        runs.push(tokio::spawn(async move {
            let i = i as i32;
            // Every client's driver names its statements s0, s1, ...: the same names, other SQL.
            let add = client.prepare(&format!("SELECT $1::int + {i}")).await.unwrap();
            let twice = client.prepare("SELECT $1::int * 2").await.unwrap();
            for round in 0..20 {
                let sum: i32 = client.query_one(&add, &[&round]).await.unwrap().get(0);
                assert_eq!(sum, round + i, "client {i} round {round}");
                client.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
                let double: i32 = client.query_one(&twice, &[&round]).await.unwrap().get(0);
                assert_eq!(double, round * 2);
            }
            // A statement dropped is closed; a new one of the client works on whichever connection.
            drop(add);
            let third = client.prepare("SELECT $1::text || 'x'").await.unwrap();
            let s: String = client.query_one(&third, &[&"a"]).await.unwrap().get(0);
            assert_eq!(s, "ax");
        }));
    }
    for run in runs {
        run.await.unwrap();
    }
    proxy.stop().await.unwrap();
}

/// Sends `frames` and reads the answers up to ReadyForQuery.
async fn batch(client: &mut RawClient, frames: &[Vec<u8>]) -> Vec<(u8, Vec<u8>)> {
    client.send(&frames.concat()).await;
    client.read_until_ready().await
}

fn tags(frames: &[(u8, Vec<u8>)]) -> String {
    frames.iter().map(|(t, _)| *t as char).collect()
}

#[tokio::test]
async fn a_closed_statement_is_gone_and_a_duplicate_name_is_refused_as_in_postgres() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let proxy = TestProxy::start(pooled_config(&cluster, 2)).await.unwrap();
    let mut client = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    let answers = batch(&mut client, &[parse("s", "SELECT 41 + 1"), bind("s"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "12DCZ", "ParseComplete, BindComplete, the row, its tag, ReadyForQuery");
    let answers = batch(&mut client, &[parse("s", "SELECT 2"), sync()]).await;
    assert_eq!(first_error(&answers), Some(("42P05".to_owned(), "prepared statement \"s\" already exists".to_owned())));
    let answers = batch(&mut client, &[bind("s"), execute(), sync()]).await;
    assert_eq!(command_tags(&answers), ["SELECT 1"], "the first statement is still the client's");
    let answers = batch(&mut client, &[close("s"), sync()]).await;
    assert_eq!(tags(&answers), "3Z", "CloseComplete");
    let answers = batch(&mut client, &[bind("s"), execute(), sync()]).await;
    assert_eq!(first_error(&answers), Some(("26000".to_owned(), "prepared statement \"s\" does not exist".to_owned())));
    let answers = batch(&mut client, &[parse("s", "SELECT 'again'"), bind("s"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "12DCZ", "the name is free again");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_or_skipped_parse_leaves_no_statement_behind_as_in_postgres() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    // One server connection: both clients' statements meet on it.
    let proxy = TestProxy::start(pooled_config(&cluster, 1)).await.unwrap();
    let mut alice = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    let mut bob = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    let syntax_error = Some(("42601".to_owned(), "syntax error at or near \"SELEC\"".to_owned()));

    let answers = batch(&mut alice, &[parse("s", "SELEC 1"), sync()]).await;
    assert_eq!(first_error(&answers), syntax_error);
    let answers = batch(&mut alice, &[parse("s", "SELECT 1"), bind("s"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "12DCZ", "a failed Parse leaves the client's name free");
    // The failed statement is not on the connection: the same text fails for another client too, instead
    // of a local ParseComplete for a statement the server never prepared.
    let answers = batch(&mut bob, &[parse("q", "SELEC 1"), sync()]).await;
    assert_eq!(first_error(&answers), syntax_error);
    let answers = batch(&mut bob, &[parse("q", "SELECT 2"), bind("q"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "12DCZ");

    // An error earlier in the batch makes the server skip the Parse after it.
    let answers = batch(&mut alice, &[bind("nonexistent"), execute(), parse("t", "SELECT 3"), sync()]).await;
    assert_eq!(first_error(&answers).map(|e| e.0).as_deref(), Some("26000"));
    let answers = batch(&mut bob, &[parse("u", "SELECT 3"), bind("u"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "12DCZ", "the skipped statement is prepared when another client parses it");
    assert_eq!(command_tags(&answers), ["SELECT 1"]);
    let answers = batch(&mut alice, &[parse("t", "SELECT 3"), bind("t"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "12DCZ", "a skipped Parse leaves the client's name free");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_prepare_outside_a_transaction_of_a_statement_the_server_accepted_needs_no_free_connection() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let mut config = pooled_config(&cluster, 1);
    config.pool_wait_timeout_secs = 1;
    let proxy = TestProxy::start(config).await.unwrap();
    // Every client logs in while the one connection is free.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await);
    }
    let [alice, bob, carol, dave] = clients.as_mut_slice() else { unreachable!() };
    // Alice's statements reach the server, which accepts the first and refuses the second.
    let answers = batch(alice, &[parse("s", "SELECT 40 + 2"), bind("s"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "12DCZ");
    let answers = batch(alice, &[parse("bad", "SELEC 1"), sync()]).await;
    assert_eq!(first_error(&answers).map(|e| e.0).as_deref(), Some("42601"));

    // Carol holds the pool's only connection in her transaction.
    assert_eq!(tags(&carol.query("BEGIN").await), "CZ");
    // Bob prepares (Parse and Sync, as libpq's PQprepare) the statement the server accepted: answered
    // without a connection, under his own name.
    let answers = batch(bob, &[parse("q", "SELECT 40 + 2"), sync()]).await;
    assert_eq!(tags(&answers), "1Z", "ParseComplete and ReadyForQuery while every connection is in use");
    assert_eq!(answers[1].1, b"I", "outside a transaction");
    // A statement the server refused is not answered so: Dave waits for a connection, and is refused
    // after the wait timeout, as for any request.
    dave.send(&[parse("x", "SELEC 1"), sync()].concat()).await;
    assert_eq!(dave.error_then_close().await.as_deref(), Some("08P01"), "query_wait_timeout, no ParseComplete");
    assert_eq!(tags(&carol.query("COMMIT").await), "CZ");

    // Bob's statement is prepared on the connection at its first use, and runs.
    let answers = batch(bob, &[bind("q"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "2DCZ");
    let row = &answers.iter().find(|(t, _)| *t == b'D').unwrap().1;
    assert_eq!(&row[row.len() - 2..], b"42");
    // The name is Bob's as after any Parse: a second Parse of it is refused as in Postgres.
    let answers = batch(bob, &[parse("q", "SELECT 40 + 2"), sync()]).await;
    assert_eq!(first_error(&answers).map(|e| e.0).as_deref(), Some("42P05"));
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn pgbench_prepared_with_one_thread_for_eight_clients_on_two_server_connections() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = connect_direct(&db).await;
    let proxy = TestProxy::start(pooled_config(&cluster, 2)).await.unwrap();
    pgbench(&db.url(), &["-i", "-s", "1", "-q"]).await.unwrap().assert_success();
    // One pgbench thread serves all eight clients and prepares each statement with the blocking PQprepare
    // at its first use: the BEGIN's prepare, outside a transaction, must not wait for a connection that
    // the thread's other clients hold in their transactions.
    let out = pgbench(&proxy.url(&db), &["-M", "prepared", "-c", "8", "-j", "1", "-t", "25"]).await.unwrap();
    out.assert_success();
    assert!(out.stdout.contains("number of transactions actually processed: 200/200"), "{}", out.stdout);
    let history: i64 = direct.query_one("SELECT count(*) FROM pgbench_history", &[]).await.unwrap().get(0);
    assert_eq!(history, 200, "every TPC-B transaction committed");
    settle_server_connections(&direct, &db.name, 2, std::time::Duration::from_secs(60)).await;
    proxy.stop().await.unwrap();
}

fn query(sql: &str) -> Vec<u8> {
    frame(b'Q', &[sql.as_bytes(), &[0]].concat())
}

/// `DEALLOCATE ALL` and `DISCARD ALL` drop every statement of the server connection they run on, other
/// clients' too (pgbouncer 1.21 broke its other clients so; 1.22 follows the command tag): the pooler
/// forgets what the connection held and prepares the others' statements there again, while the client
/// who sent it loses its own statements as in Postgres, except one prepared behind it in the same
/// pipeline (pgbouncer issue 1535). `DEALLOCATE name` frees the client's name (PDO sends it).
#[tokio::test]
async fn deallocate_and_discard_all_drop_only_their_clients_statements_and_deallocate_frees_a_name() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    // One server connection: both clients' statements meet on it, as one statement of the proxy's.
    let proxy = TestProxy::start(pooled_config(&cluster, 1)).await.unwrap();
    let mut alice = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    let mut bob = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    let gone = |name: &str| Some(("26000".to_owned(), format!("prepared statement \"{name}\" does not exist")));

    for reset in ["DISCARD ALL", "DEALLOCATE ALL"] {
        let answers = batch(&mut alice, &[parse("s", "SELECT 42"), bind("s"), execute(), sync()]).await;
        assert_eq!(tags(&answers), "12DCZ", "{reset}");
        let answers = batch(&mut bob, &[parse("q", "SELECT 42"), bind("q"), execute(), sync()]).await;
        assert_eq!(tags(&answers), "12DCZ", "{reset}");
        let answers = batch(&mut alice, &[query(reset)]).await;
        assert_eq!(command_tags(&answers), [reset]);
        let answers = batch(&mut bob, &[bind("q"), execute(), sync()]).await;
        assert_eq!(tags(&answers), "2DCZ", "{reset} of another client leaves Bob's statement usable");
        let answers = batch(&mut alice, &[bind("s"), execute(), sync()]).await;
        assert_eq!(first_error(&answers), gone("s"), "{reset} dropped Alice's own statement");
        let answers = batch(&mut bob, &[close("q"), sync()]).await;
        assert_eq!(tags(&answers), "3Z");
    }

    // A statement prepared behind the reset in the same pipeline survives it, on both sides.
    alice.send(&[query("DEALLOCATE ALL"), parse("t", "SELECT 5"), bind("t"), execute(), sync()].concat()).await;
    assert_eq!(command_tags(&alice.read_until_ready().await), ["DEALLOCATE ALL"]);
    assert_eq!(tags(&alice.read_until_ready().await), "12DCZ");
    let answers = batch(&mut alice, &[bind("t"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "2DCZ", "t is still Alice's");
    // The connection holds "SELECT 5" now though the pooler could not know it: Bob's Parse of the same
    // text is prepared again behind a Close, not refused as a duplicate by the server.
    let answers = batch(&mut bob, &[parse("p", "SELECT 5"), bind("p"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "12DCZ");

    // A failed reset (DISCARD ALL inside a transaction block) drops nothing.
    let answers = batch(&mut alice, &[query("BEGIN; DISCARD ALL")]).await;
    assert_eq!(first_error(&answers).map(|e| e.0).as_deref(), Some("25001"));
    batch(&mut alice, &[query("ROLLBACK")]).await;
    let answers = batch(&mut alice, &[bind("t"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "2DCZ", "t survives a reset that failed");

    // DEALLOCATE of a statement prepared with a Parse frees the client's name; Bob's statement stays.
    let answers = batch(&mut alice, &[query("DEALLOCATE t")]).await;
    assert_eq!(command_tags(&answers), ["DEALLOCATE"]);
    let answers = batch(&mut alice, &[bind("t"), execute(), sync()]).await;
    assert_eq!(first_error(&answers), gone("t"));
    let answers = batch(&mut alice, &[parse("t", "SELECT 6"), bind("t"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "12DCZ", "the name is free again");
    let answers = batch(&mut bob, &[bind("p"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "2DCZ");
    // A name the client never prepared is the server's to refuse, with the client's name.
    let answers = batch(&mut alice, &[query("DEALLOCATE nothing")]).await;
    assert_eq!(first_error(&answers), gone("nothing"));

    // Pinned to its connection (a session setting), a client's reset is followed the same way: its name
    // is free again and the statement is prepared on the connection anew.
    batch(&mut alice, &[query("SET application_name = 'pinned'")]).await;
    let answers = batch(&mut alice, &[parse("u", "SELECT 8"), bind("u"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "12DCZ");
    assert_eq!(command_tags(&batch(&mut alice, &[query("DEALLOCATE ALL")]).await), ["DEALLOCATE ALL"]);
    let answers = batch(&mut alice, &[parse("u", "SELECT 8"), bind("u"), execute(), sync()]).await;
    assert_eq!(tags(&answers), "12DCZ", "a pinned client's name is free after its reset");
    proxy.stop().await.unwrap();
}
