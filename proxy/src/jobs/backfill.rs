//! The backfill: copies the rows that existed before dual writes began from the old table into the shadow,
//! through the forward mapping, in key-ordered batches. Each batch is one key range `(last_key, upper]`,
//! `upper` the key `batch_size` rows on, copied by one `INSERT ... SELECT` (see `sql::backfill_batch`);
//! the batch and its checkpoint (`dualwrite.backfill.last_key`, `rows_done`) commit in one transaction, so a
//! backfill killed at any point resumes exactly after the last committed batch. The job session runs with
//! `synchronous_commit = off`: a commit lost in a crash loses the batch and its checkpoint together, and
//! any durable dual write that saw the batch's rows has a later commit record, so the batch's is flushed.
//!
//! Why a batch is race-safe with live dual writes without locking old rows. A dual write is one statement
//! that writes the old row and then the shadow row: `INSERT ... ON CONFLICT (key) DO UPDATE` for inserts
//! and updates, `DELETE` for deletes. Take a key k of batch B, read in B's snapshot:
//! - a dual write committed before B's snapshot: B sees its old row, and its shadow row too, so the
//!   anti-join skips k (or, after a delete, B neither sees nor copies k);
//! - an insert or update W concurrent with B: its shadow upsert does not depend on its snapshot. If B's
//!   row is there (committed, or in flight: W waits for B), W's `DO UPDATE` overwrites B's copy. If W's
//!   row is there first, B's plain insert waits for W and fails with unique_violation when W commits; the
//!   batch is then redone with `ON CONFLICT DO NOTHING`, which skips k. If W aborts, B's copy of the
//!   pre-W row is right. Either way the shadow ends as W left it;
//! - a delete W concurrent with B: W's shadow `DELETE` works in its statement snapshot. If that snapshot
//!   sees B's row, W deletes it. If it predates B's commit, W misses it and the copy stays behind; W's
//!   transaction was then open when B committed, so the sweep of B's range (see `sweep`), run once every
//!   transaction open at that moment has ended, deletes every copy whose old row is gone. If W deleted a
//!   shadow row B then waited on, B inserts after W commits and the same sweep removes it;
//! - a write after B committed sees B's row like any other.
//!
//! Locking old rows (`FOR SHARE`) adds nothing to this: it would only order a concurrent DELETE after B,
//! whose snapshot still predates B's commit; and it costs a heap write per row.
//! `jobs_backfill` proves these cases: writers and deleters racing a 1M-row backfill, and one dual-write
//! DELETE and one UPDATE left open across the batch that copies their row.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, Statement};

use crate::pg_client::PgTarget;
use crate::state::phase::SourceOfTruth;

use super::mapping::{CompiledMapping, TableMapping};
use super::sql::{Bounds, Side};
use super::sweep::{open_transactions, sees_all_transactions, Sweep, Sweeps};
use super::throttle::{self, Hold, Limits};
use super::verify::{run_verify, VerifyOptions};
use super::{connect, is_retryable, notify_state, source_of_truth_now, try_lock, unlock, JobError, JobKind, JobResult};

/// How a backfill runs.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub batch_size: u32,
    pub limits: Limits,
    /// Start over from the first key even if a previous backfill finished.
    pub restart: bool,
    /// Who runs it, recorded in `dualwrite.backfill.owner`.
    pub owner: String,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        BackfillOptions {
            batch_size: 20_000,
            limits: Limits::default(),
            restart: false,
            owner: format!("pid {}", std::process::id()),
        }
    }
}

/// What the backfill is doing right now, for progress bars and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Activity {
    Copying,
    Paused,
    Holding(Hold),
    /// Every row copied; repairing the rows a forced re-entry from `off` kept (see [`repair_kept_rows`]).
    Repairing,
    Done,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackfillProgress {
    pub rows_done: i64,
    pub rows_total: Option<i64>,
    pub activity: Activity,
}

/// How a backfill run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum BackfillOutcome {
    /// Every row was copied (now or by an earlier run).
    Done { rows_done: i64 },
    /// Someone set the state to something other than running/paused (e.g. idle) and the run stopped.
    Stopped { rows_done: i64 },
}

/// Progress callback; called after every batch and while paused or holding.
pub type ProgressFn<'a> = &'a (dyn Fn(&BackfillProgress) + Send + Sync);

const RETRY_PAUSE: Duration = Duration::from_millis(200);
const POLL_PAUSE: Duration = Duration::from_millis(500);

