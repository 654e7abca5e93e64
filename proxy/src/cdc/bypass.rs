//! What the watch does with candidate bypasses: confirms them against the tables, records the real ones in
//! `dualwrite.cdc_bypasses`, counts and logs them (migration, key, transaction id; never row values), and
//! with `on_bypass = "repair"` rewrites those keys from the phase's source of truth.
//!
//! Confirmation: a change without its twin is a bypass when its key now differs between the tables (old
//! row mapped forward vs shadow row, the verify's comparison restricted to those keys). A change that left
//! the tables equal is not: a dual-write DELETE of a row the backfill had not copied yet deletes nothing
//! on the shadow, and an UPDATE of a column no shadow column reads leaves the shadow row as it was. A
//! one-sided TRUNCATE has no key and is always a bypass (repaired by a verify, not here).
//!
//! A merge's old row is its sources FULL JOINed on the key, mapped forward, as the merge's verify reads
//! it. Two of its candidates are judged differently. A DELETE of a source row whose key the shadow lacks
//! is no bypass even when another source holds the key: the proxy's own DELETE would not have changed the
//! shadow either (before the backfill copied the key), so the row missing is the backfill's to copy. And
//! a TRUNCATE of a source, which the proxy follows with a row-level sync rather than a TRUNCATE of the
//! shadow, is a bypass only when the shadow still shows that source's data for a key the source lacks: the
//! sync did not run.
//!
//! The confirmation does not depend on the phase: it asks whether the tables differ at the key, which is
//! the same question whichever side is the source of truth. In `cutover` a direct write of a merge's source
//! leaves that source apart from the shadow, and a direct write of the shadow leaves it apart from the
//! sources' join; the exceptions above hold there too (the proxy's own DELETE of a source finds no shadow
//! row to change in either phase, and its TRUNCATE of a source is followed by the same sync).
//!
//! Repair reuses the verify's repair (same statement, same REPEATABLE READ retries and phase check, same
//! `repair` mark): in `dual_write` the old table is the source of truth and the shadow is written through
//! the forward mapping (for a merge: rebuilt from the sources joined); in `cutover` the shadow is, and the
//! old table is written through the backward one (for a merge: each source's rows of the key rebuilt from
//! the shadow row, `jobs::sql::merge_repair`, as the proxy's mirrored writes do). So in `cutover` a bypass
//! of the shadow stands and the sources follow it, and a bypass of a source is undone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dualwrite_rules::{Migration, OnBypass, Phase};
use tokio_postgres::Client;

use crate::jobs::mapping::{CompiledMapping, QualifiedName};
use crate::jobs::verify::repair;
use crate::jobs::{source_of_truth_now, JobError, JobResult, TableMapping};

use super::decoder::Lsn;
use super::pairing::{Candidate, Side};
use super::status;
use super::transaction::Op;

/// One migration the watch pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedMigration {
    pub name: String,
    /// The phase when the watch read it (a change of it restarts the stream; a repair reads the phase
    /// stored at the time instead, see `repair_keys`).
    pub phase: Phase,
    pub on_bypass: OnBypass,
    pub key: Vec<String>,
    /// Both mappings (the verify compares old rows mapped forward with shadow rows; a repair in `cutover`
    /// writes the old table through the backward mapping).
    pub mapping: TableMapping,
}

impl WatchedMigration {
    pub fn new(migration: &Migration, phase: Phase) -> WatchedMigration {
        WatchedMigration {
            name: migration.name.clone(),
            phase,
            on_bypass: migration.on_bypass,
            key: migration.key.clone(),
            mapping: TableMapping::from(migration),
        }
    }

    /// True if several old tables are merged into the shadow.
    pub fn is_merge(&self) -> bool {
        !self.mapping.sources.is_empty()
    }

    /// The old tables, in the order of `PairedTables::old`: the one old table, or a merge's sources.
    pub fn old_tables(&self) -> Vec<&QualifiedName> {
        if self.is_merge() {
            self.mapping.sources.iter().map(|(table, _, _)| table).collect()
        } else {
            vec![&self.mapping.old]
        }
    }

