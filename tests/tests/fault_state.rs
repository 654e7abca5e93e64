//! The state database unreachable while a migration is active. The proxy's control-plane role is
//! locked out (NOLOGIN, its sessions terminated) while the data plane keeps working, under ledger write
//! load. Once the state has gone unconfirmed for `state_max_age_secs`, every statement on the migrated
//! table — writes, reads, and statements prepared before the outage — is refused with 57P03 naming the
//! migration and "state unknown", so nothing is single-written or routed by stale state; statements on
//! other tables keep working. When the role may log in again, the watcher reconnects and everything
//! resumes, and the ledger holds.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use dualwrite_tests::txn_ledger::{Ledger, Writers, LEDGER_MIGRATION, LEDGER_RULES, LEDGER_SCHEMA};
use dualwrite_tests::*;
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use proxy_support::{command_tags, first_error, RawClient};
use tokio_postgres::Client;

mod proxy_support;

/// Bound on waiting for the proxy to notice the outage or the recovery (not a timing assertion).
const NOTICE_LIMIT: Duration = Duration::from_secs(60);

async fn ledger_insert(client: &Client, id: i64) -> Result<u64, tokio_postgres::Error> {
    client.execute("INSERT INTO ledger (id, txn, note) VALUES ($1, 0, 'probe')", &[&id]).await
}