/// Runs (or resumes) the backfill of `mapping` until it is done or stopped. Fails with `JobError::Busy`
/// if another instance holds the migration's backfill lock.
pub async fn run_backfill(
    config: &PgTarget,
    mapping: &TableMapping,
    options: &BackfillOptions,
    progress: ProgressFn<'_>,
) -> JobResult<BackfillOutcome> {
    let client = lock_backfill(config, &mapping.migration).await?;
    run_backfill_locked(config, client, mapping, options, progress).await
}

/// Runs the backfill on `client`, which must already hold the migration's backfill lock (see
/// `lock_backfill`); the lock goes with the connection when the run ends. `config` opens the connections
/// of the repair a forced re-entry asks for.
pub async fn run_backfill_locked(
    config: &PgTarget,
    mut client: Client,
    mapping: &TableMapping,
    options: &BackfillOptions,
    progress: ProgressFn<'_>,
) -> JobResult<BackfillOutcome> {
    let outcome = copy_all(config, &mut client, mapping, options, progress).await;
    // Released on failure too (a refusal in the wrong phase, a lost race): left to the connection's close,
    // the lock outlives this call until the server notices, and a start right after would find it busy.
    let unlocked = unlock(&client, JobKind::Backfill, &mapping.migration).await;
    let outcome = outcome?;
    unlocked?;
    Ok(outcome)
}

