//! Chaos soak: several writers (one of them in the shadow's shape, v2) run transactions through two
//! proxy instances (child processes of the `dualwrite` binary) on one database while the backfill copies
//! pre-existing rows, reads are flipped between the tables every two seconds, one instance and then the
//! other is SIGKILLed and restarted, and the upstream is restarted (`pg_ctl restart -m fast`). Writers
//! reconnect through whichever instance answers and settle every COMMIT that got no answer by reading the
//! table directly. The v2 writer's writes are refused (and rolled back) until the backfill has finished,
//! which it does after the last fault. At the end `DUALWRITE VERIFY` finds no divergence, and both tables
//! hold exactly what the writers' ledgers say.
//!
//! Runs for `DUALWRITE_SOAK_SECS` seconds (default 120); `DUALWRITE_SOAK_SEED` replays a seed.

mod chaos_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chaos_support::{partition, run_writer, Row, WriterConfig, WriterReport};
use dualwrite_tests::ledger::Ledger;
use dualwrite_tests::*;

const MIGRATION: &str = "accounts_cents";
const RULES: &str = r#"
[[migration]]
name   = "accounts_cents"
table  = "public.accounts"
shadow = "public.accounts_v2"
key    = ["id"]
versions = { old = "v1", new = "v2" }
[migration.forward]
id = "id"
owner = "owner"
balance_cents = "balance * 100"
txn = "txn"
[migration.backward]
id = "id"
owner = "owner"
balance = "balance_cents / 100"
txn = "txn"
"#;

/// Rows that exist before the soak, for the backfill to copy while the writers change them.
const PREEXISTING: i64 = 20_000;
const WRITERS: usize = 4;
const APP_USER: &str = "soak_app";
const APP_PASSWORD: &str = "soak-app-secret";

