//! Per-migration metrics that come from the `dualwrite` state tables (backfill progress, rate, ETA, the
//! shadow's lag behind the old table as the change-data-capture watch stored it, verify results, table
//! inventory). Every proxy instance refreshes them periodically
//! from the database, so whichever instance Prometheus scrapes reports the same figures, whoever runs the
//! jobs. Gathering (I/O) and publishing (the `metrics` facade) are separate so tests can publish into a
//! local recorder.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::{describe_gauge, gauge};
use tokio_postgres::Client;

use crate::pg_client::PgTarget;
use crate::state::phase::Phase;

use super::mapping::{QualifiedName, TableMapping};
use super::{connect, JobResult};

/// The figures of one migration at one refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationFigures {
    pub migration: String,
    /// The phase in the state table (None before the migration's state row exists).
    pub phase: Option<Phase>,
    pub rows_done: f64,
    pub rows_remaining: f64,
    pub progress_ratio: f64,
    pub rows_per_second: f64,
    /// Estimated seconds until the backfill is done: 0 when done, +Inf while nothing moves.
    pub eta_seconds: f64,
    /// How far the shadow trails the old table, from the change-data-capture watch (NaN while no watch
    /// runs): see `lag_seconds`.
    pub lag_seconds: f64,
    /// +Inf before the first clean verify.
    pub seconds_since_clean_verify: f64,
    /// (missing, extra, different) found by the last finished verify, if any.
    pub divergent: Option<(f64, f64, f64)>,
    pub old_rows: f64,
    pub shadow_rows: f64,
}

/// Registers the help text of the migration gauges with the installed recorder.
pub fn describe() {
    describe_gauge!("dualwrite_phase", "1 for the migration's current phase, 0 for the others");
    describe_gauge!("dualwrite_backfill_rows_done", "Rows the backfill has copied (or found already copied)");
    describe_gauge!("dualwrite_backfill_rows_remaining", "Rows the backfill still has to copy");
    describe_gauge!("dualwrite_backfill_progress_ratio", "Backfill progress, 0 to 1");
    describe_gauge!("dualwrite_backfill_rows_per_second", "Current backfill copy rate");
    describe_gauge!(
        "dualwrite_backfill_holding",
        "1 while the backfill running on this instance holds off (replication lag or p99 latency over its limit)"
    );
    describe_gauge!("dualwrite_backfill_eta_seconds", "Estimated seconds until the backfill is done");
    describe_gauge!(
        "dualwrite_lag_seconds",
        "How far the shadow trails the old table: age of the oldest committed change whose twin is not yet seen"
    );
    describe_gauge!("dualwrite_seconds_since_clean_verify", "Seconds since the last verify that found no divergence");
    describe_gauge!("dualwrite_divergent_rows", "Divergent rows found by the last verify, by kind");
    describe_gauge!(
        "dualwrite_table_rows",
        "Rows of the old and new shapes (a split's targets or a merge's sources joined on the key; exact after a verify, else estimated)"
    );
}

/// Sets the gauges of every migration in `figures` on the current recorder.
pub fn publish(figures: &[MigrationFigures]) {
    describe();
    for f in figures {
        let m = f.migration.clone();
        if let Some(current) = f.phase {
            for phase in Phase::ALL {
                let value = if phase == current { 1.0 } else { 0.0 };
                gauge!("dualwrite_phase", "migration" => m.clone(), "phase" => phase.as_str()).set(value);
            }
        }
        gauge!("dualwrite_backfill_rows_done", "migration" => m.clone()).set(f.rows_done);
        gauge!("dualwrite_backfill_rows_remaining", "migration" => m.clone()).set(f.rows_remaining);
        gauge!("dualwrite_backfill_progress_ratio", "migration" => m.clone()).set(f.progress_ratio);
        gauge!("dualwrite_backfill_rows_per_second", "migration" => m.clone()).set(f.rows_per_second);
        gauge!("dualwrite_backfill_eta_seconds", "migration" => m.clone()).set(f.eta_seconds);
        gauge!("dualwrite_lag_seconds", "migration" => m.clone()).set(f.lag_seconds);
        gauge!("dualwrite_seconds_since_clean_verify", "migration" => m.clone()).set(f.seconds_since_clean_verify);
        if let Some((missing, extra, different)) = f.divergent {
            for (kind, value) in [("missing", missing), ("extra", extra), ("different", different)] {
                gauge!("dualwrite_divergent_rows", "migration" => m.clone(), "kind" => kind).set(value);
            }
        }
        gauge!("dualwrite_table_rows", "migration" => m.clone(), "table" => "old").set(f.old_rows);
        gauge!("dualwrite_table_rows", "migration" => m, "table" => "shadow").set(f.shadow_rows);
    }
}

