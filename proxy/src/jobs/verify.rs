//! Verification: compares the old table, mapped forward, with the shadow. One pass of chunk checksums
//! (row count and xor of 64-bit hashes of each row's text, in the shadow's column types) over the whole key
//! range, all inside one REPEATABLE READ snapshot; chunks that differ are bisected down to small ranges and
//! compared row by row. Divergent keys are recorded with samples in `dualwrite.verify_runs` /
//! `dualwrite.divergent_keys`.
//!
//! The phase decides the direction (`state::phase::source_of_truth`): before cutover the old table is the
//! source of truth, from cutover on the shadow. Missing / extra / different are counted relative to it
//! (missing = the source has the key, the other table does not), and a repair rewrites the other table:
//! the shadow from the old table through the forward mapping, or the old table from the shadow through the
//! backward mapping. The rows are compared in the shadow's shape in both directions, because that is the
//! relation dual writes keep (a v1 write stores `shadow = forward(old)`, a v2 write `old = backward(shadow)`,
//! whose forward image is the shadow row when the mapping round-trips, as `dualwrite check` tests); comparing
//! in the old shape would flag every v1 write whose forward mapping drops information (e.g. `lower(email)`).
//! Each repair batch re-reads the phase under a share lock on the migration's state row, so a phase change
//! cannot slip between the check and the write; if it changed since the scan, the repair stops.

use futures::{pin_mut, TryStreamExt};
use sqlparser::ast::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, IsolationLevel, Transaction};

use crate::pg_client::PgTarget;
use crate::state::phase::SourceOfTruth;

use super::mapping::{CompiledMapping, TableMapping};
use super::sql::{Bounds, Side};
use super::{connect, is_retryable, notify_state, source_of_truth_now, try_lock, unlock, JobError, JobKind, JobResult};

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub repair: bool,
    /// Old rows per top-level checksum chunk.
    pub chunk_rows: i64,
    /// Bisection stops once both sides of a chunk hold at most this many rows together.
    pub leaf_rows: i64,
    /// At most this many divergent keys are stored with samples (all are counted and repaired).
    pub max_recorded: usize,
    /// Refuse to run (`JobError::Phase`) unless the phase makes this table the source of truth: a repair
    /// that must rewrite only the other one (the backfill's of the rows a forced re-entry kept) says so.
    pub required_source: Option<SourceOfTruth>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            repair: false,
            chunk_rows: 100_000,
            leaf_rows: 512,
            max_recorded: 10_000,
            required_source: None,
        }
    }
}

/// A divergent key, relative to the source of truth of the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DivergenceKind {
    /// In the source of truth, not in the other table.
    Missing,
    /// In the other table, not in the source of truth.
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

    /// A kind as the row comparison reports it (missing = in the old table only) for `source`.
    fn parse(text: &str, source: SourceOfTruth) -> Self {
        match (text, source) {
            ("missing", SourceOfTruth::Old) | ("extra", SourceOfTruth::Shadow) => DivergenceKind::Missing,
            ("extra", SourceOfTruth::Old) | ("missing", SourceOfTruth::Shadow) => DivergenceKind::Extra,
            _ => DivergenceKind::Different,
        }
    }
}

/// One divergent key; rows are jsonb text in the shadow's columns (the old row mapped forward): `expected`
/// is the source of truth's row, `actual` the other table's.
#[derive(Debug, Clone, PartialEq)]
pub struct DivergentKey {
    pub kind: DivergenceKind,
    pub key: String,
    pub expected: Option<String>,
    pub actual: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    pub run_id: i64,
    /// The table divergences are counted against (and that a repair leaves alone).
    pub source: SourceOfTruth,
    /// Rows of the source of truth compared (exact, as of the snapshot).
    pub rows_checked: i64,
    /// Rows of the other table in the snapshot.
    pub target_rows: i64,
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

/// Verifies `mapping` in the direction of the migration's phase and, with `options.repair`, repairs the
/// table that is behind. Fails with `JobError::Busy` if another verify of the migration runs, and with
/// `JobError::Phase` at `complete`.
pub async fn run_verify(
    config: &PgTarget,
    mapping: &TableMapping,
    options: &VerifyOptions,
    progress: VerifyProgressFn<'_>,
) -> JobResult<VerifyReport> {
    let mut client = connect(config).await?;
    try_lock(&client, JobKind::Verify, &mapping.migration).await?;
    let report = verify_locked(config, &mut client, mapping, options, progress).await;
    // Released on failure too (a refusal at `complete`, a lost connection's error): left to the
    // connection's close, the lock outlives this call until the server notices, and a verify started right
    // after would find it busy.
    let unlocked = unlock(&client, JobKind::Verify, &mapping.migration).await;
    let report = report?;
    unlocked?;
    Ok(report)
}

/// `run_verify`'s work, on a client that holds the migration's verify lock.
async fn verify_locked(
    config: &PgTarget,
    client: &mut Client,
    mapping: &TableMapping,
    options: &VerifyOptions,
    progress: VerifyProgressFn<'_>,
) -> JobResult<VerifyReport> {
    client.batch_execute("SET application_name = 'dualwrite verify'").await?;
    let name = mapping.migration.as_str();
    let source = source_in(&*client, name, false).await?;
    if options.required_source.is_some_and(|required| required != source) {
        let reason = format!("the {} table is now the source of truth: nothing was verified", source.as_str());
        return Err(JobError::Phase { migration: name.to_string(), reason });
    }
    let compiled = CompiledMapping::load(&*client, mapping).await?;
    let run_id: i64 = client
        .query_one(
            "INSERT INTO dualwrite.verify_runs (migration, started_at, source) VALUES ($1, now(), $2) RETURNING id",
            &[&name, &source.as_str()],
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

    let mut report = VerifyReport {
        run_id,
        source,
        rows_checked: 0,
        target_rows: 0,
        missing: 0,
        extra: 0,
        different: 0,
        repaired: 0,
        divergent: Vec::new(),
    };
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
            old_rows: 0,
            shadow_rows: 0,
        };
        scan.all_chunks(estimate, progress).await?;
        let (old_rows, shadow_rows) = (scan.old_rows, scan.shadow_rows);
        (report.rows_checked, report.target_rows) = match source {
            SourceOfTruth::Old => (old_rows, shadow_rows),
            SourceOfTruth::Shadow => (shadow_rows, old_rows),
        };
        shadow_tx.commit().await?;
        old_tx.commit().await?;
    }
    if options.repair && !keys.is_empty() {
        if let Err(error) = repair(client, &compiled, source, &keys, &mut report.repaired).await {
            // The scan's findings stand: record them (and what was repaired) so the run is not left open.
            record(&*client, &report).await?;
            notify_state(&*client, name).await?;
            return Err(error);
        }
    }
    record(&*client, &report).await?;
    notify_state(&*client, name).await?;
    tracing::info!(
        migration = name,
        source = source.as_str(),
        rows = report.rows_checked,
        missing = report.missing,
        extra = report.extra,
        different = report.different,
        repaired = report.repaired,
        "verify finished"
    );
    Ok(report)
}

