//! Client faults with a migration active: a client that disconnects mid-transaction (after dual
//! writes), mid-COPY (into the migrated table, dual-written through a staging table, or a plain table) and
//! mid-pipeline (extended-protocol dual writes executed but never synced) leaves nothing half-written,
//! and its upstream backend ends; a client that stops reading a large result holds the proxy's memory
//! bounded (the upstream waits, blocked writing) while another session on the same proxy keeps working.

mod proxy_support;

use std::time::Duration;

use dualwrite_tests::txn_ledger::{LEDGER_RULES, LEDGER_SCHEMA};
use dualwrite_tests::*;
use proxy_support::{command_tags, error_field, RawClient};
use tokio_postgres::Client;

/// Bound on waiting for the upstream to notice (not a timing assertion).
const LIMIT: Duration = Duration::from_secs(30);
/// What the proxy may grow by while a client does not read a result of about a gigabyte.
const RSS_GROWTH_LIMIT: u64 = 64 * 1024 * 1024;

/// Resident memory of a process in bytes (VmRSS of /proc/<pid>/status).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in kB");
    kb * 1024
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![tag];
    msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Parse (unnamed, no parameters) + Bind + Execute, without Sync.
fn extended(sql: &str) -> Vec<u8> {
    let mut parse = Vec::new();
    cstr(&mut parse, "");
    cstr(&mut parse, sql);
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = Vec::new();
    cstr(&mut bind, "");
    cstr(&mut bind, "");
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut execute = Vec::new();
    cstr(&mut execute, "");
    execute.extend_from_slice(&0i32.to_be_bytes());
    [frame(b'P', &parse), frame(b'B', &bind), frame(b'E', &execute)].concat()
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    frame(b'Q', &body)
}

async fn backend_pid(raw: &mut RawClient) -> i32 {
    let rows = raw.query("SELECT pg_backend_pid()").await;
    let row = &rows.iter().find(|(t, _)| *t == b'D').expect("a row").1;
    String::from_utf8_lossy(&row[6..]).parse().unwrap()
}

async fn wait_backend_gone(direct: &Client, pid: i32) {
    eventually(LIMIT, "the backend of a client that went away ends", || async {
        let alive: bool =
            direct.query_one("SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1", &[&pid]).await.unwrap().get(0);
        !alive
    })
    .await;
}

async fn count(direct: &Client, sql: &str) -> i64 {
    direct.query_one(sql, &[]).await.unwrap().get(0)
}