    /// The shadow tables, in the order of `PairedTables::shadows`.
    pub fn shadow_tables(&self) -> Vec<&QualifiedName> {
        self.mapping.targets.iter().map(|(table, _)| table).collect()
    }

    /// The name of the table a candidate hit, for the log.
    fn table_name(&self, candidate: &Candidate) -> String {
        let tables = match candidate.side {
            Side::Old => self.old_tables(),
            Side::Shadow => self.shadow_tables(),
        };
        tables.get(candidate.table).map(|t| t.object_name().to_string()).unwrap_or_default()
    }
}

/// A candidate with the transaction it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub candidate: Candidate,
    pub xid: u32,
    pub commit_lsn: Lsn,
    /// Seconds since the Unix epoch.
    pub committed_at: f64,
}

/// A confirmed bypass, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Bypass {
    pub migration: String,
    pub kind: &'static str,
    pub side: &'static str,
    /// The table the change hit (a merge's source, a split's target), for the log.
    pub table: String,
    /// Canonical jsonb text of the key (`None` for a TRUNCATE).
    pub key: Option<String>,
    pub xid: u32,
    /// False when a restarted watch re-read a bypass it had already recorded.
    pub new: bool,
}

/// Compiled mappings, kept while the rules do not change them.
#[derive(Default)]
pub struct MappingCache {
    compiled: HashMap<String, (TableMapping, Arc<CompiledMapping>)>,
}

impl MappingCache {
    async fn get(&mut self, client: &Client, mapping: &TableMapping) -> JobResult<Arc<CompiledMapping>> {
        let slot = mapping.migration.clone();
        if let Some((cached, compiled)) = self.compiled.get(&slot) {
            if cached == mapping {
                return Ok(Arc::clone(compiled));
            }
        }
        let compiled = Arc::new(CompiledMapping::load(client, mapping).await?);
        self.compiled.insert(slot, (mapping.clone(), Arc::clone(&compiled)));
        Ok(compiled)
    }
}

/// The key object `{"col": "text", ...}` of a candidate (values in text form, as pgoutput sends them).
fn key_object(columns: &[String], values: &[String]) -> serde_json::Value {
    serde_json::Value::Object(
        columns.iter().cloned().zip(values.iter().map(|v| serde_json::Value::String(v.clone()))).collect(),
    )
}

/// What became of one batch of candidates.
#[derive(Debug, Default)]
pub struct Handled {
    pub found: Vec<Bypass>,
    /// Candidates to confirm again later (see [`handle`]).
    pub deferred: Vec<Seen>,
}

/// Confirms, records and (if the rules say so) repairs the candidates of one batch of transactions.
///
/// With `defer`, a DELETE on the old table that left the shadow row behind while the migration's backfill
/// runs is handed back instead: a backfill batch that read the row before the DELETE committed copies it
/// after, and the batch's sweep removes that copy once the transactions open at the batch's commit have
/// ended. Only if the row is still there after that is the DELETE a bypass.
pub async fn handle(
    client: &mut Client,
    migrations: &[WatchedMigration],
    cache: &mut MappingCache,
    seen: &[Seen],
    defer: bool,
) -> JobResult<Handled> {
    let mut handled = Handled::default();
    for (index, migration) in migrations.iter().enumerate() {
        let mine: Vec<&Seen> = seen.iter().filter(|s| s.candidate.migration == index).collect();
        if mine.is_empty() {
            continue;
        }
        let compiled = cache.get(client, &migration.mapping).await?;
        let objects: Vec<serde_json::Value> =
            mine.iter().filter_map(|s| s.candidate.key.as_ref()).map(|k| key_object(&migration.key, k)).collect();
        let canonical = canonical_keys(client, &compiled, &objects).await?;
        let divergent = divergence(client, &compiled, &canonical).await?;
        let backfilling = defer && backfill_running(client, &migration.name).await?;
        let mut canonical = canonical.into_iter();
        let mut to_repair = Vec::new();
        for s in mine {
            let key = match &s.candidate.key {
                Some(_) => match canonical.next() {
                    Some(key) if divergent.get(&key).is_some_and(|kind| confirms(&compiled, &s.candidate, kind)) => {
                        Some(key)
                    }
                    _ => continue,
                },
                None if compiled.is_merge() && s.candidate.side == Side::Old => {
                    if !source_left_behind(client, &compiled, s.candidate.table).await? {
                        continue;
                    }
                    None
                }
                None => None,
            };
            if backfilling && s.candidate.side == Side::Old && s.candidate.op == Op::Delete {
                handled.deferred.push(s.clone());
                continue;
            }
            let id = record(client, migration, s, key.as_deref()).await?;
            // Counted as it is recorded, once: a batch that fails after this (its repair) is read again by
            // the next leader, which finds the bypass recorded already.
            if id.is_some() {
                status::count_bypass(&migration.name, s.candidate.op.as_str());
            }
            let bypass = Bypass {
                migration: migration.name.clone(),
                kind: s.candidate.op.as_str(),
                side: s.candidate.side.as_str(),
                table: migration.table_name(&s.candidate),
                key: key.clone(),
                xid: s.xid,
                new: id.is_some(),
            };
            tracing::warn!(
                migration = %bypass.migration,
                key = bypass.key.as_deref().unwrap_or("(whole table)"),
                xid = bypass.xid,
                side = bypass.side,
                table = %bypass.table,
                kind = bypass.kind,
                "a write reached one table of the migration without its twin (bypassed the proxy)"
            );
            to_repair.extend(key);
            handled.found.push(bypass);
        }
        if migration.on_bypass == OnBypass::Repair && !to_repair.is_empty() {
            repair_keys(client, cache, migration, &to_repair).await?;
        }
    }
    Ok(handled)
}

