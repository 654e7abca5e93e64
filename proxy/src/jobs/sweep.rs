//! After-batch sweeps of the backfill, and the fence that says when one may run.
//!
//! A dual-write DELETE removes the shadow row through its statement's snapshot. If that snapshot was taken
//! before a backfill batch committed the row (the batch read the old row before the DELETE committed), the
//! DELETE misses it and the copy stays behind. A sweep deletes the shadow rows of the batch's key range
//! whose old row is gone, in a snapshot that sees every such DELETE's outcome.
//!
//! The fence: every DELETE that can miss a batch's row belongs to a transaction that was open when the
//! batch committed (its snapshot predates the commit). Right after the commit the backfill records the
//! open client transactions as (pid, `xact_start`) from `pg_stat_activity`; the sweep runs once none of
//! them is still open. A backend clears `xact_start` only after its commit is visible to new snapshots, so
//! the sweep's later snapshot sees each such DELETE committed (old row gone: the copy is deleted) or
//! aborted (old row still there: the copy is right). Waiting on statement snapshots (`backend_xmin`) would
//! not do: between statements a READ COMMITTED transaction holds no snapshot but may still hold an
//! uncommitted DELETE. A new transaction on the same pid that started within the same microsecond would only
//! make the sweep wait longer, never run early. Seeing other roles' `xact_start` needs superuser or
//! `pg_read_all_stats`; without it the backfill warns, since its fence cannot see their transactions.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel};

use super::mapping::CompiledMapping;
use super::sql::Bounds;
use super::{is_retryable, JobResult};

/// Client transactions open at one moment, as (pid, `xact_start` in microseconds since the epoch).
pub type Fence = Vec<(i32, i64)>;

/// One key range `(lower, upper]` to sweep once the transactions of `fence` have ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub lower: Option<String>,
    pub upper: Option<String>,
    pub fence: Fence,
}

/// Sweeps waiting for their fence, oldest first.
#[derive(Debug, Default)]
pub struct Sweeps {
    pending: VecDeque<Sweep>,
    /// Shadow rows deleted by sweeps so far.
    pub deleted: u64,
}

const ATTEMPTS: u32 = 50;

/// How long the final wait goes on before it names the transactions it waits for.
const WAIT_WARNING: Duration = Duration::from_secs(10);

impl Sweeps {
    pub fn push(&mut self, sweep: Sweep) {
        self.pending.push_back(sweep);
    }

    /// Runs the sweeps whose fence has passed, as one statement over their joined range (pending ranges
    /// are consecutive batches, so they join); with `wait_all`, waits until every sweep ran.
    pub async fn run_ready(
        &mut self,
        client: &mut Client,
        compiled: &CompiledMapping,
        wait_all: bool,
    ) -> JobResult<()> {
        let waiting_since = Instant::now();
        let mut warned = false;
        while !self.pending.is_empty() {
            let open = open_transactions(client).await?;
            let open: HashSet<(i32, i64)> = open.into_iter().collect();
            let ready = self.pending.iter().take_while(|sweep| sweep.fence.iter().all(|t| !open.contains(t))).count();
            if ready == 0 {
                if !wait_all {
                    return Ok(());
                }
                if !warned && waiting_since.elapsed() > WAIT_WARNING {
                    warned = true;
                    let pids: Vec<i32> =
                        self.pending[0].fence.iter().filter(|t| open.contains(t)).map(|t| t.0).collect();
                    tracing::warn!(migration = %compiled.migration, ?pids, "backfill waits for transactions open since its last batches to end");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let joined = Sweep {
                lower: self.pending[0].lower.clone(),
                upper: self.pending[ready - 1].upper.clone(),
                fence: Fence::new(),
            };
            self.deleted += run(client, compiled, &joined).await?;
            self.pending.drain(..ready);
        }
        Ok(())
    }
}

/// The client transactions open now, other than this session's: the fence of a batch that just committed.
pub async fn open_transactions(client: &Client) -> Result<Fence, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pid, (extract(epoch FROM xact_start) * 1000000)::int8 FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' AND xact_start IS NOT NULL",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Whether this session sees other roles' transactions in `pg_stat_activity` (the fence needs to).
pub async fn sees_all_transactions(client: &Client) -> JobResult<bool> {
    let row = client
        .query_one(
            "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') FROM pg_roles \
             WHERE rolname = current_user",
            &[],
        )
        .await?;
    Ok(row.get(0))
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
            tx.batch_execute(crate::jobs::mark::SWEEP).await?;
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
