//! Verification: compares the old table, mapped forward, with the shadow. One pass of chunk checksums
//! (row count and xor of 64-bit hashes of each row's text, in the shadow's column types) over the whole key
//! range, all inside one REPEATABLE READ snapshot; chunks that differ are bisected down to small ranges and
//! compared row by row. Divergent keys (missing, extra, different) are recorded with samples in
//! `dualwrite.verify_runs` / `dualwrite.divergent_keys`; with repair, the shadow rows of those keys are
//! rewritten from the old table.

use futures::{pin_mut, TryStreamExt};
use sqlparser::ast::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel, Transaction};

use crate::pg_client::PgTarget;

use super::mapping::{CompiledMapping, TableMapping};
use super::sql::{Bounds, Side};
use super::{connect, is_retryable, notify_state, try_lock, unlock, JobKind, JobResult};

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub repair: bool,
    /// Old rows per top-level checksum chunk.
    pub chunk_rows: i64,
    /// Bisection stops once both sides of a chunk hold at most this many rows together.
    pub leaf_rows: i64,
    /// At most this many divergent keys are stored with samples (all are counted and repaired).
    pub max_recorded: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { repair: false, chunk_rows: 100_000, leaf_rows: 512, max_recorded: 10_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DivergenceKind {
    /// In the old table, not in the shadow.
    Missing,
    /// In the shadow, not in the old table.
    Extra,
    /// In both, with a shadow row that is not the old row mapped forward.
    Different,
}

impl DivergenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DivergenceKind::Missing => "missing",
            DivergenceKind::Extra => "extra",
            DivergenceKind::Different => "different",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "missing" => DivergenceKind::Missing,
            "extra" => DivergenceKind::Extra,
            _ => DivergenceKind::Different,
        }
    }
}

/// One divergent key; rows are jsonb text (the old row mapped into the shadow's columns).
#[derive(Debug, Clone, PartialEq)]
pub struct DivergentKey {
    pub kind: DivergenceKind,
    pub key: String,
    pub expected: Option<String>,
    pub actual: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReport {
    pub run_id: i64,
    /// Rows of the old table compared (exact, as of the snapshot).
    pub rows_checked: i64,
    /// Rows of the shadow table in the snapshot.
    pub shadow_rows: i64,
    pub missing: i64,
    pub extra: i64,
    pub different: i64,
    pub repaired: i64,
    /// The recorded divergent keys (at most `max_recorded`).
    pub divergent: Vec<DivergentKey>,
}

impl VerifyReport {
    pub fn divergent_rows(&self) -> i64 {
        self.missing + self.extra + self.different
    }

    pub fn clean(&self) -> bool {
        self.divergent_rows() == 0
    }
}

/// Progress callback: (old rows checked so far, estimated old rows in total).
pub type VerifyProgressFn<'a> = &'a (dyn Fn(i64, i64) + Send + Sync);

/// Verifies `mapping` and, with `options.repair`, repairs the shadow. Fails with `JobError::Busy` if
/// another verify of the migration runs.
pub async fn run_verify(
    config: &PgTarget,
    mapping: &TableMapping,
    options: &VerifyOptions,
    progress: VerifyProgressFn<'_>,
) -> JobResult<VerifyReport> {
    let mut client = connect(config).await?;
    try_lock(&client, JobKind::Verify, &mapping.migration).await?;
    client.batch_execute("SET application_name = 'dualwrite verify'").await?;
    let compiled = CompiledMapping::load(&client, mapping).await?;
    let name = mapping.migration.as_str();
    let run_id: i64 = client
        .query_one(
            "INSERT INTO dualwrite.verify_runs (migration, started_at) VALUES ($1, now()) RETURNING id",
            &[&name],
        )
        .await?
        .get(0);
    let estimate: i64 = client
        .query_one(
            "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::text::regclass",
            &[&compiled.old.to_string()],
        )
        .await?
        .get(0);

    let mut report = VerifyReport { run_id, ..VerifyReport::default() };
    let mut keys = Vec::new();
    {
        // Two connections in one exported snapshot: the old and shadow sides are summed in parallel.
        let mut shadow_target = config.clone();
        shadow_target.config_mut().application_name("dualwrite verify");
        let mut shadow_client = connect(&shadow_target).await?;
        let old_tx =
            client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let snapshot: String = old_tx.query_one("SELECT pg_export_snapshot()", &[]).await?.get(0);
        let shadow_tx = shadow_client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        shadow_tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", Value::SingleQuotedString(snapshot))).await?;
        let mut scan = Scan {
            old_tx: &old_tx,
            shadow_tx: &shadow_tx,
            compiled: &compiled,
            options,
            report: &mut report,
            keys: &mut keys,
        };
        scan.all_chunks(estimate, progress).await?;
        shadow_tx.commit().await?;
        old_tx.commit().await?;
    }
    if options.repair && !keys.is_empty() {
        report.repaired = repair(&mut client, &compiled, &keys).await?;
    }
    record(&client, &report).await?;
    notify_state(&client, name).await?;
    unlock(&client, JobKind::Verify, name).await?;
    tracing::info!(
        migration = name,
        rows = report.rows_checked,
        missing = report.missing,
        extra = report.extra,
        different = report.different,
        repaired = report.repaired,
        "verify finished"
    );
    Ok(report)
}

/// Row count and xor of row hashes of one side of a key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sum {
    count: i64,
    xor: i64,
}