/// `source_of_truth_now` with its refusal as `JobError::Phase`.
async fn source_in(client: &impl GenericClient, name: &str, lock: bool) -> JobResult<SourceOfTruth> {
    source_of_truth_now(client, name, lock)
        .await?
        .map_err(|reason| JobError::Phase { migration: name.to_string(), reason })
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
    old_rows: i64,
    shadow_rows: i64,
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
            self.old_rows += old.count;
            self.shadow_rows += shadow.count;
            self.bisect(Chunk { lower, upper: upper.clone(), old, shadow }).await?;
            progress(self.old_rows, estimate.max(self.old_rows));
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
        let source = self.report.source;
        while let Some(row) = rows.try_next().await? {
            let kind = DivergenceKind::parse(row.get(0), source);
            let key: String = row.get(1);
            match kind {
                DivergenceKind::Missing => self.report.missing += 1,
                DivergenceKind::Extra => self.report.extra += 1,
                DivergenceKind::Different => self.report.different += 1,
            }
            if self.report.divergent.len() < self.options.max_recorded {
                let (old, shadow): (Option<String>, Option<String>) = (row.get(2), row.get(3));
                let (expected, actual) = match source {
                    SourceOfTruth::Old => (old, shadow),
                    SourceOfTruth::Shadow => (shadow, old),
                };
                self.report.divergent.push(DivergentKey { kind, key: key.clone(), expected, actual });
            }
            self.keys.push(key);
        }
        Ok(())
    }
}

const REPAIR_BATCH: usize = 1_000;
const REPAIR_ATTEMPTS: usize = 20;

/// Rewrites the rows of `keys` in the table that is not `source` from the source, in batches, each under
/// REPEATABLE READ and retried on a serialization failure (a concurrent dual write touched one of its
/// rows). Each batch first checks, under a share lock on the migration's state row, that the phase still
/// has `source` as its source of truth; if not, the repair stops with `JobError::Phase`. Rows repaired
/// are added to `repaired` batch by batch, so a repair that stops still says what it did. The
/// change-data-capture watch repairs bypassed keys with it too.
pub(crate) async fn repair(
    client: &mut Client,
    compiled: &CompiledMapping,
    source: SourceOfTruth,
    keys: &[String],
    repaired: &mut i64,
) -> JobResult<()> {
    let behind = match source {
        SourceOfTruth::Old => Side::Shadow,
        SourceOfTruth::Shadow => Side::Old,
    };
    let statement = client.prepare(&compiled.repair(behind)).await?;
    let name = compiled.migration.as_str();
    for batch in keys.chunks(REPAIR_BATCH) {
        let values: Vec<serde_json::Value> = batch.iter().filter_map(|key| serde_json::from_str(key).ok()).collect();
        let array = serde_json::Value::Array(values).to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).start().await?;
                let now = source_in(&tx, name, true).await?;
                if now != source {
                    return Err(JobError::Phase {
                        migration: name.to_string(),
                        reason: format!(
                            "the source of truth changed from the {} table to the {} table during the verify; \
                             nothing more was repaired, run VERIFY again",
                            source.as_str(),
                            now.as_str()
                        ),
                    });
                }
                tx.batch_execute(crate::jobs::mark::REPAIR).await?;
                let row = tx.query_one(&statement, &[&array]).await?;
                tx.commit().await?;
                Ok::<i64, JobError>(row.get::<_, i64>(0) + row.get::<_, i64>(1))
            }
            .await;
            match result {
                Ok(count) => {
                    *repaired += count;
                    break;
                }
                Err(JobError::Db(error)) if attempt < REPAIR_ATTEMPTS && is_retryable(&error) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt as u64)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
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
