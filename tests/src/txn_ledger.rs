//! A transaction ledger for the fault tests (`tests/tests/fault_*.rs`), checked in SQL against both
//! tables of a migration (unlike [`crate::ledger`], a row model the chaos soak keeps per writer):
//! concurrent writers run dual-written transactions through a proxy and
//! record what each client *saw* (committed, failed, or in doubt because the connection broke during
//! COMMIT); [`Ledger::check`] then proves the guarantees against the database directly:
//!
//! - the old table and the shadow are equal under the mapping (no half-applied dual write);
//! - every transaction the client saw commit is in both tables;
//! - no transaction the client saw fail is in either;
//! - a transaction in doubt is atomic: wholly present (in both) or wholly absent.
//!
//! Use: create [`LEDGER_SCHEMA`] in a test database, start a proxy with [`LEDGER_RULES`] (migration
//! [`LEDGER_MIGRATION`] in `dual_write`), [`Writers::start`] against the proxy's URL, cause the fault,
//! [`Ledger::wait_commits`] to see writes resume, [`Writers::stop`], then [`Ledger::check`].
//!
//! Each transaction `t` inserts rows `2t` and `2t+1`, updates `2t+1` and deletes `2t`, so a committed `t`
//! leaves exactly row `2t+1` with note `u<t>` and a failed one leaves nothing. Writers alternate between
//! the simple and the extended protocol.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// The migration of [`LEDGER_RULES`].
pub const LEDGER_MIGRATION: &str = "ledger_split";

/// The old table `ledger` and its shadow `ledger_v2` (note becomes label `L:<note>`).
pub const LEDGER_SCHEMA: &str = "
    CREATE TABLE ledger (id bigint PRIMARY KEY, txn bigint NOT NULL, note text NOT NULL);
    CREATE TABLE ledger_v2 (id bigint PRIMARY KEY, txn bigint NOT NULL, label text NOT NULL);
";

/// Rules for [`LEDGER_SCHEMA`].
pub const LEDGER_RULES: &str = r#"
[[migration]]
name = "ledger_split"
table = "public.ledger"
shadow = "public.ledger_v2"
key = ["id"]
versions = { old = "v1", new = "v2" }
[migration.forward]
id = "id"
txn = "txn"
label = "'L:' || note"
[migration.backward]
id = "id"
txn = "txn"
note = "substr(label, 3)"
"#;

/// How long one transaction may take before the writer gives up on its connection (the outcome is then
/// in doubt). Only a bound against a hung test; faults normally end a transaction much sooner.
const TXN_LIMIT: Duration = Duration::from_secs(30);

/// What a client saw of one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// An error before COMMIT was sent, or COMMIT answered with an error by a live connection.
    Failed,
    /// The connection broke while COMMIT was in flight: the server may or may not have committed.
    InDoubt,
}

/// The outcomes seen, by transaction number.
#[derive(Debug, Default)]
pub struct Ledger {
    next_txn: AtomicI64,
    committed: Mutex<BTreeSet<i64>>,
    failed: Mutex<BTreeSet<i64>>,
    in_doubt: Mutex<BTreeSet<i64>>,
    /// What the writers' failed transactions and connection attempts ended with, counted (see
    /// [`Ledger::errors`]).
    errors: Mutex<BTreeMap<String, usize>>,
    error_examples: Mutex<BTreeMap<String, String>>,
}

/// Counts of what [`Ledger::check`] verified.
#[derive(Debug, Clone, Copy)]
pub struct LedgerReport {
    pub committed: usize,
    pub failed: usize,
    pub in_doubt: usize,
    /// In-doubt transactions that turned out committed.
    pub in_doubt_committed: usize,
}

impl Ledger {
    pub fn new() -> Arc<Ledger> {
        Arc::new(Ledger { next_txn: AtomicI64::new(1), ..Default::default() })
    }

    pub fn committed(&self) -> usize {
        lock(&self.committed).len()
    }

    pub fn failed(&self) -> usize {
        lock(&self.failed).len()
    }

    /// The errors writers saw, counted by kind: the SQLSTATE a server (or the proxy) sent, `closed` for a
    /// connection that ended without one, `timeout` for a transaction given up on, `io` for anything
    /// else; prefixed with `connect ` when it ended a connection attempt. A fault test compares the keys
    /// with the SQLSTATEs the README promises for its fault.
    pub fn errors(&self) -> BTreeMap<String, usize> {
        lock(&self.errors).clone()
    }

