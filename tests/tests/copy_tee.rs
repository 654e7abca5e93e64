//! COPY ... FROM STDIN dual-written with COPYs alone (README: COPY): where every column the client sends
//! feeds one shadow column as itself or a cast (pgbench's accounts, `abalance` renamed `balance` and
//! widened to bigint, `filler` not sent), the proxy keeps the client's rows and sends them twice, as the
//! client's COPY and as a COPY into the other table, in autocommit and inside a transaction (behind a
//! savepoint), in both versions. The client sees what a plain COPY gives it. Where the second COPY or the
//! catalog check fails (a shadow row in the way, a BEFORE trigger on the old table, data past
//! `limits.copy_buffer_mb`) the proxy falls back to the staging path with the rows it kept, which writes
//! what every dual write writes; the client's own errors (a bad row, CopyFail, a key the source of truth
//! holds) change neither table. `dualwrite_copy_tee_total{path}` says which path wrote each COPY. The
//! change-data-capture watch pairs the two COPYs and records no bypass for them.
//! (Its own test binary: the Prometheus recorder is process-global.)

mod cdc_support;
mod proxy_support;

use std::net::SocketAddr;
use std::time::Duration;

use dualwrite_tests::*;
use proxy_support::{command_tags, copy, first_error, RawClient};
use tokio_postgres::Client;

const RULES: &str = include_str!("../../rewrite-rules/examples/pgbench_accounts_balance.toml");
const MIGRATION: &str = "accounts_balance_bigint";

const SCHEMA: &str = "
    CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(20));
    CREATE TABLE pgbench_accounts_v2 (aid int PRIMARY KEY, bid int, balance bigint, filler char(20));
";

struct Fixture {
    db: TestDb,
    direct: Client,
    proxy: TestProxy,
    metrics: SocketAddr,
}

/// A database with [`SCHEMA`] and a proxy on [`RULES`] keeping up to `copy_buffer_mb` of a COPY, with the
/// change-data-capture watch on if `watch`.
async fn fixture_with(copy_buffer_mb: u64, watch: bool) -> Fixture {
    fixture_limited(copy_buffer_mb, 512, watch).await
}

/// [`fixture_with`], all sessions' COPYs keeping up to `copy_buffer_total_mb` together.
async fn fixture_limited(copy_buffer_mb: u64, copy_buffer_total_mb: u64, watch: bool) -> Fixture {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = TestProxy::with_rules_toml_and(&db, RULES, |config| {
        config.metrics_listen = Some(metrics);
        config.limits.copy_buffer_mb = copy_buffer_mb;
        config.limits.copy_buffer_total_mb = copy_buffer_total_mb;
        if watch {
            cdc_support::watch_on(None)(config);
        }
    })
    .await
    .unwrap();
    Fixture { db, direct, proxy, metrics }
}

async fn fixture() -> Fixture {
    fixture_with(64, false).await
}

impl Fixture {
    async fn raw(&self, version: &str) -> RawClient {
        let user = TestCluster::shared().superuser().to_owned();
        let options = format!("-c dualwrite.version={version}");
        RawClient::connect_with(
            self.proxy.addr(),
            &[("user", &user), ("database", &self.db.name), ("options", &options)],
        )
        .await
    }

