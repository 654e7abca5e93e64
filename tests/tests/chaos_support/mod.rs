//! The writers of the chaos soak: each owns the keys `id % writers == index` of `accounts`, runs random
//! transactions of INSERT / UPDATE / DELETE through whichever proxy instance answers, checks what it
//! reads against its ledger, and keeps that ledger exact through every fault: a transaction whose COMMIT
//! got no answer is settled by reading the table directly once its backend has ended (the writer's
//! advisory lock, taken first in every transaction, is free only then).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dualwrite_tests::ledger::{Ledger, Op};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// A row of the old table `accounts` (the shadow holds `balance_cents = balance * 100`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub owner: String,
    pub balance: i64,
    /// The transaction that wrote the row last (0: the rows that existed before the soak).
    pub txn: i64,
}

/// A transaction that has not answered for this long counts as hung (a finding, not a fault).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on settling one unknown outcome (the upstream may be restarting meanwhile).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(180);

pub struct WriterConfig {
    pub index: usize,
    pub writers: usize,
    /// Writes in the shadow's shape (`options=-c dualwrite.version=v2`).
    pub v2: bool,
    /// The database through each proxy instance; the writer moves to the next one when a connection fails.
    pub proxy_urls: Vec<String>,
    /// The database directly, for settling unknown outcomes.
    pub direct_url: String,
    pub seed: u64,
    pub until: Instant,
    /// First key above the pre-existing rows.
    pub first_new_key: i64,
}

pub struct WriterReport {
    pub index: usize,
    pub ledger: Ledger<Row>,
    /// Anything that must not happen: wrong reads, wrong row counts, unexpected errors, torn or hung
    /// transactions.
    pub violations: Vec<String>,
    pub connection_losses: u64,
    pub reads_checked: u64,
    pub last_commit: Option<Instant>,
}

enum Step {
    Insert(i64, Row),
    Update { key: i64, delta: i64, after: Row },
    Delete(i64),
}

struct Plan {
    txn: i64,
    steps: Vec<Step>,
    /// A key to read (and compare with the ledger) before writing.
    read: Option<i64>,
    /// Ends with an INSERT of an existing key: the server refuses it (23505) and nothing commits.
    duplicate: Option<i64>,
    rollback: bool,
}

impl Plan {
    fn ops(&self) -> Vec<Op<Row>> {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Insert(key, row) | Step::Update { key, after: row, .. } => Op::Put(*key, row.clone()),
                Step::Delete(key) => Op::Delete(*key),
            })
            .collect()
    }
}

enum Ended {
    Committed,
    RolledBack,
    /// The connection failed; whether COMMIT had been sent decides if the outcome is unknown.
    Broken {
        commit_sent: bool,
    },
    /// Wrong answer or unexpected error (the transaction did not commit: COMMIT was not sent).
    Violation(String),
}

pub async fn run_writer(config: WriterConfig, ledger: Ledger<Row>) -> WriterReport {
    let mut writer = Writer {
        rng: fastrand::Rng::with_seed(config.seed),
        next_key: first_key_of(config.first_new_key, config.index, config.writers),
        touched: BTreeSet::new(),
        report: WriterReport {
            index: config.index,
            ledger,
            violations: Vec::new(),
            connection_losses: 0,
            reads_checked: 0,
            last_commit: None,
        },
        config,
    };
    writer.run().await;
    writer.report
}

fn first_key_of(above: i64, index: usize, writers: usize) -> i64 {
    let (index, writers) = (index as i64, writers as i64);
    above + (index - above % writers).rem_euclid(writers)
}

struct Writer {
    config: WriterConfig,
    rng: fastrand::Rng,
    next_key: i64,
    /// Keys written through the proxy since the soak began: their shadow rows exist whatever the backfill
    /// has reached, so reads of them are right under any routing, and v2 sessions may update them.
    touched: BTreeSet<i64>,
    report: WriterReport,
}

impl Writer {
    fn lock_key(&self) -> i64 {
        0x5AFE_0000_0000 + self.config.index as i64
    }

