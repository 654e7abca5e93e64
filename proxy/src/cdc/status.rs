//! What the watch shows: its row in `dualwrite.cdc_watch` (written by the leader, read by every instance's
//! STATUS), the columns it adds to `DUALWRITE STATUS`, and its metrics.

use metrics::{counter, describe_counter, describe_gauge, gauge};
use tokio_postgres::Client;

use crate::pg_client::PgTarget;
use crate::result_set::ControlResponse;

use super::decoder::Lsn;

/// The watch's state as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchState {
    /// No migration is in dual_write or cutover: no slot.
    Idle,
    Watching,
    /// The slot was dropped (it held back too much WAL); verify-only until an operator re-arms the watch.
    Fallback,
    /// The watch cannot run (e.g. `wal_level`); verify-only.
    Error,
}

impl WatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchState::Idle => "idle",
            WatchState::Watching => "watching",
            WatchState::Fallback => "fallback",
            WatchState::Error => "error",
        }
    }
}

/// The row the leader writes.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchRow<'a> {
    pub state: WatchState,
    pub detail: Option<&'a str>,
    pub slot: Option<&'a str>,
    pub confirmed: Option<Lsn>,
    pub lag_bytes: Option<f64>,
    pub lag_seconds: Option<f64>,
}

/// Stores the leader's state. A `fallback` (the leader's, or an operator's who paused the watch) is only
/// replaced by an operator re-arming the watch, never by the leader's own updates.
pub async fn write(client: &Client, row: &WatchRow<'_>) -> Result<(), tokio_postgres::Error> {
    let leader = format!("proxy pid {}", std::process::id());
    client
        .execute(
            "INSERT INTO dualwrite.cdc_watch (id, state, detail, leader, slot, confirmed_lsn, lag_bytes, lag_seconds, \
                 updated_at) VALUES (1, $1, $2, $3, $4, $5::text::pg_lsn, $6, $7, now()) \
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, detail = EXCLUDED.detail, \
                 leader = EXCLUDED.leader, slot = EXCLUDED.slot, confirmed_lsn = EXCLUDED.confirmed_lsn, \
                 lag_bytes = EXCLUDED.lag_bytes, lag_seconds = EXCLUDED.lag_seconds, updated_at = now() \
             WHERE dualwrite.cdc_watch.state <> 'fallback' OR EXCLUDED.state = 'fallback'",
            &[
                &row.state.as_str(),
                &row.detail,
                &leader,
                &row.slot,
                &row.confirmed.map(|l| l.to_string()),
                &row.lag_bytes,
                &row.lag_seconds,
            ],
        )
        .await?;
    Ok(())
}

/// The stored state, if the watch ever ran on this database.
pub async fn read_state(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(client.query_opt("SELECT state FROM dualwrite.cdc_watch WHERE id = 1", &[]).await?.map(|r| r.get(0)))
}

/// Columns STATUS gains.
pub const STATUS_COLUMNS: &[&str] = &["cdc_watch", "cdc_bypasses", "cdc_bypasses_open"];

/// Appends the watch's columns to a STATUS answer (first column: the migration name). A migration outside
/// dual_write and cutover is not watched; an unreadable state shows as NULL rather than failing STATUS.
pub async fn add_status_columns(response: &mut ControlResponse, target: &PgTarget) {
    let figures = match status_figures(target).await {
        Ok(figures) => Some(figures),
        Err(error) => {
            tracing::warn!(%error, "cannot read the change-data-capture watch's state for STATUS");
            None
        }
    };
    response.columns.extend(STATUS_COLUMNS.iter().map(|c| c.to_string()));
    for row in &mut response.rows {
        let name = row.first().cloned().flatten().unwrap_or_default();
        let phase = row.get(1).cloned().flatten().unwrap_or_default();
        let (watch, counts) = match &figures {
            Some((watch, counts)) => (watch.clone(), counts.iter().find(|(m, _, _)| *m == name).cloned()),
            None => (None, None),
        };
        let watched = phase == "dual_write" || phase == "cutover";
        let watch = if watched { watch.or_else(|| Some("not started".into())) } else { Some("not watched".into()) };
        let (total, open) = counts.map(|(_, t, o)| (t, o)).unwrap_or((0, 0));
        row.extend([watch, Some(total.to_string()), Some(open.to_string())]);
    }
}

type Counts = Vec<(String, i64, i64)>;

async fn status_figures(target: &PgTarget) -> Result<(Option<String>, Counts), tokio_postgres::Error> {
    let client = target.connect_client().await?;
    let watch = client
        .query_opt(
            "SELECT state || coalesce(': ' || detail, '') || \
                    CASE WHEN state = 'watching' THEN format(' (lag %s bytes, %s s; %s)', \
                         coalesce(lag_bytes, 0)::int8, round(coalesce(lag_seconds, 0)::numeric, 1), leader) \
                    ELSE '' END FROM dualwrite.cdc_watch WHERE id = 1",
            &[],
        )
        .await?
        .map(|row| row.get(0));
    let counts = client
        .query(
            "SELECT migration, count(*), count(*) FILTER (WHERE resolved_at IS NULL) \
             FROM dualwrite.cdc_bypasses GROUP BY migration",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    Ok((watch, counts))
}

pub fn describe() {
    describe_counter!(
        "dualwrite_bypassed_writes_total",
        "Writes that reached one table of a migration without their twin on the other (bypassed the proxy)"
    );
    describe_counter!(
        "dualwrite_shadow_rows_written_total",
        "Rows written to the shadow table as the change-data-capture watch saw them, by source"
    );
    describe_gauge!("dualwrite_cdc_lag_bytes", "WAL written since the change-data-capture watch's confirmed position");
    describe_gauge!(
        "dualwrite_cdc_lag_seconds",
        "Age of the oldest commit the change-data-capture watch has not handled"
    );
    describe_gauge!("dualwrite_cdc_leader", "1 while this instance runs the change-data-capture watch");
    describe_gauge!(
        "dualwrite_cdc_fallback",
        "1 while the change-data-capture watch is off for safety (slot dropped, or wal_level not logical): verify-only"
    );
}

pub fn count_bypass(migration: &str, kind: &'static str) {
    counter!("dualwrite_bypassed_writes_total", "migration" => migration.to_string(), "kind" => kind).increment(1);
}

pub fn count_shadow_rows(migration: &str, source: &'static str, rows: u64) {
    counter!("dualwrite_shadow_rows_written_total", "migration" => migration.to_string(), "source" => source)
        .increment(rows);
}

pub fn set_lag(bytes: Option<f64>, seconds: Option<f64>) {
    if let Some(bytes) = bytes {
        gauge!("dualwrite_cdc_lag_bytes").set(bytes);
    }
    if let Some(seconds) = seconds {
        gauge!("dualwrite_cdc_lag_seconds").set(seconds);
    }
}

pub fn set_role(leader: bool, fallback: bool) {
    gauge!("dualwrite_cdc_leader").set(if leader { 1.0 } else { 0.0 });
    gauge!("dualwrite_cdc_fallback").set(if fallback { 1.0 } else { 0.0 });
}