/// Retries `probe` until it gives `want` (Ok or the error's SQLSTATE) or the limit passes.
async fn until<F, Fut>(what: &str, mut probe: F) -> Result<u64, tokio_postgres::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Result<u64, tokio_postgres::Error>>>,
{
    let start = Instant::now();
    loop {
        if let Some(result) = probe().await {
            return result;
        }
        assert!(start.elapsed() < NOTICE_LIMIT, "not within {NOTICE_LIMIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_state_unknown(err: &tokio_postgres::Error) {
    let db = err.as_db_error().unwrap_or_else(|| panic!("not a server error: {err:?}"));
    assert_eq!(db.code().code(), "57P03", "{db:?}");
    assert!(db.message().contains("state unknown"), "{}", db.message());
    assert!(db.message().contains(LEDGER_MIGRATION), "{}", db.message());
}

/// The outage: the control role can no longer log in, and its sessions (state watcher, control
/// connection) are gone.
async fn lock_out_control_role(direct: &Client) {
    // Two statements, not one multi-statement string: that would run as one implicit transaction, and the
    // watcher could log in again between the terminate and the commit of NOLOGIN.
    direct.batch_execute(&format!("ALTER ROLE {CLEARTEXT_USER} NOLOGIN")).await.unwrap();
    // A connection of the role that was authenticating when NOLOGIN committed (a watcher reconnecting)
    // shows in pg_stat_activity only once it is in: terminate until none is left.
    let start = Instant::now();
    loop {
        let left: i64 = direct
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
                &[&CLEARTEXT_USER],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(start.elapsed() < NOTICE_LIMIT, "connections of {CLEARTEXT_USER} still there after {NOTICE_LIMIT:?}");
    }
}

async fn proxy_with_control_role(db: &TestDb) -> TestProxy {
    // The control plane logs in as its own role, which the test can lock out without touching clients.
    TestProxy::with_rules_toml_and(db, LEDGER_RULES, |config| {
        config.control.user = Some(CLEARTEXT_USER.into());
        config.control.password = Some(CLEARTEXT_PASSWORD.into());
        config.limits.state_max_age_secs = 2;
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_database_unreachable_refuses_migrated_tables_only() {
    let cluster = TestCluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(LEDGER_SCHEMA).await.unwrap();
    direct.batch_execute("CREATE TABLE plain (id int)").await.unwrap();
    let proxy = proxy_with_control_role(&db).await;

    let ledger = Ledger::new();
    let writers = Writers::start(&ledger, &proxy.url(&db), 2);
    assert!(ledger.wait_commits(0, 20, NOTICE_LIMIT).await, "no write load before the outage");
    let client = proxy.connect(&db).await.unwrap();
    let prepared_read = client.prepare("SELECT count(*) FROM ledger").await.unwrap();
    let prepared_write = client.prepare("UPDATE ledger SET note = note WHERE id = $1").await.unwrap();
    client.query_one(&prepared_read, &[]).await.unwrap();

    lock_out_control_role(&direct).await;
    let err = until("writes to the migrated table refused", || async {
        match ledger_insert(&client, -1).await {
            Ok(_) => {
                direct.execute("DELETE FROM ledger WHERE id = -1", &[]).await.unwrap();
                direct.execute("DELETE FROM ledger_v2 WHERE id = -1", &[]).await.unwrap();
                None
            }
            Err(e) => Some(Err(e)),
        }
    })
    .await
    .unwrap_err();
    assert_state_unknown(&err);
    let failed_at_outage = ledger.failed();
    assert_state_unknown(&client.simple_query("SELECT count(*) FROM ledger").await.unwrap_err());
    assert_state_unknown(&client.query_one(&prepared_read, &[]).await.unwrap_err());
    assert_state_unknown(&client.execute(&prepared_write, &[&1i64]).await.unwrap_err());
    assert_state_unknown(
        &client.batch_execute("BEGIN; INSERT INTO ledger VALUES (-2, 0, 'x'); COMMIT").await.unwrap_err(),
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    // Other tables pass through, in both protocols and in transactions.
    client.batch_execute("BEGIN; INSERT INTO plain VALUES (1); COMMIT").await.unwrap();
    client.execute("INSERT INTO plain VALUES ($1)", &[&2i32]).await.unwrap();
    let n: i64 = client.query_one("SELECT count(*) FROM plain", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    // The writers keep being refused meanwhile (nothing of theirs commits while the state is unknown).
    let committed_during = ledger.committed();
    until("writers refused during the outage", || async { (ledger.failed() > failed_at_outage + 5).then_some(Ok(0)) })
        .await
        .unwrap();
    assert!(ledger.committed() <= committed_during + 2, "writes committed while the state was unknown");
    let unconfirmed_rows: i64 = direct.query_one("SELECT count(*) FROM ledger WHERE id < 0", &[]).await.unwrap().get(0);
    assert_eq!(unconfirmed_rows, 0);

    // Back: the watcher reconnects, and writes (also the prepared ones) resume.
    direct.batch_execute(&format!("ALTER ROLE {CLEARTEXT_USER} LOGIN")).await.unwrap();
    until("writes resume after the state database is back", || async {
        match ledger_insert(&client, -3).await {
            Ok(n) => Some(Ok(n)),
            Err(e) => {
                assert_state_unknown(&e);
                None
            }
        }
    })
    .await
    .unwrap();
    client.query_one(&prepared_read, &[]).await.unwrap();
    assert_eq!(client.execute(&prepared_write, &[&-3i64]).await.unwrap(), 1);
    let resumed = ledger.committed();
    assert!(ledger.wait_commits(resumed, 10, NOTICE_LIMIT).await, "writers did not resume");
    writers.stop().await;
    // The writers were refused with 57P03 only (their transactions name the migrated table).
    let errors = ledger.errors();
    assert_eq!(errors.keys().collect::<Vec<_>>(), ["57P03"], "{errors:?}: {:?}", ledger.error_examples());

    direct.batch_execute("DELETE FROM ledger WHERE id < 0; DELETE FROM ledger_v2 WHERE id < 0").await.unwrap();
    let report = ledger.check(&direct).await.unwrap();
    assert!(report.failed > 0, "{report:?}");
    proxy.stop().await.unwrap();
}

fn bind_and_execute(statement: &str, id: i64) -> BytesMut {
    let mut buf = BytesMut::new();
    let serialize = |v: i64, out: &mut BytesMut| {
        out.put_i64(v);
        Ok(IsNull::No)
    };
    frontend::bind("", statement, [1], [id], serialize, [0], &mut buf).unwrap_or_else(|_| panic!("bind"));
    frontend::execute("", 0, &mut buf).unwrap();
    frontend::sync(&mut buf);
    buf
}

/// A client prepares (Parse, Describe, Sync in one batch, as tokio-postgres and pgjdbc do), and the state
/// goes unknown between its Parse and its Describe. The Describe must still tell the statement's own
/// parameter types: the client checks its arguments against them, and a refusal's placeholder types there
/// made it fail on its own side with no SQLSTATE. Running the statement is what is refused, with 57P03.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_parsed_before_the_outage_is_described_as_itself_and_refused_when_run() {
    let cluster = TestCluster::start().await.unwrap();
    let db = cluster.create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(LEDGER_SCHEMA).await.unwrap();
    direct
        .batch_execute("INSERT INTO ledger VALUES (1, 0, 'x'); INSERT INTO ledger_v2 VALUES (1, 0, 'L:x')")
        .await
        .unwrap();
    let proxy = proxy_with_control_role(&db).await;
    let client = proxy.connect(&db).await.unwrap();
    let mut raw = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    let mut buf = BytesMut::new();
    frontend::parse("s1", "UPDATE ledger SET note = note WHERE id = $1", [], &mut buf).unwrap();
    frontend::flush(&mut buf);
    raw.send(&buf).await;
    assert_eq!(raw.read_message().await.map(|m| m.0), Some(b'1'), "ParseComplete");

    lock_out_control_role(&direct).await;
    let refused = until("reads of the migrated table refused", || async {
        client.simple_query("SELECT count(*) FROM ledger").await.err().map(Err)
    })
    .await
    .unwrap_err();
    assert_state_unknown(&refused);

    buf.clear();
    frontend::describe(b'S', "s1", &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).await;
    let described = raw.read_until_ready().await;
    let tags: Vec<u8> = described.iter().map(|m| m.0).collect();
    assert_eq!(tags, b"tnZ", "{described:?}");
    const INT8: u32 = 20;
    assert_eq!(described[0].1, [&1i16.to_be_bytes()[..], &INT8.to_be_bytes()].concat(), "one bigint parameter");

    raw.send(&bind_and_execute("s1", 1)).await;
    let ran = raw.read_until_ready().await;
    let (code, message) = first_error(&ran).expect("refused");
    assert_eq!(code, "57P03", "{message}");
    assert!(message.contains("state unknown") && message.contains(LEDGER_MIGRATION), "{message}");

    // Back: the same statement runs, on both tables.
    direct.batch_execute(&format!("ALTER ROLE {CLEARTEXT_USER} LOGIN")).await.unwrap();
    let start = Instant::now();
    loop {
        raw.send(&bind_and_execute("s1", 1)).await;
        let ran = raw.read_until_ready().await;
        match first_error(&ran) {
            None => break,
            Some((code, message)) => assert_eq!(code, "57P03", "{message}"),
        }
        assert!(start.elapsed() < NOTICE_LIMIT, "the statement was still refused after the state came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    raw.send(&bind_and_execute("s1", 1)).await;
    assert_eq!(command_tags(&raw.read_until_ready().await), ["UPDATE 1"]);
    proxy.stop().await.unwrap();
}