    /// Every row of both tables, the shadow's in the old shape: (aid, bid, balance, filler) each.
    async fn rows(&self) -> (Vec<Row>, Vec<Row>) {
        let read = |sql: &'static str| async move {
            let rows = self.direct.query(sql, &[]).await.unwrap();
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect::<Vec<Row>>()
        };
        (
            read("SELECT aid, bid, abalance::bigint, filler::text FROM pgbench_accounts ORDER BY aid").await,
            read("SELECT aid, bid, balance, filler::text FROM pgbench_accounts_v2 ORDER BY aid").await,
        )
    }

    /// `dualwrite_copy_tee_total{path}` as scraped now.
    async fn copies(&self, path: &str) -> f64 {
        let text = scrape_metrics(self.metrics).await;
        let prefix = format!("dualwrite_copy_tee_total{{path=\"{path}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    }

    /// Waits until `dualwrite_copy_tee_total` counts `copy` and `staging` COPYs (a session counts its COPY
    /// once the outcome reached it, which may be just after the client's answer).
    async fn until_copies(&self, copy: f64, staging: f64) {
        let what = format!("copy_tee_total: copy {copy}, staging {staging}");
        eventually(Duration::from_secs(10), &what, || async {
            (self.copies("copy").await, self.copies("staging").await) == (copy, staging)
        })
        .await;
    }
}

type Row = (i32, Option<i32>, Option<i64>, Option<String>);

/// The transaction status of the answer's ReadyForQuery.
fn status(answer: &[(u8, Vec<u8>)]) -> u8 {
    answer.iter().rev().find(|(tag, _)| *tag == b'Z').map(|(_, body)| body[0]).expect("ReadyForQuery")
}

/// The message tags of an answer, in order.
fn tags(answer: &[(u8, Vec<u8>)]) -> String {
    answer.iter().map(|(tag, _)| *tag as char).collect()
}

const COPY_OLD: &str = "COPY pgbench_accounts (aid, bid, abalance) FROM STDIN";

fn row(aid: i32, bid: i32, balance: i64) -> Row {
    (aid, Some(bid), Some(balance), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_the_mapping_carries_column_for_column_is_written_by_two_copies_in_autocommit_and_in_a_transaction() {
    let f = fixture().await;
    let mut raw = f.raw("v1").await;
    let answer = copy(&mut raw, COPY_OLD, b"1\t10\t100\n2\t20\t-200\n", None).await;
    assert_eq!(tags(&answer), "GCZ", "what a plain COPY answers: {answer:?}");
    assert_eq!(command_tags(&answer), ["COPY 2"]);
    assert_eq!(status(&answer), b'I');
    let both = vec![row(1, 10, 100), row(2, 20, -200)];
    assert_eq!(f.rows().await, (both.clone(), both));

    // In a transaction: rolled back with it, then committed with it; CSV options kept.
    raw.query("BEGIN").await;
    let answer = copy(&mut raw, &format!("{COPY_OLD} (FORMAT csv)"), b"3,30,300\n", None).await;
    assert_eq!((command_tags(&answer), status(&answer)), (vec!["COPY 1".to_owned()], b'T'));
    raw.query("ROLLBACK").await;
    assert_eq!(f.rows().await.0.len(), 2, "the ROLLBACK undid the old table's row");
    assert_eq!(f.rows().await.1.len(), 2, "and the shadow's");
    raw.query("BEGIN").await;
    copy(&mut raw, &format!("{COPY_OLD} (FORMAT csv)"), b"3,30,300\n", None).await;
    let answer = raw.query("SELECT count(*) FROM pgbench_accounts").await;
    assert!(first_error(&answer).is_none(), "the transaction goes on: {answer:?}");
    raw.query("COMMIT").await;
    let three = vec![row(1, 10, 100), row(2, 20, -200), row(3, 30, 300)];
    assert_eq!(f.rows().await, (three.clone(), three));

    // A new-version session copies the shadow's shape into the shadow and the old table (once the
    // backfill is done, as every new-shaped write).
    backfill_until_done(&f.proxy.connect(&f.db).await.unwrap(), MIGRATION).await;
    let mut v2 = f.raw("v2").await;
    let answer = copy(&mut v2, "COPY pgbench_accounts (aid, balance, bid) FROM STDIN", b"4\t4000\t40\n", None).await;
    assert_eq!(command_tags(&answer), ["COPY 1"]);
    assert_eq!(f.rows().await.0.last(), Some(&row(4, 40, 4000)));
    assert_eq!(f.rows().await.1.last(), Some(&row(4, 40, 4000)));
    f.until_copies(4.0, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_row_in_the_way_falls_back_to_the_staging_path_which_upserts_it() {
    let f = fixture().await;
    // A row only the shadow holds (a delete the proxy did not see, say): the second COPY meets it.
    f.direct.batch_execute("INSERT INTO pgbench_accounts_v2 VALUES (2, 0, 999, 'stale')").await.unwrap();
    let mut raw = f.raw("v1").await;
    let answer = copy(&mut raw, COPY_OLD, b"1\t10\t100\n2\t20\t200\n", None).await;
    assert_eq!((tags(&answer), command_tags(&answer)), ("GCZ".to_owned(), vec!["COPY 2".to_owned()]));
    let both = vec![row(1, 10, 100), row(2, 20, 200)];
    assert_eq!(f.rows().await, (both.clone(), both), "the stale shadow row is overwritten, as any dual write does");

    // Inside a transaction the attempt is undone behind its savepoint; the transaction goes on.
    f.direct.batch_execute("INSERT INTO pgbench_accounts_v2 VALUES (4, 0, 999, 'stale')").await.unwrap();
    raw.query("BEGIN").await;
    let answer = copy(&mut raw, COPY_OLD, b"3\t30\t300\n4\t40\t400\n", None).await;
    assert_eq!((command_tags(&answer), status(&answer)), (vec!["COPY 2".to_owned()], b'T'));
    raw.query("COMMIT").await;
    let four = vec![row(1, 10, 100), row(2, 20, 200), row(3, 30, 300), row(4, 40, 400)];
    assert_eq!(f.rows().await, (four.clone(), four));
    f.until_copies(0.0, 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_before_insert_trigger_on_the_old_table_keeps_the_copy_on_the_staging_path() {
    let f = fixture().await;
    f.direct
        .batch_execute(
            "CREATE FUNCTION public.tag_filler() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN NEW.filler := 'tagged'; RETURN NEW; END $$;
             CREATE TRIGGER tag_filler BEFORE INSERT ON public.pgbench_accounts
                 FOR EACH ROW EXECUTE FUNCTION public.tag_filler();",
        )
        .await
        .unwrap();
    let mut raw = f.raw("v1").await;
    let answer = copy(&mut raw, COPY_OLD, b"1\t10\t100\n", None).await;
    assert_eq!(command_tags(&answer), ["COPY 1"]);
    let tagged = |aid: i32| (aid, Some(aid * 10), Some(i64::from(aid) * 100), Some("tagged".to_owned()));
    assert_eq!(
        f.rows().await,
        (vec![tagged(1)], vec![tagged(1)]),
        "the shadow holds the old row as the trigger left it"
    );

    // The check fails at once, so the server ignores the rows relayed meanwhile: a CopyFail still ends the
    // COPY with the client's reason, and a COPY in a transaction falls back behind its savepoint.
    let answer = copy(&mut raw, COPY_OLD, b"2\t20\t200\n", Some("not now")).await;
    let (code, message) = first_error(&answer).expect("an error");
    assert_eq!(code, "57014");
    assert!(message.contains("not now"), "{message}");
    raw.query("BEGIN").await;
    let answer = copy(&mut raw, COPY_OLD, b"3\t30\t300\n", None).await;
    assert_eq!((command_tags(&answer), status(&answer)), (vec!["COPY 1".to_owned()], b'T'));
    raw.query("COMMIT").await;
    assert_eq!(f.rows().await, (vec![tagged(1), tagged(3)], vec![tagged(1), tagged(3)]));
    f.until_copies(0.0, 3.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_own_errors_change_neither_table() {
    let f = fixture().await;
    let mut raw = f.raw("v1").await;
    // A row that is no integer: the server's error for the client's COPY.
    let answer = copy(&mut raw, COPY_OLD, b"1\t10\t100\n2\t20\tlots\n", None).await;
    assert_eq!(first_error(&answer).map(|e| e.0).as_deref(), Some("22P02"), "{answer:?}");
    assert_eq!(status(&answer), b'I');
    // CopyFail: Postgres's 57014 with the client's reason.
    let answer = copy(&mut raw, COPY_OLD, b"1\t10\t100\n", Some("changed my mind")).await;
    let (code, message) = first_error(&answer).expect("an error");
    assert_eq!(code, "57014");
    assert!(message.contains("changed my mind"), "{message}");
    // Inside a transaction, a failed COPY fails the transaction, as it does without the proxy.
    raw.query("BEGIN").await;
    let answer = copy(&mut raw, COPY_OLD, b"x\n", None).await;
    assert_eq!(status(&answer), b'E');
    raw.query("ROLLBACK").await;
    assert_eq!(f.rows().await, (vec![], vec![]));

    // In cutover the shadow is the source of truth: a key it holds fails the COPY as a plain COPY into
    // it would, through the staging path's plain INSERT.
    let admin = f.proxy.connect(&f.db).await.unwrap();
    admin.simple_query(&format!("DUALWRITE PHASE {MIGRATION} cutover FORCE")).await.unwrap();
    f.direct.batch_execute("INSERT INTO pgbench_accounts_v2 VALUES (7, 0, 999, NULL)").await.unwrap();
    let answer = copy(&mut raw, COPY_OLD, b"7\t70\t700\n", None).await;
    assert_eq!(first_error(&answer).map(|e| e.0).as_deref(), Some("23505"), "{answer:?}");
    assert_eq!(f.rows().await, (vec![], vec![(7, Some(0), Some(999), None)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_larger_than_the_buffer_goes_through_the_staging_path_as_it_streams() {
    let f = fixture_with(1, false).await;
    let data: String = (1..=100_000).map(|aid| format!("{aid}\t{}\t{}\n", aid % 10, aid * 3)).collect();
    assert!(data.len() > 1024 * 1024);
    let mut raw = f.raw("v1").await;
    let answer = copy(&mut raw, COPY_OLD, data.as_bytes(), None).await;
    assert_eq!(command_tags(&answer), ["COPY 100000"]);
    let (old, shadow) = f.rows().await;
    assert_eq!((old.len(), old == shadow), (100_000, true));
    assert_eq!(old[99_999], row(100_000, 0, 300_000));
    f.until_copies(0.0, 1.0).await;
}

/// `dualwrite_copy_buffer_bytes` as scraped now.
async fn buffered(metrics: SocketAddr) -> f64 {
    let text = scrape_metrics(metrics).await;
    text.lines()
        .find_map(|l| l.strip_prefix("dualwrite_copy_buffer_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn rows_text(aids: std::ops::RangeInclusive<i32>) -> String {
    aids.map(|aid| format!("{aid}\t{}\t{}\n", aid % 10, aid * 3)).collect()
}

/// Two COPYs at once, each within `copy_buffer_mb`, together past `copy_buffer_total_mb`: the first keeps
/// its rows (the gauge shows them) and is written by two COPYs; the second, whose rows no longer fit, goes
/// through the staging path; both tables end with every row, and the gauge comes back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_that_together_pass_the_total_buffer_go_through_the_staging_path_and_the_gauge_shows_what_is_kept() {
    let f = fixture_limited(64, 1, false).await;
    let first = rows_text(1..=55_000);
    let second = rows_text(55_001..=85_000);
    assert!(first.len() > 700 * 1024 && first.len() + second.len() > 1024 * 1024 && first.len() < 1024 * 1024);
    let mut holder = f.raw("v1").await;
    holder.send(&proxy_support::wire_message(b'Q', &proxy_support::cstr(COPY_OLD))).await;
    while holder.read_message().await.expect("the CopyInResponse").0 != b'G' {}
    for chunk in first.as_bytes().chunks(4096) {
        holder.send(&proxy_support::wire_message(b'd', chunk)).await;
    }
    let kept = first.len() as f64;
    eventually(Duration::from_secs(10), "the first COPY's rows are kept", || async {
        buffered(f.metrics).await >= kept
    })
    .await;
    let mut other = f.raw("v1").await;
    let answer = copy(&mut other, COPY_OLD, second.as_bytes(), None).await;
    assert_eq!(command_tags(&answer), ["COPY 30000"]);
    f.until_copies(0.0, 1.0).await;
    holder.send(&proxy_support::wire_message(b'c', &[])).await;
    assert_eq!(command_tags(&holder.read_until_ready().await), ["COPY 55000"]);
    f.until_copies(1.0, 1.0).await;
    eventually(Duration::from_secs(10), "every kept byte is given back", || async { buffered(f.metrics).await == 0.0 })
        .await;
    let (old, shadow) = f.rows().await;
    assert_eq!((old.len(), old == shadow), (85_000, true));
    assert_eq!((&old[0], &old[84_999]), (&row(1, 1, 3), &row(85_000, 0, 255_000)));
}

/// The watch pairs the two COPYs of a tee (one transaction, both tables by key) and records no bypass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_data_capture_watch_pairs_the_two_copies_and_records_no_bypass() {
    let f = fixture_with(64, true).await;
    cdc_support::until_watching(&f.direct).await;
    let data: String = (1..=300).map(|aid| format!("{aid}\t{}\t{aid}\n", aid % 10)).collect();
    let answer = copy(&mut f.raw("v1").await, COPY_OLD, data.as_bytes(), None).await;
    assert_eq!(command_tags(&answer), ["COPY 300"]);
    f.until_copies(1.0, 0.0).await;
    // A one-sided write after it, committed later: once the watch recorded it, it has read the COPY's
    // transaction too, and that one gave no bypass.
    f.direct.batch_execute("UPDATE pgbench_accounts SET bid = 99 WHERE aid = 7").await.unwrap();
    eventually(Duration::from_secs(30), "the marker bypass is recorded", || async {
        !cdc_support::bypasses(&f.direct).await.is_empty()
    })
    .await;
    assert_eq!(
        cdc_support::bypasses(&f.direct).await,
        vec![("update".into(), "old".into(), Some(r#"{"aid": 7}"#.into()), false)]
    );
}