async fn backfill_running(client: &Client, migration: &str) -> JobResult<bool> {
    let row = client
        .query_opt("SELECT state = 'running' FROM dualwrite.backfill WHERE migration = $1", &[&migration])
        .await?;
    Ok(row.is_some_and(|row| row.get(0)))
}

async fn canonical_keys(
    client: &Client,
    compiled: &CompiledMapping,
    objects: &[serde_json::Value],
) -> JobResult<Vec<String>> {
    if objects.is_empty() {
        return Ok(Vec::new());
    }
    let array = serde_json::Value::Array(objects.to_vec()).to_string();
    let rows = client.query(&compiled.canonical_keys(), &[&array]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Which of `keys` (canonical jsonb text) differ between the tables now.
pub async fn divergent_keys(
    client: &Client,
    compiled: &CompiledMapping,
    keys: &[String],
) -> JobResult<HashSet<String>> {
    Ok(divergence(client, compiled, keys).await?.into_keys().collect())
}

/// The keys of `keys` that differ between the tables now, with how the verify names the difference
/// (`missing`: only the old side holds the key; `extra`: only the shadow; `different`).
async fn divergence(
    client: &Client,
    compiled: &CompiledMapping,
    keys: &[String],
) -> JobResult<HashMap<String, String>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let array = format!("[{}]", keys.iter().collect::<HashSet<_>>().into_iter().cloned().collect::<Vec<_>>().join(","));
    let rows = client.query(&compiled.keys_diff(), &[&array]).await?;
    Ok(rows.iter().map(|row| (row.get::<_, String>(1), row.get::<_, String>(0))).collect())
}

/// Whether a keyed candidate whose key differs (as `kind`) is a bypass. A merge source's DELETE that left
/// the shadow without the key is not: the proxy's own DELETE would not have written the shadow either, in
/// `dual_write` (before the backfill copied the key) as in `cutover` (where the key differed already).
fn confirms(compiled: &CompiledMapping, candidate: &Candidate, kind: &str) -> bool {
    !(compiled.is_merge() && candidate.side == Side::Old && candidate.op == Op::Delete && kind == "missing")
}

/// Whether, after a TRUNCATE of merge source `source`, the shadow still shows that source's data for a key
/// it lacks: the proxy's sync did not run. One anti-join over the shadow (a TRUNCATE is rare, and the
/// proxy's own sync scans the shadow as well). Asked when the candidate is confirmed, so a later bypass
/// that leaves the shadow showing this source's columns (a direct write of them into the shadow) makes the
/// proxy's own TRUNCATE look like one too; a later change of another source does not.
async fn source_left_behind(client: &Client, compiled: &CompiledMapping, source: usize) -> JobResult<bool> {
    Ok(client.query_one(&compiled.merge_source_left_behind(source), &[]).await?.get(0))
}

/// Stores one bypass; `None` if a restarted watch had already stored it.
async fn record(
    client: &Client,
    migration: &WatchedMigration,
    seen: &Seen,
    key: Option<&str>,
) -> JobResult<Option<i64>> {
    let row = client
        .query_opt(
            "INSERT INTO dualwrite.cdc_bypasses (migration, kind, side, key, xid, commit_lsn, committed_at) \
             VALUES ($1, $2, $3, $4::text::jsonb, $5, $6::text::pg_lsn, to_timestamp($7)) \
             ON CONFLICT DO NOTHING RETURNING id",
            &[
                &migration.name,
                &seen.candidate.op.as_str(),
                &seen.candidate.side.as_str(),
                &key,
                &i64::from(seen.xid),
                &seen.commit_lsn.to_string(),
                &seen.committed_at,
            ],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

async fn repair_keys(
    client: &mut Client,
    cache: &mut MappingCache,
    migration: &WatchedMigration,
    keys: &[String],
) -> JobResult<()> {
    // The direction is the phase's as stored now rather than as the watch last read it: after a phase
    // change the watch pairs on until it is settled, and a repair in the old direction would be refused
    // (`repair` re-checks the phase under a lock), failing the batch.
    let source = match source_of_truth_now(client, &migration.name, false).await? {
        Ok(source) => source,
        Err(reason) => return Err(JobError::Phase { migration: migration.name.clone(), reason }),
    };
    let compiled = cache.get(client, &migration.mapping).await?;
    let distinct: Vec<String> = keys.iter().cloned().collect::<HashSet<_>>().into_iter().collect();
    let mut rows = 0;
    repair(client, &compiled, source, &distinct, &mut rows).await?;
    client
        .execute(
            "UPDATE dualwrite.cdc_bypasses SET repaired_at = now(), resolved_at = now() \
             WHERE migration = $1 AND resolved_at IS NULL AND key::text = ANY($2)",
            &[&migration.name, &distinct],
        )
        .await?;
    tracing::info!(migration = %migration.name, keys = distinct.len(), rows, "bypassed keys repaired");
    Ok(())
}

/// Marks as resolved the recorded bypasses whose key no longer differs (someone repaired it, or a later
/// write made the tables agree again), and one-sided TRUNCATEs followed by a clean verify; what stays
/// open is what `dualwrite_lag_seconds` reports.
pub async fn resolve(client: &Client, cache: &mut MappingCache, migrations: &[WatchedMigration]) -> JobResult<()> {
    client
        .execute(
            "UPDATE dualwrite.cdc_bypasses b SET resolved_at = now() \
             WHERE b.key IS NULL AND b.resolved_at IS NULL AND EXISTS (SELECT 1 FROM dualwrite.verify_runs v \
                   WHERE v.migration = b.migration AND v.clean AND v.started_at > b.committed_at)",
            &[],
        )
        .await?;
    for migration in migrations {
        let rows = client
            .query(
                "SELECT DISTINCT key::text FROM dualwrite.cdc_bypasses \
                 WHERE migration = $1 AND resolved_at IS NULL AND key IS NOT NULL LIMIT 1000",
                &[&migration.name],
            )
            .await?;
        if rows.is_empty() {
            continue;
        }
        let compiled = cache.get(client, &migration.mapping).await?;
        let open: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        let divergent = divergent_keys(client, &compiled, &open).await?;
        let settled: Vec<&String> = open.iter().filter(|k| !divergent.contains(*k)).collect();
        if !settled.is_empty() {
            let settled: Vec<&str> = settled.iter().map(|k| k.as_str()).collect();
            client
                .execute(
                    "UPDATE dualwrite.cdc_bypasses SET resolved_at = now() \
                     WHERE migration = $1 AND resolved_at IS NULL AND key::text = ANY($2)",
                    &[&migration.name, &settled],
                )
                .await?;
        }
    }
    Ok(())
}