impl Sum {
    fn minus(self, part: Sum) -> Sum {
        Sum { count: self.count - part.count, xor: self.xor ^ part.xor }
    }
}

/// A key range `(lower, upper]` (None = unbounded) with both sides' sums.
struct Chunk {
    lower: Option<String>,
    upper: Option<String>,
    old: Sum,
    shadow: Sum,
}

struct Scan<'a> {
    /// Reads the old side; boundaries and row comparisons run here too.
    old_tx: &'a Transaction<'a>,
    /// Reads the shadow side, in the same snapshot.
    shadow_tx: &'a Transaction<'a>,
    compiled: &'a CompiledMapping,
    options: &'a VerifyOptions,
    report: &'a mut VerifyReport,
    /// Every divergent key, for repair.
    keys: &'a mut Vec<String>,
}

fn params<'p>(lower: &'p Option<String>, upper: &'p Option<String>) -> (Bounds, Vec<&'p (dyn ToSql + Sync)>) {
    let mut values: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(lower) = lower {
        values.push(lower);
    }
    if let Some(upper) = upper {
        values.push(upper);
    }
    (Bounds { lower: lower.is_some(), upper: upper.is_some() }, values)
}

impl Scan<'_> {
    async fn all_chunks(&mut self, estimate: i64, progress: VerifyProgressFn<'_>) -> JobResult<()> {
        let mut lower: Option<String> = None;
        loop {
            let upper = self.boundary(Side::Old, &lower, self.options.chunk_rows.max(1) - 1).await?;
            let (old, shadow) = self.checksums(&lower, &upper).await?;
            self.report.rows_checked += old.count;
            self.report.shadow_rows += shadow.count;
            self.bisect(Chunk { lower, upper: upper.clone(), old, shadow }).await?;
            progress(self.report.rows_checked, estimate.max(self.report.rows_checked));
            match upper {
                Some(upper) => lower = Some(upper),
                None => return Ok(()),
            }
        }
    }

    async fn boundary(&self, side: Side, lower: &Option<String>, offset: i64) -> JobResult<Option<String>> {
        let sql = self.compiled.boundary(side, lower.is_some());
        let row = match lower {
            Some(lower) => self.tx(side).query_opt(&sql, &[&offset, lower]).await?,
            None => self.tx(side).query_opt(&sql, &[&offset]).await?,
        };
        Ok(row.map(|row| row.get(0)))
    }

    fn tx(&self, side: Side) -> &Transaction<'_> {
        match side {
            Side::Old => self.old_tx,
            Side::Shadow => self.shadow_tx,
        }
    }

    async fn checksum(&self, side: Side, lower: &Option<String>, upper: &Option<String>) -> JobResult<Sum> {
        let (bounds, values) = params(lower, upper);
        let row = self.tx(side).query_one(&self.compiled.checksum(side, bounds), &values).await?;
        Ok(Sum { count: row.get(0), xor: row.get(1) })
    }

    /// Both sides' sums of a range, computed concurrently.
    async fn checksums(&self, lower: &Option<String>, upper: &Option<String>) -> JobResult<(Sum, Sum)> {
        tokio::try_join!(self.checksum(Side::Old, lower, upper), self.checksum(Side::Shadow, lower, upper))
    }

    /// Narrows a differing chunk down to small ranges; checksums only the first half of each split, the
    /// second half's sums follow from the parent's.
    async fn bisect(&mut self, chunk: Chunk) -> JobResult<()> {
        let mut pending = vec![chunk];
        while let Some(chunk) = pending.pop() {
            if chunk.old == chunk.shadow {
                continue;
            }
            let (old, shadow) = (chunk.old.count, chunk.shadow.count);
            if old == 0 || shadow == 0 || old + shadow <= self.options.leaf_rows.max(4) {
                self.leaf(&chunk.lower, &chunk.upper).await?;
                continue;
            }
            let (side, count) = if old >= shadow { (Side::Old, old) } else { (Side::Shadow, shadow) };
            let middle = self.boundary(side, &chunk.lower, count / 2 - 1).await?;
            let Some(middle) = middle else {
                // Cannot happen inside one snapshot; comparing the whole chunk row by row stays correct.
                self.leaf(&chunk.lower, &chunk.upper).await?;
                continue;
            };
            let (first_old, first_shadow) = self.checksums(&chunk.lower, &Some(middle.clone())).await?;
            pending.push(Chunk {
                lower: Some(middle.clone()),
                upper: chunk.upper,
                old: chunk.old.minus(first_old),
                shadow: chunk.shadow.minus(first_shadow),
            });
            pending.push(Chunk { lower: chunk.lower, upper: Some(middle), old: first_old, shadow: first_shadow });
        }
        Ok(())
    }

    /// Row-by-row comparison of a range, streamed so a fully missing shadow does not fill memory with
    /// samples.
    async fn leaf(&mut self, lower: &Option<String>, upper: &Option<String>) -> JobResult<()> {
        let (bounds, values) = params(lower, upper);
        let rows = self.old_tx.query_raw(&self.compiled.leaf_diff(bounds), values).await?;
        pin_mut!(rows);
        while let Some(row) = rows.try_next().await? {
            let kind = DivergenceKind::parse(row.get(0));
            let key: String = row.get(1);
            match kind {
                DivergenceKind::Missing => self.report.missing += 1,
                DivergenceKind::Extra => self.report.extra += 1,
                DivergenceKind::Different => self.report.different += 1,
            }
            if self.report.divergent.len() < self.options.max_recorded {
                self.report.divergent.push(DivergentKey {
                    kind,
                    key: key.clone(),
                    expected: row.get(2),
                    actual: row.get(3),
                });
            }
            self.keys.push(key);
        }
        Ok(())
    }
}