    async fn run(&mut self) {
        let mut client: Option<Client> = None;
        let mut attempt = 0usize;
        let mut seq = 0i64;
        while Instant::now() < self.config.until {
            let c = match client.take().filter(|c| !c.is_closed()) {
                Some(c) => c,
                None => {
                    let url = &self.config.proxy_urls[attempt % self.config.proxy_urls.len()];
                    attempt += 1;
                    match dualwrite_tests::connect(url).await {
                        Ok(c) => c,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
            };
            seq += 1;
            let plan = self.plan((self.config.index as i64 + 1) * 1_000_000_000 + seq);
            let ended = match tokio::time::timeout(TRANSACTION_TIMEOUT, self.execute(&c, &plan)).await {
                Ok(ended) => ended,
                Err(_) => {
                    self.report.violations.push(format!("transaction {} hung for {TRANSACTION_TIMEOUT:?}", plan.txn));
                    Ended::Broken { commit_sent: true }
                }
            };
            match ended {
                Ended::Committed => {
                    self.committed(&plan);
                    client = Some(c);
                }
                Ended::RolledBack => {
                    self.report.ledger.rolled_back();
                    client = Some(c);
                }
                Ended::Violation(message) => {
                    self.report.violations.push(format!("transaction {}: {message}", plan.txn));
                    self.report.ledger.rolled_back();
                }
                Ended::Broken { commit_sent: false } => {
                    self.report.connection_losses += 1;
                    self.report.ledger.rolled_back();
                }
                Ended::Broken { commit_sent: true } => {
                    self.report.connection_losses += 1;
                    drop(c);
                    match self.resolve(&plan).await {
                        Ok(true) => self.mark_touched(&plan),
                        Ok(false) => {}
                        Err(message) => self.report.violations.push(message),
                    }
                }
            }
        }
    }

    fn committed(&mut self, plan: &Plan) {
        self.report.ledger.committed(&plan.ops());
        self.mark_touched(plan);
        self.report.last_commit = Some(Instant::now());
    }

    fn mark_touched(&mut self, plan: &Plan) {
        for step in &plan.steps {
            match step {
                Step::Insert(key, _) | Step::Update { key, .. } => self.touched.insert(*key),
                Step::Delete(key) => self.touched.remove(key),
            };
        }
    }

    /// 1-3 writes on distinct keys of this writer, in key order (fewer lock waits with the backfill).
    fn plan(&mut self, txn: i64) -> Plan {
        let mut steps: BTreeMap<i64, Step> = BTreeMap::new();
        for _ in 0..self.rng.usize(1..=3) {
            let existing = self.pick_existing(&steps);
            match (self.rng.u8(0..10), existing) {
                (0..=4, Some(key)) => {
                    let delta = self.rng.i64(1..=50) * if self.rng.bool() { 1 } else { -1 };
                    let before = self.report.ledger.get(key).expect("existing key").clone();
                    let after = Row { owner: before.owner, balance: before.balance + delta, txn };
                    steps.insert(key, Step::Update { key, delta, after });
                }
                (8..=9, Some(key)) => {
                    steps.insert(key, Step::Delete(key));
                }
                _ => {
                    let key = self.next_key;
                    self.next_key += self.config.writers as i64;
                    let row =
                        Row { owner: format!("w{}-{txn}", self.config.index), balance: self.rng.i64(0..1000), txn };
                    steps.insert(key, Step::Insert(key, row));
                }
            }
        }
        let read = self.pick_touched(&BTreeMap::new());
        let duplicate = if self.rng.u8(0..20) == 0 { self.pick_existing(&steps) } else { None };
        Plan { txn, steps: steps.into_values().collect(), read, duplicate, rollback: self.rng.u8(0..25) == 0 }
    }

    /// A key of this writer that has a row, not yet in `taken`; v2 writers only pick touched keys (an
    /// UPDATE in the shadow's shape finds no row the backfill has not copied yet).
    fn pick_existing(&mut self, taken: &BTreeMap<i64, Step>) -> Option<i64> {
        if self.config.v2 {
            return self.pick_touched(taken);
        }
        let rows = self.report.ledger.rows();
        if rows.is_empty() {
            return None;
        }
        let key = *rows.keys().nth(self.rng.usize(..rows.len()))?;
        (!taken.contains_key(&key)).then_some(key)
    }

    fn pick_touched(&mut self, taken: &BTreeMap<i64, Step>) -> Option<i64> {
        if self.touched.is_empty() {
            return None;
        }
        let key = *self.touched.iter().nth(self.rng.usize(..self.touched.len()))?;
        (!taken.contains_key(&key)).then_some(key)
    }

    async fn execute(&mut self, c: &Client, plan: &Plan) -> Ended {
        let v2 = self.config.v2;
        macro_rules! step {
            ($e:expr) => {
                match $e.await {
                    Ok(v) => v,
                    Err(e) => return failed(c, &e).await,
                }
            };
        }
        step!(c.batch_execute("BEGIN"));
        step!(c.execute("SELECT pg_advisory_xact_lock($1)", &[&self.lock_key()]));
        if let Some(key) = plan.read {
            let sql = if v2 {
                "SELECT balance_cents FROM accounts WHERE id = $1"
            } else {
                "SELECT balance FROM accounts WHERE id = $1"
            };
            let rows = step!(c.query(sql, &[&key]));
            let seen: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            let expected: Vec<i64> =
                self.report.ledger.get(key).map(|r| if v2 { r.balance * 100 } else { r.balance }).into_iter().collect();
            self.report.reads_checked += 1;
            if seen != expected {
                let _ = c.batch_execute("ROLLBACK").await;
                return Ended::Violation(format!("read of key {key} gave {seen:?}, the ledger says {expected:?}"));
            }
        }
        for s in &plan.steps {
            let (what, count) = match s {
                Step::Insert(key, row) => {
                    let (sql, balance) = if v2 {
                        (
                            "INSERT INTO accounts (id, owner, balance_cents, txn) VALUES ($1, $2, $3, $4)",
                            row.balance * 100,
                        )
                    } else {
                        ("INSERT INTO accounts (id, owner, balance, txn) VALUES ($1, $2, $3, $4)", row.balance)
                    };
                    ("insert", step!(c.execute(sql, &[key, &row.owner, &balance, &plan.txn])))
                }
                Step::Update { key, delta, .. } => {
                    let (sql, delta) = if v2 {
                        ("UPDATE accounts SET balance_cents = balance_cents + $1, txn = $2 WHERE id = $3", delta * 100)
                    } else {
                        ("UPDATE accounts SET balance = balance + $1, txn = $2 WHERE id = $3", *delta)
                    };
                    ("update", step!(c.execute(sql, &[&delta, &plan.txn, key])))
                }
                Step::Delete(key) => ("delete", step!(c.execute("DELETE FROM accounts WHERE id = $1", &[key]))),
            };
            if count != 1 {
                let _ = c.batch_execute("ROLLBACK").await;
                return Ended::Violation(format!("{what} of key {} affected {count} rows", s_key(s)));
            }
        }
        if let Some(key) = plan.duplicate {
            let column = if v2 { "balance_cents" } else { "balance" };
            let sql = format!("INSERT INTO accounts (id, owner, {column}, txn) VALUES ($1, 'dup', 0, $2)");
            match c.execute(&sql, &[&key, &plan.txn]).await {
                Ok(_) => return Ended::Violation(format!("duplicate insert of key {key} succeeded")),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return failed(c, &e).await,
            }
            step!(c.batch_execute("ROLLBACK"));
            return Ended::RolledBack;
        }
        if plan.rollback {
            step!(c.batch_execute("ROLLBACK"));
            return Ended::RolledBack;
        }
        match c.batch_execute("COMMIT").await {
            Ok(()) => Ended::Committed,
            // Even a server error here may come after the commit record (a fast shutdown's 57P01):
            // every failed COMMIT is settled by reading the table.
            Err(_) => Ended::Broken { commit_sent: true },
        }
    }

    /// Settles an unknown outcome: waits for the transaction's backend to end (the advisory lock), then
    /// reads the keys it touched directly from the upstream.
    async fn resolve(&mut self, plan: &Plan) -> Result<bool, String> {
        let keys: Vec<i64> = plan.steps.iter().map(s_key).collect();
        let started = Instant::now();
        let actual = loop {
            match read_settled(&self.config.direct_url, self.lock_key(), &keys).await {
                Ok(rows) => break rows,
                Err(e) if started.elapsed() > RESOLVE_TIMEOUT => {
                    return Err(format!("could not settle transaction {}: {e:#}", plan.txn));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        self.report.ledger.resolve(&plan.ops(), &actual)
    }
}

fn s_key(s: &Step) -> i64 {
    match s {
        Step::Insert(key, _) | Step::Update { key, .. } | Step::Delete(key) => *key,
    }
}

async fn read_settled(url: &str, lock_key: i64, keys: &[i64]) -> anyhow::Result<BTreeMap<i64, Row>> {
    let mut c = dualwrite_tests::connect(url).await?;
    let tx = c.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '60s'").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key]).await?;
    let rows = tx.query("SELECT id, owner, balance, txn FROM accounts WHERE id = ANY($1)", &[&keys]).await?;
    tx.commit().await?;
    Ok(rows.iter().map(|r| (r.get(0), Row { owner: r.get(1), balance: r.get(2), txn: r.get(3) })).collect())
}

/// A statement before COMMIT failed: connection faults, the server's own rollbacks (deadlock with the
/// backfill, serialization) and the proxy's refusal of a v2 write before the backfill has finished end the
/// attempt; anything else is a violation.
async fn failed(c: &Client, e: &tokio_postgres::Error) -> Ended {
    if c.is_closed() || is_connection_fault(e) {
        return Ended::Broken { commit_sent: false };
    }
    let backfill_pending = e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED)
        && e.as_db_error().is_some_and(|db| db.message().contains("backfill has not finished"));
    let benign = backfill_pending
        || matches!(e.code(), Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE);
    let _ = c.batch_execute("ROLLBACK").await;
    if benign {
        Ended::RolledBack
    } else {
        Ended::Violation(format!("unexpected error: {e}"))
    }
}

/// Lost connections and the server going away: no SQLSTATE, class 08, or 57P0x (admin shutdown, crash,
/// cannot connect now).
fn is_connection_fault(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => code.code().starts_with("08") || code.code().starts_with("57P"),
    }
}

/// The partition of the pre-existing rows that writer `index` of `writers` owns.
pub fn partition(rows: &BTreeMap<i64, Row>, index: usize, writers: usize) -> Ledger<Row> {
    Ledger::new(rows.iter().filter(|(k, _)| k.rem_euclid(writers as i64) == index as i64).map(|(k, v)| (*k, v.clone())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_new_key_is_in_the_writers_partition() {
        for writers in 1..5 {
            for index in 0..writers {
                let key = super::first_key_of(20_001, index, writers);
                assert!(key >= 20_001 && key < 20_001 + writers as i64);
                assert_eq!(key.rem_euclid(writers as i64), index as i64);
            }
        }
    }
}