/// The last observation of a backfill's checkpoint, to derive its rate across refreshes.
#[derive(Debug, Clone, Copy)]
struct RateSample {
    rows_done: i64,
    updated_at: f64,
    rate: f64,
}

/// A running backfill whose checkpoint has not moved for this long counts as stalled (rate 0).
const STALLED_AFTER_SECONDS: f64 = 30.0;

/// Derives the migration figures from the state tables, remembering checkpoints between refreshes.
#[derive(Debug, Default)]
pub struct MetricsRefresher {
    samples: HashMap<String, RateSample>,
}

/// The (old, shadow) rows a finished verify counted: `checked` rows of its source of truth (`source`, the
/// shadow from cutover on; runs before the column existed are the old table's), and on the other side those
/// less the `missing` (keys only the source holds) plus the `extra` (keys only the other side holds).
fn verified_rows(source: Option<&str>, checked: i64, missing: i64, extra: i64) -> (f64, f64) {
    let other = (checked - missing + extra) as f64;
    match source {
        Some("shadow") => (other, checked as f64),
        _ => (checked as f64, other),
    }
}

/// Row count of a table: catalog estimate and when the catalog last counted.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TableStats {
    estimate: f64,
    counted_at: Option<f64>,
}

impl TableStats {
    /// Several tables FULL JOINed on the key (a split's targets, a merge's sources): at least as many rows
    /// as the largest holds, and as many when it holds every key, which the dual writes keep; counted by
    /// the catalog only once every table was (as of the oldest count).
    fn joined(tables: &[TableStats]) -> TableStats {
        let estimate = tables.iter().map(|t| t.estimate).fold(0.0, f64::max);
        let counted_at = tables
            .iter()
            .map(|t| t.counted_at)
            .collect::<Option<Vec<f64>>>()
            .and_then(|counted| counted.into_iter().reduce(f64::min));
        TableStats { estimate, counted_at }
    }
}