async fn both_tables(direct: &Client) -> (i64, i64) {
    (count(direct, "SELECT count(*) FROM ledger").await, count(direct, "SELECT count(*) FROM ledger_v2").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_transaction_copy_or_pipeline_leaves_nothing() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(LEDGER_SCHEMA).await.unwrap();
    direct.batch_execute("CREATE TABLE plain (id int, note text)").await.unwrap();
    let proxy = TestProxy::with_rules_toml(&db, LEDGER_RULES).await.unwrap();
    let user = cluster.superuser().to_owned();

    // Mid-transaction: dual writes done (both tables written inside the transaction), then gone.
    let mut raw = RawClient::connect(proxy.addr(), &user, &db.name).await;
    let pid = backend_pid(&mut raw).await;
    let answer = raw
        .query("BEGIN; INSERT INTO ledger VALUES (1, 1, 'a'), (2, 1, 'b'); UPDATE ledger SET note = 'c' WHERE id = 2")
        .await;
    assert_eq!(command_tags(&answer), ["BEGIN", "INSERT 0 2", "UPDATE 1"], "dual writes in the transaction succeed");
    drop(raw);
    wait_backend_gone(&direct, pid).await;
    assert_eq!(both_tables(&direct).await, (0, 0));

    // Mid-COPY into the migrated table (dual-written through a staging table): rows sent, no CopyDone,
    // then gone.
    let mut raw = RawClient::connect(proxy.addr(), &user, &db.name).await;
    let pid = backend_pid(&mut raw).await;
    raw.send(&query("COPY ledger FROM STDIN")).await;
    let (tag, _) = raw.read_message().await.expect("CopyInResponse");
    assert_eq!(tag, b'G');
    for i in 0..1000 {
        raw.send(&frame(b'd', format!("{i}\t{i}\trow {i}\n").as_bytes())).await;
    }
    drop(raw);
    wait_backend_gone(&direct, pid).await;
    assert_eq!(both_tables(&direct).await, (0, 0));

    // Mid-COPY on a plain table: rows sent, no CopyDone, then gone.
    let mut raw = RawClient::connect(proxy.addr(), &user, &db.name).await;
    let pid = backend_pid(&mut raw).await;
    raw.send(&query("COPY plain FROM STDIN")).await;
    let (tag, _) = raw.read_message().await.expect("CopyInResponse");
    assert_eq!(tag, b'G');
    for i in 0..1000 {
        raw.send(&frame(b'd', format!("{i}\trow {i}\n").as_bytes())).await;
    }
    drop(raw);
    wait_backend_gone(&direct, pid).await;
    assert_eq!(count(&direct, "SELECT count(*) FROM plain").await, 0);

    // Mid-pipeline: extended-protocol dual writes executed (Flush shows their completion) but no Sync,
    // so the implicit transaction never commits.
    let mut raw = RawClient::connect(proxy.addr(), &user, &db.name).await;
    let pid = backend_pid(&mut raw).await;
    let mut batch = extended("INSERT INTO ledger VALUES (3, 3, 'a'), (4, 3, 'b')");
    batch.extend(extended("UPDATE ledger SET note = 'd' WHERE id = 4"));
    batch.extend(frame(b'H', &[]));
    raw.send(&batch).await;
    let mut completed = 0;
    while completed < 2 {
        let (tag, body) = raw.read_message().await.expect("answers to the flushed pipeline");
        assert_ne!(tag, b'E', "{}", error_field(&body, b'M'));
        if tag == b'C' {
            completed += 1;
        }
    }
    let inside: i64 = count(&direct, "SELECT count(*) FROM ledger").await;
    assert_eq!(inside, 0, "uncommitted rows are invisible to others");
    drop(raw);
    wait_backend_gone(&direct, pid).await;
    assert_eq!(both_tables(&direct).await, (0, 0));

    // The proxy still serves dual writes normally afterwards.
    let client = proxy.connect(&db).await.unwrap();
    client.batch_execute("INSERT INTO ledger VALUES (5, 5, 'e')").await.unwrap();
    assert_eq!(both_tables(&direct).await, (1, 1));
    proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_holds_proxy_memory_bounded() {
    let cluster = TestCluster::shared();
    let db = cluster.create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(LEDGER_SCHEMA).await.unwrap();
    let rules = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(rules.path(), LEDGER_RULES).unwrap();
    let upstream = db.url();
    let mut proxy =
        ProxyProcess::serve(&["--upstream", &upstream, "--rules", rules.path().to_str().unwrap()]).await.unwrap();
    let pid_of_proxy = proxy.pid().unwrap();

    let other = connect(&db.url_via(proxy.addr())).await.unwrap();
    other.batch_execute("INSERT INTO ledger VALUES (1, 1, 'a')").await.unwrap();
    let baseline = rss_bytes(pid_of_proxy);

    // About a gigabyte of rows, never read.
    let mut slow = RawClient::connect(proxy.addr(), cluster.superuser(), &db.name).await;
    let pid = backend_pid(&mut slow).await;
    slow.send(&query("SELECT repeat('x', 1000) FROM generate_series(1, 1000000)")).await;

    // The upstream ends up blocked writing to the proxy: the proxy stopped reading it.
    eventually(LIMIT, "the upstream waits on the proxy (ClientWrite)", || async {
        direct
            .query_one(
                "SELECT coalesce(wait_event = 'ClientWrite', false) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0)
    })
    .await;
    // Meanwhile another session works normally (dual writes and reads), and the proxy's memory stays put.
    let mut peak = baseline;
    for i in 2..40i64 {
        other.execute("INSERT INTO ledger VALUES ($1, $1, 'b')", &[&i]).await.unwrap();
        let n: i64 = other.query_one("SELECT count(*) FROM ledger", &[]).await.unwrap().get(0);
        assert_eq!(n, i);
        peak = peak.max(rss_bytes(pid_of_proxy));
        // Spreads the RSS samples over a second or so of the stall; not a wait for anything.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        peak < baseline + RSS_GROWTH_LIMIT,
        "proxy RSS grew from {baseline} to {peak} bytes while a client did not read"
    );
    let still_waiting: i64 =
        count(&direct, &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'")).await;
    assert_eq!(still_waiting, 1, "the unread query is still held up, not dropped");

    // The stalled client goes away: its query is cancelled and its backend ends.
    drop(slow);
    wait_backend_gone(&direct, pid).await;
    assert_eq!(count(&direct, "SELECT count(*) FROM ledger_v2").await, 39);
    proxy.kill().await.unwrap();
}
