//! After-batch sweeps of the backfill. A dual-write DELETE removes the shadow row through its statement's
//! snapshot, so if that snapshot was taken before a backfill batch committed (typically: the DELETE waited
//! for the batch's FOR SHARE lock on the old row), the row the batch inserted stays behind. Once no
//! snapshot older than the batch's commit remains (no client backend's `backend_xmin` at or before the
//! batch's xid), every such DELETE has committed or aborted, and deleting the batch range's shadow rows
//! whose old row is gone makes the shadow exact again.

use std::collections::VecDeque;
use std::time::Duration;

use tokio_postgres::{Client, IsolationLevel};
use tokio_postgres::types::ToSql;

use super::mapping::CompiledMapping;
use super::sql::Bounds;
use super::{is_retryable, JobResult};

/// One key range `(lower, upper]` to sweep once snapshots older than `xid` are gone.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub lower: Option<String>,
    pub upper: Option<String>,
    /// The batch's transaction id (32-bit xid as text).
    pub xid: String,
}

/// Sweeps waiting for old snapshots to end, oldest first.
#[derive(Debug, Default)]
pub struct Sweeps {
    pending: VecDeque<Sweep>,
    /// Shadow rows deleted by sweeps so far.
    pub deleted: u64,
}

const ATTEMPTS: u32 = 50;

impl Sweeps {
    pub fn push(&mut self, sweep: Sweep) {
        self.pending.push_back(sweep);
    }

    /// Runs the sweeps whose older snapshots are gone, as one statement over their joined range (pending
    /// ranges are consecutive batches, so they join); with `wait_all`, waits until every sweep ran.
    pub async fn run_ready(&mut self, client: &mut Client, compiled: &CompiledMapping, wait_all: bool) -> JobResult<()> {
        while !self.pending.is_empty() {
            let ready = ready_prefix(client, &self.pending).await?;
            if ready == 0 {
                if !wait_all {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let joined = Sweep {
                lower: self.pending[0].lower.clone(),
                upper: self.pending[ready - 1].upper.clone(),
                xid: self.pending[ready - 1].xid.clone(),
            };
            self.deleted += run(client, compiled, &joined).await?;
            self.pending.drain(..ready);
        }
        Ok(())
    }
}

/// The transaction id a sweep covering everything up to now must wait for.
pub async fn current_xid(client: &Client) -> JobResult<String> {
    Ok(client.query_one("SELECT pg_current_xact_id()::xid::text", &[]).await?.get(0))
}

/// How many of the oldest pending sweeps no longer have a client snapshot at or before their batch.
async fn ready_prefix(client: &Client, pending: &VecDeque<Sweep>) -> JobResult<usize> {
    let xids: Vec<&str> = pending.iter().map(|sweep| sweep.xid.as_str()).collect();
    let rows = client
        .query(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                 AND backend_type = 'client backend' AND backend_xmin IS NOT NULL \
                 AND age(backend_xmin) >= age(u.x::xid)) \
             FROM unnest($1::text[]) WITH ORDINALITY AS u(x, n) ORDER BY u.n",
            &[&xids],
        )
        .await?;
    Ok(rows.iter().take_while(|row| row.get::<_, bool>(0)).count())
}

/// One sweep under REPEATABLE READ, retried when a concurrent dual write touches one of its rows.
async fn run(client: &mut Client, compiled: &CompiledMapping, sweep: &Sweep) -> JobResult<u64> {
    let bounds = Bounds { lower: sweep.lower.is_some(), upper: sweep.upper.is_some() };
    let statement = compiled.sweep(bounds);
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(lower) = &sweep.lower {
        params.push(lower);
    }
    if let Some(upper) = &sweep.upper {
        params.push(upper);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).start().await?;
            let deleted = tx.execute(statement.as_str(), &params).await?;
            tx.commit().await?;
            Ok::<u64, tokio_postgres::Error>(deleted)
        }
        .await;
        match result {
            Ok(deleted) => {
                if deleted > 0 {
                    tracing::info!(migration = %compiled.migration, deleted, "backfill sweep removed shadow rows deleted concurrently");
                }
                return Ok(deleted);
            }
            Err(error) if attempt < ATTEMPTS && is_retryable(&error) => {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}