impl MetricsRefresher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the current figures of each mapping's migration.
    pub async fn gather(&mut self, client: &Client, mappings: &[TableMapping]) -> JobResult<Vec<MigrationFigures>> {
        let mut all = Vec::with_capacity(mappings.len());
        for mapping in mappings {
            all.push(self.gather_one(client, mapping).await?);
        }
        Ok(all)
    }

    async fn gather_one(&mut self, client: &Client, mapping: &TableMapping) -> JobResult<MigrationFigures> {
        let name = mapping.migration.as_str();
        let now: f64 = client.query_one("SELECT extract(epoch FROM now())::float8", &[]).await?.get(0);
        // Each side as a read of its shape sees it: a merge's sources, a split's targets, joined on the key.
        let old_tables: Vec<&QualifiedName> = match mapping.sources.is_empty() {
            true => vec![&mapping.old],
            false => mapping.sources.iter().map(|(table, _, _)| table).collect(),
        };
        let old = joined_stats(client, old_tables).await?;
        let shadow = joined_stats(client, mapping.targets.iter().map(|(table, _)| table).collect()).await?;
        let phase = client
            .query_opt("SELECT phase FROM dualwrite.migrations WHERE name = $1", &[&name])
            .await?
            .and_then(|row| row.get::<_, String>(0).parse::<Phase>().ok());
        let backfill = client
            .query_opt(
                "SELECT state, rows_done, rows_total, extract(epoch FROM updated_at)::float8 \
                 FROM dualwrite.backfill WHERE migration = $1",
                &[&name],
            )
            .await?;
        let last_verify = client
            .query_opt(
                "SELECT rows_checked, missing, extra, different, extract(epoch FROM finished_at)::float8, source \
                 FROM dualwrite.verify_runs WHERE migration = $1 AND finished_at IS NOT NULL \
                 ORDER BY finished_at DESC, id DESC LIMIT 1",
                &[&name],
            )
            .await?;
        let since_clean: Option<f64> = client
            .query_one(
                "SELECT extract(epoch FROM now() - max(finished_at))::float8 FROM dualwrite.verify_runs \
                 WHERE migration = $1 AND clean",
                &[&name],
            )
            .await?
            .get(0);

        // Inventory: exact from the last verify unless the catalog counted the table since.
        let exact = last_verify.as_ref().map(|row| {
            let (old, shadow) = verified_rows(row.get(5), row.get(0), row.get(1), row.get(2));
            (old, shadow, row.get::<_, f64>(4))
        });
        let pick = |stats: &TableStats, exact: Option<(f64, f64)>| match exact {
            Some((count, at)) if stats.counted_at.is_none_or(|counted| at >= counted) => count,
            _ => stats.estimate,
        };
        let old_rows = pick(&old, exact.map(|(o, _, at)| (o, at)));
        let shadow_rows = pick(&shadow, exact.map(|(_, s, at)| (s, at)));

        let (state, rows_done, rows_total, updated_at) = match &backfill {
            Some(row) => (row.get::<_, String>(0), row.get::<_, i64>(1), row.get::<_, Option<i64>>(2), row.get(3)),
            None => ("idle".to_string(), 0, None, None::<f64>),
        };
        let done = state == "done";
        let rows_remaining = if done {
            0.0
        } else {
            match rows_total {
                Some(total) => (total - rows_done).max(0) as f64,
                None => (old_rows - rows_done as f64).max(0.0),
            }
        };
        let progress_ratio = if done {
            1.0
        } else if rows_done as f64 + rows_remaining > 0.0 {
            rows_done as f64 / (rows_done as f64 + rows_remaining)
        } else {
            0.0
        };
        let rows_per_second = self.rate(name, &state, rows_done, updated_at, now);
        let eta_seconds = if done || rows_remaining == 0.0 {
            0.0
        } else if rows_per_second > 0.0 {
            rows_remaining / rows_per_second
        } else {
            f64::INFINITY
        };
        Ok(MigrationFigures {
            migration: name.to_string(),
            phase,
            rows_done: rows_done as f64,
            rows_remaining,
            progress_ratio,
            rows_per_second,
            eta_seconds,
            lag_seconds: lag_seconds(client, name).await?,
            seconds_since_clean_verify: since_clean.unwrap_or(f64::INFINITY).max(0.0),
            divergent: last_verify
                .as_ref()
                .map(|row| (row.get::<_, i64>(1) as f64, row.get::<_, i64>(2) as f64, row.get::<_, i64>(3) as f64)),
            old_rows,
            shadow_rows,
        })
    }

    /// Rows per second between the last two checkpoints seen, smoothed; 0 unless running and moving.
    fn rate(&mut self, name: &str, state: &str, rows_done: i64, updated_at: Option<f64>, now: f64) -> f64 {
        let Some(updated_at) = updated_at else { return 0.0 };
        let previous = self.samples.get(name).copied();
        let rate = match previous {
            _ if state != "running" => 0.0,
            Some(prev) if updated_at > prev.updated_at && rows_done >= prev.rows_done => {
                let instant = (rows_done - prev.rows_done) as f64 / (updated_at - prev.updated_at);
                if prev.rate > 0.0 {
                    0.5 * prev.rate + 0.5 * instant
                } else {
                    instant
                }
            }
            Some(_) if now - updated_at > STALLED_AFTER_SECONDS => 0.0,
            Some(prev) => prev.rate,
            None => 0.0,
        };
        self.samples.insert(name.to_string(), RateSample { rows_done, updated_at, rate });
        rate
    }
}