const REPAIR_BATCH: usize = 1_000;
const REPAIR_ATTEMPTS: usize = 20;

/// Rewrites the shadow rows of `keys` from the old table, in batches, each under REPEATABLE READ and
/// retried on a serialization failure (a concurrent dual write touched one of its rows). The
/// change-data-capture watch repairs bypassed keys with it too (with a reversed mapping in cutover).
pub(crate) async fn repair(client: &mut Client, compiled: &CompiledMapping, keys: &[String]) -> JobResult<i64> {
    let statement = client.prepare(&compiled.repair()).await?;
    let mut repaired = 0;
    for batch in keys.chunks(REPAIR_BATCH) {
        let values: Vec<serde_json::Value> = batch.iter().filter_map(|key| serde_json::from_str(key).ok()).collect();
        let array = serde_json::Value::Array(values).to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).start().await?;
                tx.batch_execute(crate::cdc::mark::REPAIR).await?;
                let row = tx.query_one(&statement, &[&array]).await?;
                tx.commit().await?;
                Ok::<i64, tokio_postgres::Error>(row.get::<_, i64>(0) + row.get::<_, i64>(1))
            }
            .await;
            match result {
                Ok(count) => {
                    repaired += count;
                    break;
                }
                Err(error) if attempt < REPAIR_ATTEMPTS && is_retryable(&error) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt as u64)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(repaired)
}

/// Stores the run's figures and its recorded divergent keys.
async fn record(client: &Client, report: &VerifyReport) -> JobResult<()> {
    client
        .execute(
            "UPDATE dualwrite.verify_runs SET finished_at = now(), rows_checked = $2, missing = $3, extra = $4, \
                 different = $5, repaired = $6, clean = $7 WHERE id = $1",
            &[
                &report.run_id,
                &report.rows_checked,
                &report.missing,
                &report.extra,
                &report.different,
                &report.repaired,
                &report.clean(),
            ],
        )
        .await?;
    if report.divergent.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = report.divergent.iter().map(|d| d.kind.as_str()).collect();
    let keys: Vec<&str> = report.divergent.iter().map(|d| d.key.as_str()).collect();
    let expected: Vec<Option<&str>> = report.divergent.iter().map(|d| d.expected.as_deref()).collect();
    let actual: Vec<Option<&str>> = report.divergent.iter().map(|d| d.actual.as_deref()).collect();
    client
        .execute(
            "INSERT INTO dualwrite.divergent_keys (run_id, migration, kind, key, sample) \
             SELECT $1, r.migration, d.kind, d.key::jsonb, \
                    jsonb_build_object('expected', d.expected::jsonb, 'actual', d.actual::jsonb) \
             FROM dualwrite.verify_runs r, \
                  unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS d(kind, key, expected, actual) \
             WHERE r.id = $1",
            &[&report.run_id, &kinds, &keys, &expected, &actual],
        )
        .await?;
    Ok(())
}