    /// The first error seen of each kind, in full (the kinds alone do not say what an `io` error was).
    pub fn error_examples(&self) -> BTreeMap<String, String> {
        lock(&self.error_examples).clone()
    }

    fn record_error(&self, kind: String, example: &dyn std::fmt::Debug) {
        lock(&self.error_examples).entry(kind.clone()).or_insert_with(|| format!("{example:?}"));
        *lock(&self.errors).entry(kind).or_default() += 1;
    }

    /// Runs one ledger transaction on `client` and records what the client saw.
    pub async fn run_txn(&self, client: &Client, extended: bool) -> Outcome {
        let t = self.next_txn.fetch_add(1, Ordering::Relaxed);
        let commit_sent = AtomicBool::new(false);
        let work = txn_statements(client, t, extended, &commit_sent);
        let result = tokio::time::timeout(TXN_LIMIT, work).await;
        match &result {
            Ok(Err(e)) => self.record_error(error_kind(e), e),
            Err(e) => self.record_error("timeout".to_owned(), e),
            Ok(Ok(())) => {}
        }
        let outcome = match result {
            Ok(Ok(())) => Outcome::Committed,
            Ok(Err(e))
                if commit_sent.load(Ordering::Relaxed)
                    && (e.is_closed() || e.as_db_error().is_none_or(|db| is_connection_end(db.code().code()))) =>
            {
                Outcome::InDoubt
            }
            Ok(Err(_)) => Outcome::Failed,
            Err(_) if commit_sent.load(Ordering::Relaxed) => Outcome::InDoubt,
            // Timed out before COMMIT: the transaction stays open on a connection the writer abandons;
            // it can only end rolled back.
            Err(_) => Outcome::Failed,
        };
        let set = match outcome {
            Outcome::Committed => &self.committed,
            Outcome::Failed => &self.failed,
            Outcome::InDoubt => &self.in_doubt,
        };
        lock(set).insert(t);
        outcome
    }