/// `TableStats::joined` of `tables` (one table: its own figures).
async fn joined_stats(client: &Client, tables: Vec<&QualifiedName>) -> JobResult<TableStats> {
    let mut stats = Vec::with_capacity(tables.len());
    for table in tables {
        stats.push(table_stats(client, &table.object_name().to_string()).await?);
    }
    Ok(TableStats::joined(&stats))
}

async fn table_stats(client: &Client, table: &str) -> JobResult<TableStats> {
    let row = client
        .query_one(
            "SELECT c.reltuples::float8, coalesce(s.n_live_tup, 0)::float8, \
                    extract(epoch FROM greatest(s.last_vacuum, s.last_autovacuum, s.last_analyze, \
                                                s.last_autoanalyze))::float8 \
             FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid \
             WHERE c.oid = $1::text::regclass",
            &[&table],
        )
        .await?;
    let (reltuples, live): (f64, f64) = (row.get(0), row.get(1));
    // reltuples is -1 until the table was first vacuumed or analyzed.
    Ok(TableStats { estimate: if reltuples >= 0.0 { reltuples } else { live }, counted_at: row.get(2) })
}

/// The migrations whose figures to export; called at every refresh so rule reloads are picked up.
pub type MappingsFn = Arc<dyn Fn() -> Vec<TableMapping> + Send + Sync>;

/// Refreshes the migration gauges every `every` on the global recorder, reconnecting after errors.
pub fn spawn_refresher(config: PgTarget, mappings: MappingsFn, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut refresher = MetricsRefresher::new();
        let mut client: Option<Client> = None;
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = match connect(&config).await {
                    Ok(c) => Some(c),
                    Err(error) => {
                        tracing::warn!(%error, "metrics refresher cannot connect");
                        continue;
                    }
                };
            }
            let Some(c) = client.as_ref() else { continue };
            match refresher.gather(c, &mappings()).await {
                Ok(figures) => publish(&figures),
                Err(error) => tracing::warn!(%error, "metrics refresh failed"),
            }
        }
    })
}

/// What `dualwrite_lag_seconds` reports, from what the change-data-capture watch stored: how far the shadow
/// trails the old table, i.e. the age of the oldest committed change whose twin is not yet seen: the
/// watch's own lag, or an open (unresolved) bypass if older. NaN while no watch is running.
async fn lag_seconds(client: &Client, migration: &str) -> Result<f64, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT greatest(coalesce(w.lag_seconds, 0), coalesce(extract(epoch FROM now() - \
                 (SELECT min(committed_at) FROM dualwrite.cdc_bypasses \
                  WHERE migration = $1 AND resolved_at IS NULL))::float8, 0)) \
             FROM dualwrite.cdc_watch w WHERE w.id = 1 AND w.state = 'watching' \
               AND w.updated_at > now() - interval '30 seconds'",
            &[&migration],
        )
        .await?;
    Ok(row.map(|row| row.get(0)).unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::{verified_rows, TableStats};

    #[test]
    fn a_verify_counts_its_source_of_truth_and_derives_the_other_side() {
        // 100 rows in the source; 3 keys only it holds, 1 only the other side holds.
        assert_eq!(verified_rows(Some("old"), 100, 3, 1), (100.0, 98.0));
        assert_eq!(verified_rows(None, 100, 3, 1), (100.0, 98.0));
        assert_eq!(verified_rows(Some("shadow"), 100, 3, 1), (98.0, 100.0));
    }

    fn stats(estimate: f64, counted_at: Option<f64>) -> TableStats {
        TableStats { estimate, counted_at }
    }

    #[test]
    fn joined_tables_count_as_the_largest_and_as_counted_once_all_were() {
        let one = stats(50.0, Some(10.0));
        assert_eq!(TableStats::joined(&[one]), one);
        assert_eq!(TableStats::joined(&[stats(50.0, Some(10.0)), stats(51.0, Some(20.0))]), stats(51.0, Some(10.0)));
        assert_eq!(TableStats::joined(&[stats(50.0, Some(30.0)), stats(51.0, None)]), stats(51.0, None));
    }
}