fn soak_duration() -> Duration {
    let secs = std::env::var("DUALWRITE_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120u64);
    Duration::from_secs(secs.max(10))
}

/// Answers of a control command as rows of text.
type Rows = Vec<Vec<Option<String>>>;

/// Runs control SQL through the first proxy instance that answers (instances may be down for a moment).
async fn control(db: &TestDb, proxies: &[SocketAddr], sql: &str) -> anyhow::Result<Rows> {
    let mut last = None;
    for round in 0..120 {
        let addr = proxies[round % proxies.len()];
        match connect(&db.url_via(addr)).await {
            Ok(client) => match client.simple_query(sql).await {
                Ok(messages) => return Ok(simple_rows(&messages)),
                Err(e) if e.code().is_some_and(|c| !c.code().starts_with("08") && !c.code().starts_with("57P")) => {
                    return Err(e.into())
                }
                Err(e) => last = Some(anyhow::Error::from(e)),
            },
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no proxy answered")).context(sql.to_owned()))
}

/// (Re)starts the backfill from its checkpoint; "another instance runs it" (55006) is fine too.
async fn start_backfill(db: &TestDb, proxies: &[SocketAddr], rate: u64) {
    let sql = format!("DUALWRITE BACKFILL {MIGRATION} START BATCH 500 RATE {rate}");
    if let Err(e) = control(db, proxies, &sql).await {
        let busy = e.downcast_ref::<tokio_postgres::Error>().and_then(|e| e.code()).map(|c| c.code()) == Some("55006");
        assert!(busy, "{sql}: {e:#}");
    }
}

async fn backfill_state(db: &TestDb) -> String {
    let client = connect(&db.url()).await.unwrap();
    let state: Option<String> = client
        .query_opt("SELECT state FROM dualwrite.backfill WHERE migration = $1", &[&MIGRATION])
        .await
        .unwrap()
        .map(|r| r.get(0));
    state.unwrap_or_default()
}

async fn table(db: &TestDb, sql: &str) -> BTreeMap<i64, Row> {
    let client = connect(&db.url()).await.unwrap();
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), Row { owner: r.get(1), balance: r.get(2), txn: r.get(3) }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_ledger_matches_both_tables_after_kills_restarts_backfill_and_read_flips() {
    let duration = soak_duration();
    let seed =
        std::env::var("DUALWRITE_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("chaos soak: {duration:?}, seed {seed} (DUALWRITE_SOAK_SEED={seed} replays the writers' choices)");
    let cluster =
        TestCluster::start_with(default_options().role(Role::new(APP_USER, APP_PASSWORD, PasswordAuth::ScramSha256)))
            .await
            .unwrap();
    let db = cluster.create_database().await.unwrap();
    connect(&db.url())
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL, txn bigint NOT NULL);
             CREATE TABLE accounts_v2 (id bigint PRIMARY KEY, owner text NOT NULL, balance_cents bigint NOT NULL, txn bigint NOT NULL);
             INSERT INTO accounts SELECT g, 'owner ' || g, g % 1000, 0 FROM generate_series(1, {PREEXISTING}) g;
             GRANT SELECT, INSERT, UPDATE, DELETE ON accounts, accounts_v2 TO {APP_USER};"
        ))
        .await
        .unwrap();
    let initial = table(&db, "SELECT id, owner, balance, txn FROM accounts").await;

    let mut rules = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    rules.write_all(RULES.as_bytes()).unwrap();
    let rules_path = rules.path().to_str().unwrap().to_owned();
    let upstream = db.url();
    let serve_args =
        ["--upstream", upstream.as_str(), "--rules", rules_path.as_str(), "--admin-role", cluster.superuser()];
    let mut instances =
        vec![ProxyProcess::serve(&serve_args).await.unwrap(), ProxyProcess::serve(&serve_args).await.unwrap()];
    let proxies: Vec<SocketAddr> = instances.iter().map(ProxyProcess::addr).collect();

    let started = Instant::now();
    let until = started + duration;
    let writers: Vec<_> = (0..WRITERS)
        .map(|index| {
            let v2 = index == 0;
            let options = if v2 { "?options=-c%20dualwrite.version%3Dv2" } else { "" };
            let config = WriterConfig {
                index,
                writers: WRITERS,
                v2,
                // Writers start on different instances.
                proxy_urls: (0..proxies.len())
                    .map(|i| {
                        format!(
                            "{}{options}",
                            db.url_via_as(proxies[(i + index) % proxies.len()], APP_USER, Some(APP_PASSWORD))
                        )
                    })
                    .collect(),
                direct_url: db.url(),
                seed: seed.wrapping_add(index as u64),
                until,
                first_new_key: PREEXISTING + 1,
            };
            tokio::spawn(run_writer(config, partition(&initial, index, WRITERS)))
        })
        .collect();

    // The backfill is throttled to finish around the middle of the soak, so faults hit it while it runs.
    let rate = (PREEXISTING as u64 * 2 / duration.as_secs()).max(50);
    start_backfill(&db, &proxies, rate).await;
    let flips = [
        format!("DUALWRITE ROUTE {MIGRATION} READS TO v2"),
        format!("DUALWRITE ROUTE {MIGRATION} READS TO DEFAULT"),
        format!("DUALWRITE ROUTE {MIGRATION} READS TO v2 PERCENT 50"),
        format!("DUALWRITE ROUTE {MIGRATION} READS TO v1"),
    ];
    let mut flip = 0usize;
    let mut last_fault = started;
    let faults = [(0.3, Fault::KillProxy(1)), (0.5, Fault::RestartUpstream), (0.7, Fault::KillProxy(0))];
    for (n, (at, fault)) in faults.into_iter().enumerate() {
        let when = started + duration.mul_f64(at);
        while Instant::now() < when {
            control(&db, &proxies, &flips[flip % flips.len()]).await.unwrap();
            flip += 1;
            // The cadence of the soak's schedule (reads flip every 2 s), not a wait for anything.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        eprintln!("chaos soak: {:?} at {:?}", fault, started.elapsed());
        match fault {
            Fault::KillProxy(i) => {
                instances[i].kill().await.unwrap();
                // The fault is an instance down for a second: writers on it fail over meanwhile.
                tokio::time::sleep(Duration::from_secs(1)).await;
                instances[i].restart().await.unwrap();
            }
            Fault::RestartUpstream => cluster.restart(StopMode::Fast).await.unwrap(),
        }
        last_fault = Instant::now();
        // The backfill ran on some instance or lost its connection: start it again from its checkpoint;
        // after the last fault unthrottled, since the v2 writer's writes wait for it (README: v2 writes wait
        // for the backfill) and must commit after the last fault.
        start_backfill(&db, &proxies, if n + 1 == faults.len() { 100_000 } else { rate }).await;
    }
    while Instant::now() < until {
        control(&db, &proxies, &flips[flip % flips.len()]).await.unwrap();
        flip += 1;
        // The schedule's cadence, as above.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let mut reports: Vec<WriterReport> = Vec::new();
    for writer in writers {
        reports.push(writer.await.unwrap());
    }
    let violations: Vec<String> =
        reports.iter().flat_map(|r| r.violations.iter().map(move |v| format!("writer {}: {v}", r.index))).collect();
    for r in &reports {
        let t = r.ledger.tally();
        eprintln!(
            "chaos soak: writer {}: {} committed, {} rolled back, {} unknown at COMMIT ({} of them committed), {} connection losses, {} reads checked",
            r.index, t.committed + t.unknown_then_committed, t.rolled_back, t.unknown(), t.unknown_then_committed, r.connection_losses, r.reads_checked
        );
    }
    assert!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
    for r in &reports {
        assert!(
            r.last_commit.is_some_and(|t| t > last_fault),
            "writer {} committed nothing after the last fault (it did not recover)",
            r.index
        );
        assert!(r.reads_checked > 0, "writer {} checked no read", r.index);
    }

    // The backfill finishes (restarted from its checkpoint if a fault stopped it).
    let mut rounds = 0;
    loop {
        let state = backfill_state(&db).await;
        if state == "done" {
            break;
        }
        rounds += 1;
        assert!(rounds < 600, "backfill did not finish: state {state}");
        if rounds % 10 == 1 {
            start_backfill(&db, &proxies, 100_000).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let verify = control(&db, &proxies, &format!("DUALWRITE VERIFY {MIGRATION}")).await.unwrap();
    // migration, run_id, source, rows_checked, target_rows, missing, extra, different, repaired, clean
    let counts: Vec<&str> = verify[0][5..].iter().map(|c| c.as_deref().unwrap_or("")).collect();
    assert_eq!(counts, ["0", "0", "0", "0", "t"], "verify found divergence: {verify:?}");

    let ledger = Ledger::merge(reports.into_iter().map(|r| r.ledger));
    let old = table(&db, "SELECT id, owner, balance, txn FROM accounts").await;
    let differences = ledger.differences(&old);
    assert!(
        differences.is_empty(),
        "accounts differs from the ledger:\n{}",
        differences[..differences.len().min(20)].join("\n")
    );
    let shadow =
        table(&db, "SELECT id, owner, balance_cents / 100, txn FROM accounts_v2 WHERE balance_cents % 100 = 0").await;
    let differences = ledger.differences(&shadow);
    assert!(
        differences.is_empty(),
        "accounts_v2 differs from the ledger:\n{}",
        differences[..differences.len().min(20)].join("\n")
    );
    let tally = ledger.tally();
    eprintln!("chaos soak: {} rows, {tally:?}, {flip} read flips", old.len());
    assert!(tally.committed > 0);
    for instance in &mut instances {
        assert!(instance.terminate().await.unwrap().success());
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillProxy(usize),
    RestartUpstream,
}