async fn copy_all(
    config: &PgTarget,
    client: &mut Client,
    mapping: &TableMapping,
    options: &BackfillOptions,
    progress: ProgressFn<'_>,
) -> JobResult<BackfillOutcome> {
    client
        .batch_execute(
            "SET application_name = 'dualwrite backfill'; SET lock_timeout = '2s'; SET synchronous_commit = off",
        )
        .await?;
    let compiled = CompiledMapping::load(client, mapping).await?;
    let name = mapping.migration.as_str();
    if let Err(reason) = copies_into_the_shadow(client, name, false).await? {
        return Err(JobError::Phase { migration: name.to_string(), reason });
    }
    if !sees_all_transactions(client).await? {
        tracing::warn!(
            migration = name,
            "the backfill's role is neither superuser nor pg_read_all_stats: it cannot see other roles' \
             transactions, so a DELETE racing a batch may leave a stale shadow row (verify REPAIR fixes it)"
        );
    }
    let resumed_from = match begin(client, &compiled, options).await? {
        Begun::AlreadyDone { rows_done } => {
            progress(&BackfillProgress { rows_done, rows_total: Some(rows_done), activity: Activity::Done });
            return Ok(BackfillOutcome::Done { rows_done });
        }
        Begun::Running { resumed_from } => resumed_from,
    };
    notify_state(client, name).await?;

    let statements = Statements::prepare(client, &compiled).await?;
    let batch = throttle::effective_batch(options.batch_size, options.limits.rate);
    let mut sweeps = Sweeps::default();
    if let Some(done_up_to) = resumed_from {
        // Sweeps of the previous run may not have happened; one sweep covers all it copied.
        sweeps.push(Sweep { lower: None, upper: Some(done_up_to), fence: open_transactions(client).await? });
    }
    let mut on_conflict = false;
    let mut window = (Instant::now(), 0u64);
    let mut known: (i64, Option<i64>) = (0, None);
    loop {
        sweeps.run_ready(client, &compiled, false).await?;
        let delay = throttle::rate_delay(window.1, window.0.elapsed(), options.limits.rate);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(hold) = hold(client, &options.limits).await? {
            tracing::info!(migration = name, ?hold, "backfill holding off");
            progress(&BackfillProgress { rows_done: known.0, rows_total: known.1, activity: Activity::Holding(hold) });
            tokio::time::sleep(Duration::from_secs(1)).await;
            window = (Instant::now(), 0);
            continue;
        }
        let step = match copy_batch(client, name, &statements, batch, on_conflict).await {
            Ok(step) => {
                on_conflict = false;
                step
            }
            Err(error) if !on_conflict && error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                // A dual write inserted one of the batch's keys after its snapshot: redo the batch skipping
                // such keys (see the module comment).
                tracing::debug!(migration = name, %error, "backfill batch redone with ON CONFLICT DO NOTHING");
                on_conflict = true;
                continue;
            }
            Err(error) if error.as_db_error().is_some() && is_retryable(&error) => {
                tracing::debug!(migration = name, %error, "backfill batch retried");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        match step {
            Step::Copied { rows, rows_done, rows_total, swept } => {
                sweeps.push(swept);
                window.1 += rows as u64;
                known = (rows_done, rows_total);
                progress(&BackfillProgress { rows_done, rows_total, activity: Activity::Copying });
            }
            Step::Paused { rows_done, rows_total } => {
                known = (rows_done, rows_total);
                progress(&BackfillProgress { rows_done, rows_total, activity: Activity::Paused });
                tokio::time::sleep(POLL_PAUSE).await;
                window = (Instant::now(), 0);
            }
            Step::Exhausted { rows_done, swept } => {
                if let Some(swept) = swept {
                    sweeps.push(swept);
                }
                sweeps.run_ready(client, &compiled, true).await?;
                repair_kept_rows(config, client, mapping, rows_done, progress).await?;
                if !finish(client, name, rows_done).await? {
                    continue;
                }
                notify_state(client, name).await?;
                tracing::info!(migration = name, rows_done, swept = sweeps.deleted, "backfill done");
                progress(&BackfillProgress { rows_done, rows_total: Some(rows_done), activity: Activity::Done });
                return Ok(BackfillOutcome::Done { rows_done });
            }
            Step::Stopped { rows_done } => return Ok(BackfillOutcome::Stopped { rows_done }),
            Step::WrongPhase { reason } => {
                notify_state(client, name).await?;
                tracing::warn!(migration = name, %reason, "backfill paused");
                return Err(JobError::Phase { migration: name.to_string(), reason });
            }
        }
    }
}

/// After a forced re-entry from `off` (`state::store::leave_off`), the rows the shadow kept may be stale:
/// writes made while off reached the old table alone, and a batch copies only the keys the shadow lacks.
/// So once every key is copied, the backfill repairs the shadow from the old table as `VERIFY ... REPAIR`
/// does (waiting for a verify running meanwhile, refusing if the shadow became the source of truth), and
/// only then counts as done: until then the new version's writes and its reads of the shadow wait, as for
/// any backfill. A repair that fails fails the backfill, which repairs again when resumed.
async fn repair_kept_rows(
    config: &PgTarget,
    client: &Client,
    mapping: &TableMapping,
    rows_done: i64,
    progress: ProgressFn<'_>,
) -> JobResult<()> {
    let name = mapping.migration.as_str();
    let sql = "SELECT repair_kept_rows FROM dualwrite.backfill WHERE migration = $1";
    let pending: bool = client.query_one(sql, &[&name]).await?.get(0);
    if !pending {
        return Ok(());
    }
    tracing::info!(migration = name, "backfill repairing the shadow rows kept when the migration left off with FORCE");
    progress(&BackfillProgress { rows_done, rows_total: Some(rows_done), activity: Activity::Repairing });
    let options = VerifyOptions { repair: true, required_source: Some(SourceOfTruth::Old), ..VerifyOptions::default() };
    let report = loop {
        match run_verify(config, mapping, &options, &|_, _| {}).await {
            Err(JobError::Busy { .. }) => tokio::time::sleep(POLL_PAUSE).await,
            outcome => break outcome?,
        }
    };
    tracing::info!(
        migration = name,
        divergent = report.divergent_rows(),
        repaired = report.repaired,
        "kept rows repaired"
    );
    client.execute("UPDATE dualwrite.backfill SET repair_kept_rows = false WHERE migration = $1", &[&name]).await?;
    Ok(())
}

/// Marks the backfill done unless its state changed meanwhile (e.g. paused during the last sweeps).
async fn finish(client: &Client, name: &str, rows_done: i64) -> JobResult<bool> {
    let updated = client
        .execute(
            "UPDATE dualwrite.backfill SET state = 'done', rows_done = $2, rows_total = $2, updated_at = now(), \
                 finished_at = now() WHERE migration = $1 AND state = 'running'",
            &[&name, &rows_done],
        )
        .await?;
    Ok(updated == 1)
}

/// Opens a connection holding the backfill lock of `migration`, or fails with `JobError::Busy`.
pub async fn lock_backfill(config: &PgTarget, migration: &str) -> JobResult<Client> {
    let client = connect(config).await?;
    try_lock(&client, JobKind::Backfill, migration).await?;
    Ok(client)
}

enum Begun {
    /// An earlier run finished and no restart was asked for.
    AlreadyDone { rows_done: i64 },
    /// Running now, continuing after this key if an earlier run got that far.
    Running { resumed_from: Option<String> },
}

/// Marks the backfill running and records the exact remaining work.
async fn begin(client: &Client, compiled: &CompiledMapping, options: &BackfillOptions) -> JobResult<Begun> {
    let name = compiled.migration.as_str();
    let existing = client
        .query_opt("SELECT state, last_key::text, rows_done FROM dualwrite.backfill WHERE migration = $1", &[&name])
        .await?;
    let (last_key, rows_done) = match existing {
        Some(row) if row.get::<_, String>(0) == "done" && !options.restart => {
            return Ok(Begun::AlreadyDone { rows_done: row.get::<_, i64>(2) });
        }
        Some(row) if !options.restart => (row.get::<_, Option<String>>(1), row.get::<_, i64>(2)),
        _ => (None, 0),
    };
    let remaining: i64 = match &last_key {
        Some(key) => client.query_one(&compiled.old_after(true), &[key]).await?.get(0),
        None => client.query_one(&compiled.old_after(false), &[]).await?.get(0),
    };
    let batch_size = options.batch_size as i32;
    let rate = options.limits.rate.map(|r| r as i32);
    client
        .execute(
            "INSERT INTO dualwrite.backfill AS b (migration, state, last_key, rows_done, rows_total, batch_size, \
                 rate_limit, owner, started_at, updated_at, finished_at) \
             VALUES ($1, 'running', $2::text::jsonb, $3, $4, $5, $6, $7, now(), now(), NULL) \
             ON CONFLICT (migration) DO UPDATE SET state = 'running', last_key = EXCLUDED.last_key, \
                 rows_done = EXCLUDED.rows_done, rows_total = EXCLUDED.rows_total, \
                 batch_size = EXCLUDED.batch_size, rate_limit = EXCLUDED.rate_limit, owner = EXCLUDED.owner, \
                 started_at = now(), updated_at = now(), finished_at = NULL",
            &[&name, &last_key, &rows_done, &(rows_done + remaining), &batch_size, &rate, &options.owner],
        )
        .await?;
    tracing::info!(migration = name, rows_done, remaining, "backfill running");
    Ok(Begun::Running { resumed_from: last_key })
}

enum Step {
    Copied {
        rows: i64,
        rows_done: i64,
        rows_total: Option<i64>,
        swept: Sweep,
    },
    Paused {
        rows_done: i64,
        rows_total: Option<i64>,
    },
    /// The old table has no rows after the last batch; later inserts are dual-written.
    Exhausted {
        rows_done: i64,
        swept: Option<Sweep>,
    },
    Stopped {
        rows_done: i64,
    },
    /// The phase moved to one where the old table is not the source of truth: the backfill was paused.
    WrongPhase {
        reason: String,
    },
}

/// Whether a backfill may copy the old table into the shadow now: only while the old table is the source
/// of truth (`off`, `dual_write`). From cutover on, copying old rows into the shadow would write the
/// source of truth from the table behind it (e.g. bring back rows deleted from the shadow at `complete`).
async fn copies_into_the_shadow(
    client: &impl GenericClient,
    name: &str,
    lock: bool,
) -> Result<Result<(), String>, tokio_postgres::Error> {
    Ok(match source_of_truth_now(client, name, lock).await? {
        Ok(SourceOfTruth::Old) => Ok(()),
        Ok(SourceOfTruth::Shadow) => {
            Err("the shadow is the source of truth from cutover on: the backfill copies only before it".into())
        }
        Err(reason) => Err(reason),
    })
}

/// The prepared statements of a backfill, indexed by whether the range has a lower bound.
struct Statements {
    /// The key `batch` rows after the last copied key: the batch's upper bound.
    boundary: [Statement; 2],
    /// (count, last key) of the rows after the last copied key: the last batch.
    rest: [Statement; 2],
    /// The copy, indexed again by whether it runs with `ON CONFLICT DO NOTHING`.
    copy: [[Statement; 2]; 2],
}

impl Statements {
    async fn prepare(client: &Client, compiled: &CompiledMapping) -> Result<Self, tokio_postgres::Error> {
        let copy = |lower| move |on_conflict| compiled.backfill_batch(Bounds { lower, upper: true }, on_conflict);
        Ok(Statements {
            boundary: pair(client, |lower| compiled.boundary(Side::Old, lower)).await?,
            rest: pair(client, |lower| compiled.old_after(lower)).await?,
            copy: [pair(client, copy(false)).await?, pair(client, copy(true)).await?],
        })
    }
}

/// The statements `sql(false)` and `sql(true)`, prepared.
async fn pair(client: &Client, sql: impl Fn(bool) -> String) -> Result<[Statement; 2], tokio_postgres::Error> {
    Ok([client.prepare(&sql(false)).await?, client.prepare(&sql(true)).await?])
}

/// One batch and its checkpoint in one transaction. The state row is locked first, so a PAUSE issued by
/// any instance takes effect between two batches. After the commit the batch's sweep is fenced by the
/// transactions open at that moment.
async fn copy_batch(
    client: &mut Client,
    name: &str,
    statements: &Statements,
    batch: u32,
    on_conflict: bool,
) -> Result<Step, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let state = tx
        .query_opt(
            "SELECT state, last_key::text, rows_done, rows_total FROM dualwrite.backfill \
             WHERE migration = $1 FOR UPDATE",
            &[&name],
        )
        .await?;
    let Some(state) = state else {
        return Ok(Step::Stopped { rows_done: 0 });
    };
    let (phase, last_key, rows_done, rows_total) =
        (state.get::<_, String>(0), state.get::<_, Option<String>>(1), state.get::<_, i64>(2), state.get(3));
    match phase.as_str() {
        "running" => {}
        "paused" => return Ok(Step::Paused { rows_done, rows_total }),
        _ => return Ok(Step::Stopped { rows_done }),
    }
    // Under a share lock on the migration's state row: a phase change waits for this batch's commit.
    if let Err(reason) = copies_into_the_shadow(&tx, name, true).await? {
        tx.execute("UPDATE dualwrite.backfill SET state = 'paused', updated_at = now() WHERE migration = $1", &[&name])
            .await?;
        tx.commit().await?;
        return Ok(Step::WrongPhase { reason });
    }
    let has_lower = usize::from(last_key.is_some());
    let offset = i64::from(batch) - 1;
    let boundary = match &last_key {
        Some(key) => tx.query_opt(&statements.boundary[has_lower], &[&offset, key]).await?,
        None => tx.query_opt(&statements.boundary[has_lower], &[&offset]).await?,
    };
    let (upper, rows, last) = match boundary {
        Some(row) => (row.get::<_, String>(0), i64::from(batch), false),
        None => {
            let row = match &last_key {
                Some(key) => tx.query_one(&statements.rest[has_lower], &[key]).await?,
                None => tx.query_one(&statements.rest[has_lower], &[]).await?,
            };
            match row.get::<_, Option<String>>(1) {
                Some(upper) => (upper, row.get::<_, i64>(0), true),
                None => {
                    tx.commit().await?;
                    return Ok(Step::Exhausted { rows_done, swept: None });
                }
            }
        }
    };
    let copy = &statements.copy[has_lower][usize::from(on_conflict)];
    tx.batch_execute(crate::jobs::mark::BACKFILL).await?;
    match &last_key {
        Some(key) => tx.execute(copy, &[key, &upper]).await?,
        None => tx.execute(copy, &[&upper]).await?,
    };
    let rows_done = rows_done + rows;
    tx.execute(
        "UPDATE dualwrite.backfill SET last_key = $2::text::jsonb, rows_done = $3, \
             rows_total = greatest(rows_total, $3), updated_at = now() WHERE migration = $1",
        &[&name, &upper, &rows_done],
    )
    .await?;
    tx.commit().await?;
    let swept = Sweep { lower: last_key, upper: Some(upper), fence: open_transactions(client).await? };
    if last {
        return Ok(Step::Exhausted { rows_done, swept: Some(swept) });
    }
    Ok(Step::Copied { rows, rows_done, rows_total: rows_total.map(|t: i64| t.max(rows_done)), swept })
}

/// Measures replication lag and the latency signal, only when a limit for them is set.
async fn hold(client: &Client, limits: &Limits) -> JobResult<Option<Hold>> {
    let replication_lag = match limits.max_replication_lag {
        Some(_) => {
            let row = client
                .query_one(
                    "SELECT coalesce(max(extract(epoch FROM replay_lag)), 0)::float8 FROM pg_stat_replication",
                    &[],
                )
                .await?;
            Some(Duration::from_secs_f64(row.get::<_, f64>(0).max(0.0)))
        }
        None => None,
    };
    let latency = limits.latency_signal.as_ref().and_then(|signal| signal());
    Ok(throttle::hold(limits, replication_lag, latency))
}