    /// Waits until at least `n` more transactions than `since` committed; false if `limit` passed first.
    pub async fn wait_commits(&self, since: usize, n: usize, limit: Duration) -> bool {
        let start = Instant::now();
        while self.committed() < since + n {
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Checks the ledger's guarantees on the database (`direct`: a connection not through the proxy).
    pub async fn check(&self, direct: &Client) -> anyhow::Result<LedgerReport> {
        let mapped = "SELECT id, txn, 'L:' || note AS label FROM ledger";
        let shadow = "SELECT id, txn, label FROM ledger_v2";
        let differ: i64 = direct
            .query_one(&format!("SELECT (SELECT count(*) FROM (({mapped}) EXCEPT ({shadow})) a) + (SELECT count(*) FROM (({shadow}) EXCEPT ({mapped})) b)"), &[])
            .await?
            .get(0);
        ensure!(differ == 0, "ledger and ledger_v2 differ under the mapping in {differ} rows");

        let committed: Vec<i64> = lock(&self.committed).iter().copied().collect();
        let failed: Vec<i64> = lock(&self.failed).iter().copied().collect();
        let in_doubt: Vec<i64> = lock(&self.in_doubt).iter().copied().collect();
        for (table, note) in [("ledger", "note"), ("ledger_v2", "substr(label, 3)")] {
            let complete = format!("EXISTS (SELECT 1 FROM {table} WHERE id = 2 * t + 1 AND {note} = 'u' || t) AND (SELECT count(*) FROM {table} WHERE txn = t) = 1");
            let any = format!("EXISTS (SELECT 1 FROM {table} WHERE txn = t)");
            let lost: Vec<i64> =
                column(direct, &format!("SELECT t FROM unnest($1::bigint[]) t WHERE NOT ({complete})"), &committed)
                    .await?;
            ensure!(lost.is_empty(), "{table}: transactions seen committed but missing or partial: {lost:?}");
            let ghosts: Vec<i64> =
                column(direct, &format!("SELECT t FROM unnest($1::bigint[]) t WHERE {any}"), &failed).await?;
            ensure!(ghosts.is_empty(), "{table}: transactions seen failed but present: {ghosts:?}");
            let partial: Vec<i64> = column(
                direct,
                &format!("SELECT t FROM unnest($1::bigint[]) t WHERE {any} AND NOT ({complete})"),
                &in_doubt,
            )
            .await?;
            ensure!(partial.is_empty(), "{table}: transactions in doubt applied partially: {partial:?}");
        }
        let in_doubt_committed: Vec<i64> = column(
            direct,
            "SELECT t FROM unnest($1::bigint[]) t WHERE EXISTS (SELECT 1 FROM ledger WHERE txn = t)",
            &in_doubt,
        )
        .await?;
        Ok(LedgerReport {
            committed: committed.len(),
            failed: failed.len(),
            in_doubt: in_doubt.len(),
            in_doubt_committed: in_doubt_committed.len(),
        })
    }
}

/// BEGIN; insert 2t, 2t+1; update 2t+1; delete 2t; COMMIT.
async fn txn_statements(
    client: &Client,
    t: i64,
    extended: bool,
    commit_sent: &AtomicBool,
) -> Result<(), tokio_postgres::Error> {
    let (a, b) = (2 * t, 2 * t + 1);
    let result = async {
        client.batch_execute("BEGIN").await?;
        if extended {
            client
                .execute("INSERT INTO ledger (id, txn, note) VALUES ($1, $3, 'a'), ($2, $3, 'b')", &[&a, &b, &t])
                .await?;
            client.execute("UPDATE ledger SET note = 'u' || $2::bigint WHERE id = $1", &[&b, &t]).await?;
            client.execute("DELETE FROM ledger WHERE id = $1", &[&a]).await?;
        } else {
            client
                .batch_execute(&format!("INSERT INTO ledger (id, txn, note) VALUES ({a}, {t}, 'a'), ({b}, {t}, 'b')"))
                .await?;
            client.batch_execute(&format!("UPDATE ledger SET note = 'u{t}' WHERE id = {b}")).await?;
            client.batch_execute(&format!("DELETE FROM ledger WHERE id = {a}")).await?;
        }
        commit_sent.store(true, Ordering::Relaxed);
        client.batch_execute("COMMIT").await
    }
    .await;
    if result.is_err() && !client.is_closed() && !commit_sent.load(Ordering::Relaxed) {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// The SQLSTATE of `e`, or `closed` / `io` when no server error came with it.
fn error_kind(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(code) => code.code().to_owned(),
        None if e.is_closed() => "closed".to_owned(),
        None => "io".to_owned(),
    }
}

/// Class 08 (connection exception) and 57P0x (server shutting down / terminated): the session ended, so
/// an error on COMMIT says nothing about whether it committed.
fn is_connection_end(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P")
}

async fn column(direct: &Client, sql: &str, ids: &[i64]) -> anyhow::Result<Vec<i64>> {
    let rows = direct.query(sql, &[&ids]).await.with_context(|| sql.to_owned())?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writer tasks looping over ledger transactions, reconnecting whenever their connection breaks.
pub struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Writers {
    /// `count` writers against `url` (through the proxy); writer `i` uses the extended protocol when odd.
    pub fn start(ledger: &Arc<Ledger>, url: &str, count: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..count)
            .map(|i| {
                let (ledger, url, stop) = (Arc::clone(ledger), url.to_owned(), Arc::clone(&stop));
                tokio::spawn(async move { write_loop(&ledger, &url, i % 2 == 1, &stop).await })
            })
            .collect();
        Writers { stop, tasks }
    }

    /// Stops the writers after their current transaction and waits for them.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn write_loop(ledger: &Ledger, url: &str, extended: bool, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let (kind, example) = match tokio::time::timeout(Duration::from_secs(10), crate::connect(url)).await {
            Ok(Ok(client)) => {
                while !stop.load(Ordering::Relaxed) && !client.is_closed() {
                    if ledger.run_txn(&client, extended).await != Outcome::Committed {
                        // Refusals and broken sessions: back off a little instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                continue;
            }
            Ok(Err(e)) => {
                (e.downcast_ref::<tokio_postgres::Error>().map_or("io".to_owned(), error_kind), format!("{e:#}"))
            }
            Err(elapsed) => ("timeout".to_owned(), elapsed.to_string()),
        };
        ledger.record_error(format!("connect {kind}"), &example);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
